using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using TorchSharp;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Telemetry;

/// <summary>The README's OpenTelemetry setups, compiled and run (OTLP to a loopback port nobody listens on).</summary>
public sealed class ReadmeSnippetTests
{
    [Fact]
    public void The_distributed_OTLP_setup_builds_and_tags_the_session_with_run_and_worker()
    {
        var model = torch.nn.Linear(3, 2);
        var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        int rank = int.Parse(Environment.GetEnvironmentVariable("RANK") ?? "0");
        using var metrics = Sdk.CreateMeterProviderBuilder()
            .ConfigureResource(r => r.AddService("trainer", serviceInstanceId: $"rank-{rank}"))
            .AddTrainingProbes()
            .AddOtlpExporter((exporter, reader) =>
            {
                exporter.Endpoint = new Uri("http://127.0.0.1:4317");
                reader.PeriodicExportingMetricReaderOptions.ExportIntervalMilliseconds = 5000;
            })
            .Build();
        using var session = ProbeSession.Attach(model, new ProbeOptions { RunId = "resnet-lr0.1-2026-11-27", Worker = $"rank-{rank}", Output = null, OverheadBudget = null }, optimizer);

        Assert.Equal("resnet-lr0.1-2026-11-27", session.RunId);
        Assert.Contains(session.SessionAttributes, a => a.Key == TrainingProbesMeter.WorkerAttribute && (string?)a.Value == "rank-0");
    }
}

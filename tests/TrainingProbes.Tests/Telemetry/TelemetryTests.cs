using OpenTelemetry;
using OpenTelemetry.Metrics;
using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Telemetry;

public sealed class TelemetryTests
{
    private static ProbeSession TrainSmallModel(ProbeOptions options, int steps, out nn.Module<Tensor, Tensor> model, IEnumerable<TrainingProbe>? extra = null)
    {
        torch.manual_seed(13);
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3));
        var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        var session = ProbeSession.Attach(model, options, optimizer);
        var lossFunction = nn.CrossEntropyLoss();
        Train(model, optimizer, steps, seed: 5, onStep: (loss, _, _) => session.Step(loss), task: new Classification(Features: 6, Batch: 12), loss: lossFunction.call);
        session.Flush();
        return session;
    }

    [Fact]
    public void AddTrainingProbes_exports_every_value_with_its_attributes_through_the_users_own_exporter()
    {
        var exported = new List<Metric>();
        using var provider = Sdk.CreateMeterProviderBuilder().AddTrainingProbes().AddInMemoryExporter(exported).Build();
        using var session = TrainSmallModel(new ProbeOptions { RunId = "otel-unit", Worker = "rank-3", WindowSize = 3, Interval = 4, Output = null, OverheadBudget = null }, 8, out _);

        provider.ForceFlush();
        var byName = exported.GroupBy(m => m.Name).ToDictionary(g => g.Key, g => g.Last());
        var snapshot = session.Latest!;

        // Every snapshot value is a gauge of the same name under the prefix, with the same value for this run.
        foreach (var value in snapshot.Values)
        {
            var metric = byName[TrainingProbesMeter.InstrumentPrefix + value.Name];
            Assert.Equal(MetricType.DoubleGauge, metric.MetricType);
            // Real units: a count of steps is {step}; every other value here is dimensionless.
            Assert.Equal(value.Name == Indicators.ProbeInterval ? "{step}" : "1", metric.Unit);
            var point = Points(metric).Single(p =>
                Tag(p, "run.id") == "otel-unit" && Tag(p, "geometry") == (value.Geometry == Geometry.None ? null : value.Geometry.ToString().ToLowerInvariant()));
            Assert.Equal(value.Value, point.GetGaugeLastValueDouble());
            Assert.Equal("rank-3", Tag(point, "worker"));
            Assert.Equal(value.Probe, Tag(point, "probe"));
        }

        var duration = byName["trainingprobes.probe.duration"];
        Assert.Equal(MetricType.Histogram, duration.MetricType);
        Assert.Equal("s", duration.Unit);
        var probes = Points(duration).Where(p => Tag(p, "run.id") == "otel-unit").Select(p => Tag(p, "probe")).ToHashSet();
        Assert.Superset(new HashSet<string?> { "loss", "drift", "gradient", "capture", "transfer" }, probes);

        var step = Points(byName["trainingprobes.training.step"]).Single(p => Tag(p, "run.id") == "otel-unit");
        Assert.Equal(8, step.GetGaugeLastValueLong());
        var windows = Points(byName["trainingprobes.probe.windows"]).Single(p => Tag(p, "run.id") == "otel-unit");
        Assert.Equal(2, windows.GetSumLong());
        Assert.Contains(Points(byName["trainingprobes.probe.failures"]), p => Tag(p, "run.id") == "otel-unit" && p.GetSumLong() == 0);
    }

    [Fact]
    public void Instrument_names_are_dotted_snake_case_under_the_prefix_without_units()
    {
        using var session = TrainSmallModel(new ProbeOptions { WindowSize = 2, Interval = 2, Output = null, OverheadBudget = null, LayerMetrics = 1 }, 2, out _);
        session.Flush();
        foreach (var value in session.Latest!.Values)
        {
            Assert.Matches("^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)*$", value.Name);
            Assert.DoesNotMatch("(seconds|_s|_ms|percent|bytes)$", value.Name);
        }
    }

    [Fact]
    public void Gauges_build_their_measurements_once_per_window_and_report_every_session()
    {
        torch.manual_seed(13);
        var models = new[] { nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)) };
        var optimizers = models.Select(m => new GcSafeSgd(m.parameters(), 0.1)).ToArray();
        var sessions = models.Select((m, i) => ProbeSession.Attach(m, new ProbeOptions { RunId = $"gauges-{i}", WindowSize = 2, Interval = 3, Output = null, OverheadBudget = null }, optimizers[i])).ToArray();
        var generator = new Generator(5);
        void Train(int steps)
        {
            for (int i = 0; i < steps; i++)
                for (int s = 0; s < sessions.Length; s++)   // the two models take turns at one generator
                {
                    var session = sessions[s];
                    Step(models[s], optimizers[s], generator, (loss, _, _) => session.Step(loss), new Classification(Features: 6, Batch: 12));
                }

            foreach (var session in sessions) session.Flush();
        }

        try
        {
            Train(3);
            // Between two windows every collection reads the same measurements: nothing is built per scrape.
            var first = sessions[0].Telemetry.MeasurementsOf(Indicators.Loss);
            Assert.Same(first, sessions[0].Telemetry.MeasurementsOf(Indicators.Loss));
            Assert.Equal(sessions[0].Latest!.Get(Indicators.Loss), Assert.Single(first).Value);

            Train(3);
            var second = sessions[0].Telemetry.MeasurementsOf(Indicators.Loss);
            Assert.NotSame(first, second);
            Assert.Equal(sessions[0].Latest!.Get(Indicators.Loss), Assert.Single(second).Value);

            // The gauge reports both sessions' series, each with its own value.
            var losses = MeterReader.Collect().Where(m => m.Instrument == TrainingProbesMeter.InstrumentPrefix + Indicators.Loss).ToList();
            for (int s = 0; s < sessions.Length; s++)
                Assert.Equal(sessions[s].Latest!.Get(Indicators.Loss), Assert.Single(losses, m => m.RunId == $"gauges-{s}").Value);
        }
        finally
        {
            foreach (var session in sessions) session.Dispose();
        }
    }

    // Per-layer values: OneThetaTests.Per_layer_values_are_the_one_theta_indicators_of_that_parameter_alone.

    [Fact]
    public void LayerMetrics_outside_zero_to_256_is_rejected()
    {
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { LayerMetrics = 257 });
        Assert.Contains("LayerMetrics", error.Message);
    }

    private static IEnumerable<MetricPoint> Points(Metric metric)
    {
        foreach (ref readonly var point in metric.GetMetricPoints()) yield return point;
    }

    private static string? Tag(MetricPoint point, string key)
    {
        foreach (var tag in point.Tags)
            if (tag.Key == key) return tag.Value?.ToString();
        return null;
    }
}

using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using TorchSharp;
using TrainingProbes.Prometheus;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.FaultScenarios;

/// <summary>Faults of lifetime: sessions never disposed, shared endpoints, batches the user caches.</summary>
internal static class LifetimeFaults
{
    [Scenario("12.11: a sweep of 30 models with the one-line call, none disposed")]
    private static void OneLineSessionsAreReleased()
    {
        Environment.SetEnvironmentVariable("TRAININGPROBES_OUTPUT", "none");
        Environment.SetEnvironmentVariable("TRAININGPROBES_OVERHEAD_BUDGET", "none");
        Environment.SetEnvironmentVariable("TRAININGPROBES_INTERVAL", "10");
        Environment.SetEnvironmentVariable("TRAININGPROBES_WINDOW_SIZE", "4");
        var models = new List<WeakReference>();
        for (int i = 0; i < 30; i++) models.Add(TrainOneLine(i));
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        int alive = models.Count(m => m.IsAlive);
        Check.That(alive == 0, $"{alive} of 30 models are still alive after their one-line sessions were dropped");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference TrainOneLine(int seed)
    {
        var model = new Net(seed);
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        for (int step = 0; step < 30; step++)
        {
            using var scope = torch.NewDisposeScope();
            var (x, y) = Data.Batch(step);
            optimizer.zero_grad();
            var loss = Data.Loss(model.call(x), y);
            loss.backward();
            model.Probe(loss, optimizer);
            optimizer.step();
        }

        return new WeakReference(model);
    }

    [Scenario("12.11: one Prometheus endpoint serves two sessions and the first is disposed")]
    private static void EndpointOutlivesItsSessions()
    {
        int port = FreePort();
        var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = port });
        var first = new Net(1);
        var second = new Net(2);
        var log = new LogCollector();
        var a = ProbeSession.Attach(first, Options.Small(log, runId: "first"));
        var b = ProbeSession.Attach(second, Options.Small(log, runId: "second"));
        new Trainer(first, a).Run(0, 20);
        new Trainer(second, b).Run(0, 20);
        a.Dispose();
        using var http = new HttpClient();
        string text;
        try
        {
            text = http.GetStringAsync($"http://127.0.0.1:{port}/metrics").GetAwaiter().GetResult();
        }
        catch (HttpRequestException ex)
        {
            throw new ScenarioFailedException($"the endpoint stopped when the first of the two sessions was disposed: {ex.Message}");
        }

        Check.That(text.Contains("run_id=\"second\"", StringComparison.Ordinal), "the endpoint still serves the second session's metrics");
        // The disposed session's gauges (its indicator values) are gone; its counters and histograms keep their final
        // totals, as Prometheus expects of cumulative series.
        var staleGauges = text.Split('\n').Where(l => l.StartsWith("trainingprobes_gradient_cosine{", StringComparison.Ordinal) && l.Contains("run_id=\"first\"", StringComparison.Ordinal)).ToList();
        Check.That(staleGauges.Count == 0, "the endpoint still serves the disposed session's indicator gauges: " + string.Join(" | ", staleGauges.Take(2)));
        b.Dispose();
        Check.That(Serves(http, port), "the endpoint outlives the sessions it served");
        endpoint.Dispose();
        Check.That(!Serves(http, port), "the endpoint stops when it is disposed");
    }

    private static bool Serves(HttpClient http, int port)
    {
        try
        {
            http.GetStringAsync($"http://127.0.0.1:{port}/metrics").GetAwaiter().GetResult();
            return true;
        }
        catch (HttpRequestException)
        {
            return false;
        }
    }

    [Scenario("12.11: two one-line sessions in one process with TRAININGPROBES_PROMETHEUS set")]
    private static void EnvironmentEndpointForTwoModels()
    {
        int port = FreePort();
        Environment.SetEnvironmentVariable("TRAININGPROBES_OUTPUT", "none");
        Environment.SetEnvironmentVariable("TRAININGPROBES_PROMETHEUS", port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var first = new Net(1);
        var second = new Net(2);
        var a = first.Probe();
        var b = second.Probe();
        a.Dispose();
        using var http = new HttpClient();
        try
        {
            http.GetStringAsync($"http://127.0.0.1:{port}/metrics").GetAwaiter().GetResult();
        }
        catch (HttpRequestException ex)
        {
            throw new ScenarioFailedException($"the environment's endpoint stopped with the first session: {ex.Message}");
        }

        b.Dispose();
        Check.That(!Serves(http, port), "the environment's endpoint stops with the last of its sessions");
    }

    [Scenario("12.12: FixedPointOptions.Batches yields tensors the user keeps and reuses (a cached list)")]
    private static void CachedBatchesSurviveWindows()
    {
        var log = new LogCollector();
        var model = new Net(1);
        var cached = Enumerable.Range(1000, 8).Select(Data.Batch).ToList();
        var probe = new FixedPointProbe(new FixedPointOptions { Loss = Data.Loss, Batches = cached, WindowSize = 4, Every = 1, Curvature = false });
        using var session = ProbeSession.Attach(model, Options.Small(log, probes: [probe]));
        new Trainer(model, session).Run(0, 60);
        Check.That(session.FailureCount == 0, $"{session.FailureCount} failures: " + string.Join(" / ", log.Warnings.Take(2)));
        Check.That(probe.Runs == 6, $"{probe.Runs} of 6 fixed-point windows ran");
        Check.That(cached.All(b => !b.X.IsInvalid && !b.Y.IsInvalid), "the user's cached tensors are still valid");
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

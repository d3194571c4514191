using System.Net;
using System.Net.Sockets;
using TorchSharp;
using TrainingProbes.Prometheus;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.FaultScenarios;

/// <summary>Soak and load, short: a long run with ordinary and fixed-point windows while the endpoint is scraped.</summary>
internal static class SoakScenario
{
    [Scenario("12, scope 5: 20,000 steps with ordinary and fixed-point windows while two clients scrape the endpoint")]
    private static void SoakWhileScraped()
    {
        // SOAK_STEPS runs the long version (the README gives its figures); memory is compared between 60% and the end.
        int steps = int.TryParse(Environment.GetEnvironmentVariable("SOAK_STEPS"), out int requested) && requested >= 20_000 ? requested : 20_000;
        int checkpoint = steps * 6 / 10;
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        var log = new LogCollector();
        var model = new Net(1);
        var fixedPoint = new FixedPointProbe(new FixedPointOptions { Loss = Data.Loss, WindowSize = 4, Every = 5, PowerIterations = 5, TraceSamples = 2 });
        using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = port });
        using var session = ProbeSession.Attach(model, Options.Small(log, probes: [fixedPoint]));
        var optimizer = new GcSafeSgd(model.parameters(), 0.02);

        using var clients = new ScrapeClients(port, count: 2, pauseMilliseconds: 20);

        long liveAtCheckpoint = 0, managedAtCheckpoint = 0;
        for (int step = 0; step < steps; step++)
        {
            using (var scope = torch.NewDisposeScope())
            {
                var (x, y) = Data.Batch(step % 500);
                optimizer.zero_grad();
                var loss = Data.Loss(model.call(x), y);
                loss.backward();
                session.Step(loss, x, y);
                optimizer.step();
            }

            // The history (1,024 snapshots) is full from window 1,024 (step 10,240): memory is measured from step 12,000.
            if (step == checkpoint - 1)
            {
                session.Flush();
                liveAtCheckpoint = LiveTensors(session);
                managedAtCheckpoint = GC.GetTotalMemory(forceFullCollection: true);
            }
        }

        session.Flush();
        long live = LiveTensors(session);
        long managed = GC.GetTotalMemory(forceFullCollection: true);
        clients.Dispose();
        int scrapes = clients.Scrapes, errors = clients.Errors;
        Console.WriteLine($"{session.History.Count} snapshots kept, {fixedPoint.Runs} fixed-point windows, {scrapes} scrapes ({errors} errors); " +
            $"live tensors {liveAtCheckpoint} at step {checkpoint:N0} and {live} at {steps:N0}; managed memory {managedAtCheckpoint / 1e6:F1} MB and {managed / 1e6:F1} MB; " +
            $"resident {Environment.WorkingSet / 1e6:F0} MB");
        Check.That(session.FailureCount == 0, $"{session.FailureCount} failures: " + string.Join(" / ", log.Warnings.Take(2)));
        Check.That(fixedPoint.Runs >= steps / 10 / 5 - 1, $"{fixedPoint.Runs} fixed-point windows ran");
        Check.That(scrapes > 50 && errors == 0, $"{scrapes} scrapes, {errors} errors, the first: {clients.FirstError}");
        Check.That(live == liveAtCheckpoint, $"live tensors grew from {liveAtCheckpoint} to {live} over {steps - checkpoint:N0} steps");
        Check.That(managed - managedAtCheckpoint < 2_000_000, $"managed memory grew by {(managed - managedAtCheckpoint) / 1e6:F1} MB over {steps - checkpoint:N0} steps");
    }

    /// <summary>
    /// Tensors created and not disposed, on the training thread and the session's worker together: TorchSharp counts
    /// per thread, and a tensor the training thread queues for the window's transfer is disposed on the worker.
    /// </summary>
    private static long LiveTensors(ProbeSession session) =>
        DisposeScopeManager.Statistics.ThreadTotalLiveCount + session.Worker.Read(() => DisposeScopeManager.Statistics.ThreadTotalLiveCount);
}

using System.Net;
using System.Net.Sockets;
using TorchSharp;
using TrainingProbes.Prometheus;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.FaultScenarios;

/// <summary>Garbage collections at any moment, from other threads, while the probes capture and compute (issue 14).</summary>
internal static class GcPressureScenario
{
    [Scenario("14: 20,000 steps of a float64 model (every statistic on its tensor path) with ordinary and fixed-point windows, while three threads force garbage collections and eight clients scrape")]
    private static void CollectionsFromOtherThreadsWhileScraped() => Run(20_000, ScalarType.Float64, WindowStorage.Full, fixedPoint: true);

    [Scenario("14: 5,000 steps with sketched windows (the capture's CountSketch) while three threads force garbage collections and eight clients scrape")]
    private static void CollectionsFromOtherThreadsWithSketches() => Run(5_000, ScalarType.Float32, WindowStorage.Sketch, fixedPoint: false);

    /// <summary>
    /// Trains <paramref name="steps"/> steps, strict (a probe failure throws out of Step), under the pressure; checks that
    /// no TrainingProbes call failed, that the windows ran, that the pressure was real and that every scrape was served.
    /// A float64 model takes the tensor path of every statistic (the managed kernels serve CPU float32 only).
    /// </summary>
    private static void Run(int steps, ScalarType dtype, WindowStorage storage, bool fixedPoint)
    {
        int port;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }

        // Batches made before the pressure starts: making them uses implicit scalars (the trainer's own exposure, not ours).
        var batches = Enumerable.Range(0, 64).Select(i => Data.Batch(i))
            .Select(b => (X: b.X.to(dtype).DetachFromDisposeScope(), Y: b.Y.DetachFromDisposeScope())).ToList();
        var log = new LogCollector();
        var model = new Net(1);
        model.to(dtype);
        var active = fixedPoint ? new FixedPointProbe(new FixedPointOptions { Loss = Data.Loss, WindowSize = 4, Every = 5, PowerIterations = 5, TraceSamples = 2 }) : null;
        using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = port });
        using var session = ProbeSession.Attach(model, Options.Small(log, probes: active is null ? [] : [active], strict: true, storage: storage));
        // TorchSharp's own SGD fails within seconds here (UpstreamFaults.SgdStepFreesItsLearningRate); GcSafeSgd is the workaround.
        var optimizer = new GcSafeSgd(model.parameters(), 0.02);

        using var clients = new ScrapeClients(port, count: 8, pauseMilliseconds: 100);
        int collections;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using (var pressure = new GarbageThreads(3, forceEvery: 64, pauseMilliseconds: 3))
        {
            for (int step = 0; step < steps; step++)
            {
                using var scope = torch.NewDisposeScope();
                var (x, y) = batches[step % batches.Count];
                optimizer.zero_grad();
                var loss = Data.Loss(model.call(x), y);
                loss.backward();
                session.Step(loss, x, y);
                optimizer.step();
                if ((step + 1) % 5000 == 0) Console.WriteLine($"step {step + 1:N0}: {clock.Elapsed.TotalSeconds:F0} s, {pressure.Collections:N0} collections, {clients.Scrapes} scrapes");
            }

            session.Flush();
            collections = pressure.Collections;
        }

        double seconds = clock.Elapsed.TotalSeconds;
        clients.Dispose();
        int scrapes = clients.Scrapes, errors = clients.Errors;
        Console.WriteLine($"{steps:N0} steps ({dtype}, {storage}) in {seconds:F0} s under {collections:N0} collections; {session.Latest!.Window + 1} windows, " +
            $"{active?.Runs ?? 0} fixed-point windows, {scrapes} scrapes ({errors} errors), {session.FailureCount} failures");
        Check.That(session.FailureCount == 0, $"{session.FailureCount} failures: " + string.Join(" / ", log.Warnings.Take(2)));
        Check.That(session.Latest!.Window + 1 >= steps / 10 - 1, $"{session.Latest.Window + 1} windows published");
        Check.That(active is null || active.Runs >= steps / 10 / 5 - 1, $"{active?.Runs} fixed-point windows ran");
        Check.That(collections >= 1000 && collections / seconds >= 100, $"{collections} collections in {seconds:F0} s: the pressure was too light to test anything");
        Check.That(scrapes >= steps / 100 && errors == 0, $"{scrapes} scrapes, {errors} errors, the first: {clients.FirstError}");
    }
}

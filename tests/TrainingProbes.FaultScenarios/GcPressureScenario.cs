using System.Net;
using System.Net.Sockets;
using TorchSharp;
using TrainingProbes.Prometheus;
using static TorchSharp.torch;

namespace TrainingProbes.FaultScenarios;

/// <summary>Garbage collections at any moment, from other threads, while the probes capture and compute (issue 14).</summary>
internal static class GcPressureScenario
{
    [Scenario("14: 20,000 steps with passive and active windows while three threads force garbage collections and eight clients scrape")]
    private static void CollectionsFromOtherThreadsWhileScraped()
    {
        const int steps = 20_000;
        int port;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }

        // Batches made before the pressure starts: making them uses implicit scalars (the trainer's own exposure, not ours).
        var batches = Enumerable.Range(0, 64).Select(i => Data.Batch(i)).Select(b => (X: b.X.DetachFromDisposeScope(), Y: b.Y.DetachFromDisposeScope())).ToList();
        var log = new LogCollector();
        var model = new Net(1);
        var fixedPoint = new FixedPointProbe(new FixedPointOptions { Loss = Data.Loss, Minibatches = 4, Every = 5, PowerIterations = 5, TraceSamples = 2 });
        var endpoint = new PrometheusScrapeEndpoint(new PrometheusEndpointOptions { Port = port });
        // Strict: a probe failure throws out of Step instead of being logged and counted.
        using var session = ProbeSession.Attach(model, Options.Small(log, probes: [fixedPoint, endpoint], strict: true));
        // TorchSharp's own SGD fails within seconds here (UpstreamFaults.SgdStepFreesItsLearningRate); GcSafeSgd is the workaround.
        var optimizer = new GcSafeSgd(model.parameters(), 0.02);

        using var stop = new CancellationTokenSource();
        int scrapes = 0, errors = 0;
        string? firstError = null;
        void Fail(string what)
        {
            Interlocked.Increment(ref errors);
            Interlocked.CompareExchange(ref firstError, what, null);
        }

        var clients = Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
        {
            using var http = new HttpClient();
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    // The step gauge is there from the attach (the windows counter only from the first window).
                    string text = await http.GetStringAsync($"http://127.0.0.1:{port}/metrics");
                    if (text.Contains("trainingprobes_training_step", StringComparison.Ordinal)) Interlocked.Increment(ref scrapes);
                    else Fail("a page without the step gauge: " + text[..Math.Min(200, text.Length)]);
                }
                catch (HttpRequestException ex)
                {
                    Fail(ex.Message);
                }

                await Task.Delay(100);
            }
        })).ToArray();

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
                if ((step + 1) % 2000 == 0) Console.WriteLine($"step {step + 1:N0}: {clock.Elapsed.TotalSeconds:F0} s, {pressure.Collections:N0} collections, {Volatile.Read(ref scrapes)} scrapes");
            }

            session.Flush();
            collections = pressure.Collections;
        }

        stop.Cancel();
        Task.WaitAll(clients);
        Console.WriteLine($"{steps:N0} steps in {clock.Elapsed.TotalSeconds:F0} s under {collections:N0} collections; {session.Latest!.Window + 1} windows, " +
            $"{fixedPoint.Runs} active windows, {scrapes} scrapes ({errors} errors), {session.FailureCount} failures");
        Check.That(session.FailureCount == 0, $"{session.FailureCount} failures: " + string.Join(" / ", log.Warnings.Take(2)));
        Check.That(session.Latest!.Window + 1 >= steps / 10 - 1, $"{session.Latest.Window + 1} windows published");
        Check.That(fixedPoint.Runs >= steps / 10 / 5 - 1, $"{fixedPoint.Runs} active windows ran");
        Check.That(collections > steps, $"only {collections} collections during {steps} steps: the pressure was too light to test anything");
        Check.That(scrapes > 100 && errors == 0, $"{scrapes} scrapes, {errors} errors, the first: {firstError}");
    }
}

using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.FaultScenarios;

/// <summary>Faults of cost and accounting: a slow user probe, gradient accumulation, memory at attach.</summary>
internal static class CostFaults
{
    /// <summary>A user probe that takes its time on every step and at every window.</summary>
    private sealed class SlowProbe : TrainingProbe
    {
        public override string Name => "slow";
        public override void OnStep(ProbeStepContext step) => Thread.Sleep(1);
        public override void OnWindowClosed(ProbeWindowContext window) => Thread.Sleep(20);
    }

    [Scenario("12.15: a slow user probe; the session's overhead measure against the wall clock")]
    private static void SlowProbeOverheadMatchesWallClock()
    {
        const int steps = 400;
        var model = new Net(1);
        new Trainer(model, null).Run(0, 40);   // warm up
        var clock = Stopwatch.StartNew();
        new Trainer(model, null).Run(0, steps);
        double bare = clock.Elapsed.TotalSeconds;

        var log = new LogCollector();
        var probed = new Net(1);
        using var session = ProbeSession.Attach(probed, Options.Small(log, probes: [new SlowProbe()]));
        new Trainer(probed, session).Run(0, 40);   // the first window is left out of the ledger too
        clock.Restart();
        new Trainer(probed, session).Run(40, 40 + steps);
        double with = clock.Elapsed.TotalSeconds;
        double wall = (with - bare) / bare;
        double measured = session.Latest!.Get(Indicators.ProbeOverheadTotal);
        Console.WriteLine($"bare {bare:F3} s, with probes {with:F3} s: wall-clock overhead {wall:F2}, the session's {measured:F2}");
        Check.That(Math.Abs(measured - wall) <= 0.25 * wall,
            $"the session measures an overhead of {measured:F2} where the wall clock says {wall:F2} (bare {bare:F3} s, with probes {with:F3} s)");
    }
}

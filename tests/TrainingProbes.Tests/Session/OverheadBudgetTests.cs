using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Session;

public sealed class OverheadBudgetTests
{
    /// <summary>A probe that costs a known, large amount of time per window.</summary>
    private sealed class SlowProbe(int milliseconds) : TrainingProbe
    {
        public override string Name => "slow";
        public override void OnWindowClosed(ProbeWindowContext window) => Thread.Sleep(milliseconds);
    }

    private static ProbeSession Run(ProbeOptions options, int steps, double stepMilliseconds = 0.01)
    {
        torch.manual_seed(1);
        var model = nn.Linear(4, 2);
        var session = ProbeSession.Attach(model, options);
        using var loss = torch.tensor(1.0f);
        for (int i = 0; i < steps; i++)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (clock.Elapsed.TotalMilliseconds < stepMilliseconds) { }   // the trainer's own work on a step
            session.Step(loss);
        }
        return session;
    }

    [Fact]
    public void An_expensive_probe_stretches_the_interval_and_a_fixed_schedule_does_not_move()
    {
        using var budgeted = Run(new ProbeOptions { WindowSize = 2, Interval = 10, Output = null, OverheadBudget = 0.05, Probes = [new SlowProbe(20)] }, 400);
        using var fixedSchedule = Run(new ProbeOptions { WindowSize = 2, Interval = 10, Output = null, OverheadBudget = null, Probes = [new SlowProbe(20)] }, 400);

        // The first window opens once the training's pace is measured and is left out of the ledger, but its cost is the
        // ledger's estimate of the next: 20 ms per window against steps of 10 microseconds, at 5% one window per tens of
        // thousands of steps, so no second window opens in 400 steps.
        budgeted.Flush();
        var first = Assert.Single(budgeted.History);
        Assert.Equal(TrainingProbes.Session.WindowScheduler.PaceSteps + 1, first.Step);
        Assert.True(first.Get(Indicators.ProbeInterval) > 400, $"interval {first.Get(Indicators.ProbeInterval)}");
        fixedSchedule.Flush();
        Assert.Equal(40, fixedSchedule.History.Count);
        Assert.All(fixedSchedule.History, s => Assert.Equal(10, s.Get(Indicators.ProbeInterval)));
    }

    [Fact]
    public void A_cheap_probe_shortens_the_interval_down_to_back_to_back_windows()
    {
        using var session = Run(new ProbeOptions { WindowSize = 2, Interval = 200, Output = null, OverheadBudget = 0.9, BuiltInProbes = false }, 400, stepMilliseconds: 0.5);

        // Capture-only windows of a two-parameter model cost far less than a 0.5 ms step: a 90% budget lets them come
        // much sooner than the initial interval of 200 steps.
        session.Flush();
        Assert.True(session.History.Count > 20, $"only {session.History.Count} windows in 400 steps");
        Assert.True(session.History.Skip(1).Average(s => s.Get(Indicators.ProbeInterval)) < 200);
    }

    [Fact]
    public void A_budget_outside_zero_to_one_is_rejected()
    {
        Assert.Contains("OverheadBudget", Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { OverheadBudget = 1.5 }).Message);
        Assert.Contains("OverheadBudget", Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { OverheadBudget = 0 }).Message);
    }
}

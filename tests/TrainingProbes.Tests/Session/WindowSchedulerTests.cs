using TrainingProbes.Session;

namespace TrainingProbes.Tests.Session;

/// <summary>The window schedule and the overhead budget's ledger, driven by a fake clock: no timing noise.</summary>
public sealed class WindowSchedulerTests
{
    private sealed class FakeClock : TimeProvider
    {
        public long Ticks { get; set; } = 1;
        public override long TimestampFrequency => 1_000_000;
        public override long GetTimestamp() => Ticks;
    }

    /// <summary>
    /// Simulates the session's calls: each step the trainer works <paramref name="stepTicks"/>, a captured step costs
    /// nothing extra, and a window's probes cost <paramref name="windowTicks"/>. Returns each window's (step, interval, total overhead).
    /// </summary>
    private static List<(long Step, long Interval, double Total)> Run(WindowScheduler scheduler, FakeClock clock, int steps, int windowSize,
        long stepTicks, Func<int, long> windowTicks, long? steady = null)
    {
        var windows = new List<(long, long, double)>();
        for (int i = 0; i < steps; i++)
        {
            clock.Ticks += stepTicks;
            long started = clock.Ticks;
            int slot = scheduler.BeginStep(started, out _);
            if (slot == windowSize - 1)
            {
                long windowStarted = clock.Ticks;
                clock.Ticks += windowTicks(scheduler.Windows);
                var (_, total, interval) = scheduler.CloseWindow(windowStarted, scheduler.Windows == 0 ? steady : null);
                windows.Add((scheduler.Steps, interval, total));
            }

            scheduler.EndStep(clock.Ticks);
        }

        return windows;
    }

    [Fact]
    public void Without_a_budget_windows_open_every_interval()
    {
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 4, Interval = 10, OverheadBudget = null }, clock, windowLength: 4);
        var windows = Run(scheduler, clock, 100, 4, 1000, _ => 50_000);
        Assert.Equal([4L, 14, 24, 34, 44, 54, 64, 74, 84, 94], windows.Select(w => w.Step));
        Assert.All(windows, w => Assert.Equal(10, w.Interval));
    }

    [Fact]
    public void The_budget_holds_over_the_run_and_the_second_window_comes_at_the_steady_interval()
    {
        // Training 1,000 ticks a step; a one-step window costs 20,000 ticks once warm, but the first one 300,000 (code
        // compiled for the first time); budget 5%. The steady wait is C / (budget t) - L = 20,000 / 50 - 1 = 399 steps.
        // The first window opens after the pace steps and is not charged: its warm cost is the ledger's first estimate,
        // so the second window comes at about the steady interval, and every later one at it.
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 8, OverheadBudget = 0.05 }, clock, windowLength: 1);
        var windows = Run(scheduler, clock, 40_000, 1, 1000, w => w == 0 ? 300_000 : 20_000, steady: 20_000);

        Assert.Equal(WindowScheduler.PaceSteps + 1, windows[0].Step);
        const double Steady = 400;   // steps from start to start
        Assert.InRange(windows[0].Interval, Steady / 2, 2 * Steady);
        Assert.All(windows.Skip(1).Take(windows.Count - 2), w => Assert.InRange(w.Interval, Steady - 2, Steady + 2));
        // Over the run the achieved overhead comes to the budget (the warm-up window is left out of the ledger).
        Assert.InRange(windows[^1].Total, 0.049, 0.0502);
    }

    [Fact]
    public void Credit_is_spent_at_most_twice_as_fast_as_the_steady_rate()
    {
        // The first window's warm cost overstated the steady one a hundredfold: the long first wait saved credit. Once the
        // windows' real cost (1,000 ticks, a steady wait of 1,000 / 50 - 1 = 19 steps) is known, the ledger would run
        // them back to back; the limiter keeps the wait at least half the steady one (10 steps) until the credit is spent.
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 8, OverheadBudget = 0.05 }, clock, windowLength: 1);
        var windows = Run(scheduler, clock, 20_000, 1, 1000, _ => 1_000, steady: 100_000);
        Assert.InRange(windows[0].Interval, 1900, 2000);
        Assert.Equal(1 + 10, windows[1].Interval);
        Assert.All(windows.Skip(1).Take(windows.Count - 2), w => Assert.InRange(w.Interval, 1 + 10, 1 + 20));
        Assert.Equal(1 + 19, windows[^2].Interval);
        Assert.InRange(windows[^1].Total, 0.045, 0.0502);
    }

    [Fact]
    public void An_expensive_window_is_paid_back_by_a_longer_wait()
    {
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 2, Interval = 400, OverheadBudget = 0.05 }, clock, windowLength: 2);
        // Every fifth window costs ten times the others (an active window, say).
        var windows = Run(scheduler, clock, 60_000, 2, 1000, w => w % 5 == 4 ? 200_000 : 20_000);
        int expensive = Enumerable.Range(2, windows.Count - 3).First(i => i % 5 == 4);
        Assert.True(windows[expensive].Interval > 2 * windows[expensive - 1].Interval,
            $"after the expensive window the interval was {windows[expensive].Interval}, before it {windows[expensive - 1].Interval}");
        Assert.InRange(windows[^1].Total, 0.045, 0.055);
    }

    [Fact]
    public void A_saved_schedule_resumes_where_it_stopped()
    {
        var clock = new FakeClock();
        var options = new ProbeOptions { WindowSize = 2, Interval = 50, OverheadBudget = 0.05 };
        var uninterrupted = new WindowScheduler(options, clock, windowLength: 2);
        var expected = Run(uninterrupted, clock, 20_000, 2, 1000, _ => 5_000);

        var clock2 = new FakeClock();
        var first = new WindowScheduler(options, clock2, windowLength: 2);
        var before = Run(first, clock2, 10_000, 2, 1000, _ => 5_000);
        var state = first.Save();
        var resumed = new WindowScheduler(options, clock2, windowLength: 2);
        resumed.Restore(state);
        var after = Run(resumed, clock2, 10_000, 2, 1000, _ => 5_000);

        Assert.Equal(expected.Select(w => w.Step), before.Concat(after).Select(w => w.Step));
    }

    [Fact]
    public void A_postponed_window_opens_at_the_next_step_and_only_at_its_first_step()
    {
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 4, Interval = 10, OverheadBudget = null }, clock, windowLength: 1);
        Assert.Equal(0, scheduler.BeginStep(clock.Ticks, out _));
        scheduler.Postpone();
        Assert.Equal(0, scheduler.BeginStep(clock.Ticks, out long step));
        Assert.Equal(1, step);
        scheduler.CloseWindow(clock.Ticks);
        Assert.Equal(-1, scheduler.BeginStep(clock.Ticks, out _));
        Assert.Throws<InvalidOperationException>(scheduler.Postpone);
    }
}

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
        long stepTicks, Func<int, long> windowTicks)
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
                var (_, total, interval) = scheduler.CloseWindow(windowStarted);
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
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 4, Interval = 10, OverheadBudget = null }, clock);
        var windows = Run(scheduler, clock, 100, 4, 1000, _ => 50_000);
        Assert.Equal([4L, 14, 24, 34, 44, 54, 64, 74, 84, 94], windows.Select(w => w.Step));
        Assert.All(windows, w => Assert.Equal(10, w.Interval));
    }

    [Fact]
    public void The_budget_holds_over_the_run_and_credit_is_spent_at_most_twice_as_fast_as_the_steady_rate()
    {
        // Training 1,000 ticks a step; a window of K = 2 costs 20,000 ticks; budget 5%. The steady wait is
        // C / (budget t) - K = 20,000 / (0.05 x 1,000) - 2 = 398 steps. The first counted interval (the fixed 2,000
        // steps after the warm-up window) saved credit for ~1,600 steps of windows back to back; the limiter spends it
        // at most twice as fast: a wait of at least 199 steps, never 0.
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 2, Interval = 2000, OverheadBudget = 0.05 }, clock);
        var windows = Run(scheduler, clock, 40_000, 2, 1000, _ => 20_000);

        var second = windows[1];
        Assert.Equal(2 + 199, second.Interval);
        Assert.All(windows.Skip(1), w => Assert.InRange(w.Interval, 2 + 199, 2 + 400));
        // Over the run the achieved overhead comes to the budget (the warm-up window is left out of the ledger).
        Assert.InRange(windows[^1].Total, 0.048, 0.0502);
    }

    [Fact]
    public void An_expensive_window_is_paid_back_by_a_longer_wait()
    {
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 2, Interval = 400, OverheadBudget = 0.05 }, clock);
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
        var uninterrupted = new WindowScheduler(options, clock);
        var expected = Run(uninterrupted, clock, 20_000, 2, 1000, _ => 5_000);

        var clock2 = new FakeClock();
        var first = new WindowScheduler(options, clock2);
        var before = Run(first, clock2, 10_000, 2, 1000, _ => 5_000);
        var state = first.Save();
        var resumed = new WindowScheduler(options, clock2);
        resumed.Restore(state);
        var after = Run(resumed, clock2, 10_000, 2, 1000, _ => 5_000);

        Assert.Equal(expected.Select(w => w.Step), before.Concat(after).Select(w => w.Step));
    }
}

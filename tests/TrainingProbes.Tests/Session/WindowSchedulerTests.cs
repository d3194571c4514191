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
    public void The_budget_holds_over_the_run_and_the_windows_after_the_warm_up_come_at_the_steady_interval()
    {
        // Training 1,000 ticks a step; a one-step window costs 20,000 ticks once warm, but the first one 300,000 and the
        // second 100,000 (code compiled for the first time); budget 5%. The steady wait is C / (budget t) - L =
        // 20,000 / 50 - 1 = 399 steps. The first window opens after the pace steps; the first two are not charged, the
        // first's warm cost is the ledger's first estimate, so every later window comes at the steady interval.
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 8, OverheadBudget = 0.05 }, clock, windowLength: 1);
        var windows = Run(scheduler, clock, 40_000, 1, 1000, w => w switch { 0 => 300_000, 1 => 100_000, _ => 20_000 }, steady: 20_000);

        Assert.Equal(WindowScheduler.PaceSteps + 1, windows[0].Step);
        const double Steady = 400;   // steps from start to start
        Assert.All(windows.Take(windows.Count - 1), w => Assert.InRange(w.Interval, Steady - 2, Steady + 2));
        // No achieved overhead until a charged window has closed; over the run it comes to the budget.
        Assert.True(double.IsNaN(windows[0].Total) && double.IsNaN(windows[1].Total));
        Assert.InRange(windows[^1].Total, 0.049, 0.0502);
    }

    [Fact]
    public void Credit_is_spent_at_most_twice_as_fast_as_the_steady_rate()
    {
        // Three expensive windows (100,000 ticks, say active ones) make the cost estimate (the median of the last five)
        // overstate the cheap windows after them (1,000 ticks, a steady wait of 1,000 / 50 - 1 = 19 steps): the long
        // waits save credit. Once the estimate is back at 1,000 the ledger would run windows back to back; the limiter
        // keeps the wait at least half the steady one (10 steps) until the credit is spent.
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 8, OverheadBudget = 0.05 }, clock, windowLength: 1);
        var windows = Run(scheduler, clock, 40_000, 1, 1000, w => w is >= 2 and <= 4 ? 100_000 : 1_000, steady: 1_000);
        var cheap = windows.Skip(9).Take(windows.Count - 10).ToList();   // from the estimate's return to 1,000
        Assert.Equal(1 + 10, cheap[0].Interval);
        Assert.All(cheap, w => Assert.InRange(w.Interval, 1 + 10, 1 + 20));
        Assert.Equal(1 + 19, windows[^2].Interval);
        Assert.InRange(windows[^1].Total, 0.045, 0.0502);
    }

    [Fact]
    public void Steps_slowed_by_the_worker_are_charged_as_the_probes_time()
    {
        // A window costs 1,000 ticks on the training thread; then the worker runs for 5 steps, during which the trainer's
        // steps take 3,000 ticks instead of 1,000. The excess, 10,000 ticks, is the worker's cost to training: the
        // window's cost is 11,000, the steady interval 11,000 / (0.05 x 1,000) = 220 steps, and the achieved overhead,
        // with the excess counted as probe time, comes to the budget.
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 8, OverheadBudget = 0.05 }, clock, windowLength: 1);
        int busyFor = 0;
        var intervals = new List<long>();
        double total = double.NaN;
        for (int i = 0; i < 60_000; i++)
        {
            bool busy = busyFor > 0;
            clock.Ticks += busy ? 3000 : 1000;
            if (busy && --busyFor == 0) scheduler.ChargeContention();
            int slot = scheduler.BeginStep(clock.Ticks, out _, busy);
            if (slot == 0)
            {
                long started = clock.Ticks;
                clock.Ticks += 1000;
                (_, total, long interval) = scheduler.CloseWindow(started, scheduler.Windows == 0 ? 11_000 : null);
                intervals.Add(interval);
                busyFor = 5;
            }

            scheduler.EndStep(clock.Ticks);
        }

        Assert.All(intervals.Skip(3).SkipLast(1), interval => Assert.InRange(interval, 215, 225));
        Assert.InRange(total, 0.048, 0.0505);
    }

    [Fact]
    public void An_expensive_window_is_paid_back_by_a_longer_wait()
    {
        var clock = new FakeClock();
        var scheduler = new WindowScheduler(new ProbeOptions { WindowSize = 2, Interval = 400, OverheadBudget = 0.05 }, clock, windowLength: 2);
        // Every fifth window costs ten times the others (a fixed-point window, say).
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

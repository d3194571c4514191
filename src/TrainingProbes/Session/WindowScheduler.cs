namespace TrainingProbes.Session;

/// <summary>
/// When windows open, and the overhead budget's ledger. It counts steps, says which steps a window spans (slot 0 to
/// L - 1, or -1; L = 1 unless the step family keeps K step gradients), and measures, on the session's
/// <see cref="TimeProvider"/>, the training time between step calls and the time the probes take. After each window it
/// chooses the wait until the next one: the fixed <see cref="ProbeOptions.Interval"/>, or with
/// <see cref="ProbeOptions.OverheadBudget"/> the ledger below. A pure object over its clock: a fake
/// <see cref="TimeProvider"/> drives it step by step in tests.
/// </summary>
internal sealed class WindowScheduler : IStatefulPart
{
    private readonly TimeProvider _clock;
    private readonly int _windowSize;
    private readonly int _interval;
    private readonly double? _budget;
    private long _lastStepEnded;         // timestamp at which the previous step call returned (0: none yet)
    private double _gapAverage;          // average training ticks per step (capped gaps)
    private long _gaps;                  // gaps measured
    private double _idleAverage;         // average of the gaps during which the statistics worker was idle
    private long _idleGaps;
    private long _busyTicks, _busyGaps;  // gaps during which the worker ran, since the last charge
    private long _intervalTrainingTicks; // training time since the previous window's publication
    private long _intervalProbeTicks;    // probe time since then
    private readonly double[] _costs = new double[RecentWindows];   // probe ticks of the last windows (a ring)
    private int _costCount, _costNext;
    private long _totalProbeTicks, _totalTrainingTicks;
    private bool _resumed;               // restored from a saved state, before the first step

    /// <summary>Windows whose cost estimates the next one's: the median of the last few, so that one slow window (a garbage
    /// collection, code compiled for the first time) does not move the schedule.</summary>
    private const int RecentWindows = 5;

    /// <summary>
    /// Windows that run code for the first time and are not charged: the first (everything; its steady cost is measured
    /// by repeating its capture) and the second (what needs a previous window, such as the drift, and the first
    /// publication's instruments). Their intervals are left out of the ledger too.
    /// </summary>
    public const int WarmUpWindows = 2;

    /// <summary>With a budget, the first window opens after this many steps: the ledger needs the training's pace first.</summary>
    public const int PaceSteps = 10;

    /// <param name="options">Interval and budget.</param>
    /// <param name="clock">The clock.</param>
    /// <param name="windowLength">L, the steps a window spans.</param>
    public WindowScheduler(ProbeOptions options, TimeProvider clock, int windowLength)
    {
        _clock = clock;
        _windowSize = windowLength;
        _interval = options.Interval;
        _budget = options.OverheadBudget;
        WindowStart = _budget is null ? 0 : PaceSteps;
    }

    /// <summary>Steps seen so far.</summary>
    public long Steps { get; private set; }

    /// <summary>Windows closed so far.</summary>
    public int Windows { get; private set; }

    /// <summary>The step at which the current (or next) window's first gradient is captured.</summary>
    public long WindowStart { get; private set; }

    /// <summary>Whether the window now closing (or the next one) is a warm-up window, not charged.</summary>
    public bool InWarmUp => Windows < WarmUpWindows;

    /// <summary>The clock's current timestamp.</summary>
    public long Now => _clock.GetTimestamp();

    /// <summary>
    /// Counts a step that starts now and returns its slot in the window (-1 outside one). The time since the
    /// previous step returned is the trainer's own work on one step: a gap over ten times the average (an evaluation
    /// pass, a checkpoint, another model trained in between) counts as ten averages, so that pauses outside training
    /// do not buy the probes more time.
    /// </summary>
    /// <param name="now">The step's start.</param>
    /// <param name="step">The step's index.</param>
    /// <param name="workerBusy">Whether the statistics worker ran during the trainer's work since the last step.</param>
    public int BeginStep(long now, out long step, bool workerBusy = false)
    {
        step = Steps++;
        if (_lastStepEnded != 0)
        {
            long gap = now - _lastStepEnded;
            if (_gaps >= 10) gap = (long)Math.Min(gap, 10 * _gapAverage);
            _gaps++;
            _gapAverage += (gap - _gapAverage) / Math.Min(_gaps, 100);
            _intervalTrainingTicks += gap;
            if (workerBusy)
            {
                _busyTicks += gap;
                _busyGaps++;
            }
            else
            {
                _idleGaps++;
                _idleAverage += (gap - _idleAverage) / Math.Min(_idleGaps, 100);
            }
        }
        else if (_resumed)
        {
            // The first step of a resumed run: its gap (since the save) is not training; count an average step.
            _intervalTrainingTicks += (long)_gapAverage;
            _resumed = false;
        }

        long phase = step - WindowStart;
        return phase >= 0 && phase < _windowSize ? (int)phase : -1;
    }

    /// <summary>
    /// The window that was to start at this step starts at the next one instead: this step could not give what the
    /// window needs (its minibatch), or the worker still reads the previous window. Only at a window's first step,
    /// before anything of it was captured.
    /// </summary>
    public void Postpone()
    {
        if (Steps - 1 != WindowStart) throw new InvalidOperationException("A window can only wait at its first step.");
        WindowStart = Steps;
    }

    /// <summary>The step call returns at <paramref name="now"/>: the trainer's time starts again.</summary>
    public void EndStep(long now) => _lastStepEnded = now;

    /// <summary>Charges probe time to the current interval.</summary>
    public void AddProbeTicks(long ticks) => _intervalProbeTicks += ticks;

    /// <summary>
    /// A background job has finished: the trainer's steps during it took <c>busy - n x idle</c> longer than steps
    /// without it (n steps, idle the average step without the worker). That excess is the worker's cost to training,
    /// whether it competed for a core or for the caches: it moves from the interval's training time to its probe time
    /// (with <paramref name="charge"/>; a warm-up window's is dropped). Never negative.
    /// </summary>
    public void ChargeContention(bool charge = true)
    {
        double idle = _idleGaps > 0 ? _idleAverage : _gapAverage;
        long excess = (long)Math.Clamp(_busyTicks - _busyGaps * idle, 0, _intervalTrainingTicks);
        _busyTicks = _busyGaps = 0;
        if (!charge) return;
        _intervalTrainingTicks -= excess;
        _intervalProbeTicks += excess;
    }

    /// <summary>Training ticks per step without probes: the steps while the worker was idle, once there are some.</summary>
    private double StepTicks => _idleGaps > 0 ? _idleAverage : _gapAverage;

    /// <summary>
    /// Closes the window whose probe work began at <paramref name="windowStarted"/>: the interval's overhead,
    /// the session's achieved overhead, and the steps from this window's start to the next one's.
    /// The warm-up windows pay one-time costs (code compiled and memory allocated for the first time): neither their
    /// probe time nor their intervals' training time enter the ledger. <paramref name="steady"/>, what the first
    /// window's work costs once warm (measured by repeating it), is the first estimate of a window's cost, and until a
    /// charged window has closed the next one comes at the steady interval that estimate gives.
    /// </summary>
    public (double Overhead, double OverheadTotal, long Interval) CloseWindow(long windowStarted, long? steady = null)
    {
        long probeTicks = _intervalProbeTicks + (Now - windowStarted);
        long trainingTicks = _intervalTrainingTicks;
        double overhead = trainingTicks > 0 ? (double)probeTicks / trainingTicks : double.NaN;
        if (!InWarmUp)
        {
            _totalTrainingTicks += trainingTicks;
            _totalProbeTicks += probeTicks;
        }

        RecordCost(Windows == 0 && steady is { } warm ? warm : probeTicks);

        double total = _totalTrainingTicks > 0 ? (double)_totalProbeTicks / _totalTrainingTicks : double.NaN;
        long wait = StepsUntilNextWindow();
        long interval = Steps - WindowStart + wait;
        WindowStart = Steps + wait;
        _intervalProbeTicks = 0;
        _intervalTrainingTicks = 0;
        Windows++;
        return (overhead, total, interval);
    }

    private void RecordCost(double ticks)
    {
        _costs[_costNext] = ticks;
        _costNext = (_costNext + 1) % RecentWindows;
        _costCount = Math.Min(_costCount + 1, RecentWindows);
    }

    /// <summary>What the next window will cost: the lower median of the last windows' costs (0 before the first).</summary>
    private double Cost
    {
        get
        {
            if (_costCount == 0) return 0;
            Span<double> recent = stackalloc double[_costCount];
            _costs.AsSpan(0, _costCount).CopyTo(recent);
            recent.Sort();
            return recent[(_costCount - 1) / 2];
        }
    }

    /// <summary>Steps from now to <see cref="ProbeOptions.Interval"/> steps after this window's start.</summary>
    private long FixedWait() => Math.Max(WindowStart + _interval - Steps, 0);

    /// <summary>
    /// Steps from now (the end of a window) to the start of the next window. Without a budget, the fixed interval from
    /// start to start. With one, a ledger: all probe time P and all training time T so far, and the cost C of the next
    /// window (the median of the last windows' costs), choose the wait S so that (P + C) / (T + (S + L) t) = budget, t the
    /// average training time per step. An expensive window (a fixed-point one) is paid back by a longer wait, a cheap
    /// stretch lets windows come sooner, and the achieved overhead stays at the budget over the run. Credit is spent at
    /// most at twice the steady rate (S at least half of C / (budget t) - K). Never below 0 (windows back to back),
    /// never above <see cref="ProbeOptions.MaxInterval"/>.
    /// </summary>
    private long StepsUntilNextWindow()
    {
        double cost = Cost, step = StepTicks;
        if (_budget is not { } budget || step <= 0 || cost <= 0)
            return FixedWait();
        double steady = cost / budget / step - _windowSize;
        if (_totalTrainingTicks <= 0)   // warm-up windows only so far: nothing charged, no credit
            return (long)Math.Clamp(Math.Ceiling(steady), 0, ProbeOptions.MaxInterval);
        double ledger = ((_totalProbeTicks + cost) / budget - _totalTrainingTicks) / step - _windowSize;
        double wait = Math.Max(ledger, 0.5 * steady);
        return (long)Math.Clamp(Math.Ceiling(wait), 0, ProbeOptions.MaxInterval);
    }

    /// <summary>The recorded window costs, oldest first.</summary>
    private double[] RecentCosts()
    {
        var result = new double[_costCount];
        for (int i = 0; i < _costCount; i++) result[i] = _costs[(_costNext - _costCount + i + RecentWindows) % RecentWindows];
        return result;
    }

    /// <summary>The scheduler's state, for the session's saved state.</summary>
    public SchedulerState Save() => new(Steps, Windows, WindowStart, _gapAverage, _gaps, RecentCosts(), _totalProbeTicks, _totalTrainingTicks,
        _intervalProbeTicks, _intervalTrainingTicks, _clock.TimestampFrequency, _idleAverage, _idleGaps);

    /// <summary>Restores <see cref="Save()"/>'s state; tick counts are converted when the clock's frequency differs.</summary>
    public void Restore(SchedulerState state)
    {
        double scale = state.TimestampFrequency > 0 ? (double)_clock.TimestampFrequency / state.TimestampFrequency : 1;
        Steps = state.Steps;
        Windows = state.Windows;
        WindowStart = state.WindowStart;
        _gapAverage = state.GapAverage * scale;
        _gaps = state.Gaps;
        _idleAverage = state.IdleAverage * scale;
        _idleGaps = state.IdleGaps;
        _costCount = _costNext = 0;
        foreach (double cost in state.RecentCosts) RecordCost(cost * scale);
        _totalProbeTicks = (long)(state.TotalProbeTicks * scale);
        _totalTrainingTicks = (long)(state.TotalTrainingTicks * scale);
        _intervalProbeTicks = (long)(state.IntervalProbeTicks * scale);
        _intervalTrainingTicks = (long)(state.IntervalTrainingTicks * scale);
        _lastStepEnded = 0;   // the time between the save and the resumed run's first step is not training
        _resumed = true;
    }

    public string StateKey => "schedule";

    public void Save(SessionStateWriter state) => state.Set("state", Save());

    public Action Prepare(SessionStateReader state)
    {
        var saved = state.Get<SchedulerState>("state");
        if (saved.Steps < 0 || saved.Windows < 0 || saved.WindowStart < 0)
            throw new InvalidDataException($"The saved schedule has negative counters (step {saved.Steps}, window {saved.Windows}).");
        // Saved in the middle of a window: its first gradients are not in the state, so a new window starts at the
        // next step rather than a window with missing slots.
        if (saved.Steps > saved.WindowStart && saved.Steps < saved.WindowStart + _windowSize)
            saved = saved with { WindowStart = saved.Steps };
        return () => Restore(saved);
    }
}

/// <summary>What <see cref="WindowScheduler"/> saves: its counters and its ledger.</summary>
internal sealed record SchedulerState(long Steps, int Windows, long WindowStart, double GapAverage, long Gaps, double[] RecentCosts,
    long TotalProbeTicks, long TotalTrainingTicks, long IntervalProbeTicks, long IntervalTrainingTicks, long TimestampFrequency,
    double IdleAverage = 0, long IdleGaps = 0);

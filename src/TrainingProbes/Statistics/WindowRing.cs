namespace TrainingProbes.Statistics;

/// <summary>
/// The last n windows of each series, two values a window, in a ring per series with each slot's step
/// (<see cref="StepSpan"/>): what <see cref="WindowSmoother"/> and <see cref="MomentPool"/> hold, and save and restore.
/// Series s holds slots <c>[s n, s n + n)</c>. Allocates only at construction.
/// </summary>
internal sealed class WindowRing
{
    private readonly StepSpan _span;
    private readonly int[] _count;
    private readonly int[] _next;

    /// <param name="series">Number of series.</param>
    /// <param name="windows">Windows per series (at least 2).</param>
    /// <param name="span">Steps a window stays in: those at least this many steps before the latest are left out.</param>
    /// <param name="tooFew">The message when <paramref name="windows"/> is below 2.</param>
    public WindowRing(int series, int windows, long span, string tooFew)
    {
        if (windows < 2) throw new ArgumentOutOfRangeException(nameof(windows), windows, tooFew);
        Windows = windows;
        _span = new StepSpan(series * windows, span);
        First = new double[series * windows];
        Second = new double[series * windows];
        _count = new int[series];
        _next = new int[series];
    }

    /// <summary>The most windows a series holds, n.</summary>
    public int Windows { get; }

    /// <summary>Number of series.</summary>
    public int Series => _count.Length;

    /// <summary>The first value of each slot.</summary>
    public double[] First { get; }

    /// <summary>The second value of each slot.</summary>
    public double[] Second { get; }

    /// <summary>Windows of <paramref name="series"/> written, up to n, within the span or not.</summary>
    public int Written(int series) => _count[series];

    /// <summary>The slot the next window of <paramref name="series"/> goes to.</summary>
    public int Next(int series) => _next[series];

    /// <summary>Whether slot <paramref name="slot"/>'s window is within the span.</summary>
    public bool Holds(int slot) => _span.Holds(slot);

    /// <summary>A window at <paramref name="step"/> arrived: the span now ends there.</summary>
    public void Advance(long step) => _span.Advance(step);

    /// <summary>Writes a window of <paramref name="series"/> at <paramref name="step"/> over its oldest.</summary>
    public void Add(int series, double first, double second, long step)
    {
        int slot = series * Windows + _next[series];
        First[slot] = first;
        Second[slot] = second;
        _span.Stamp(slot, step);
        _next[series] = (_next[series] + 1) % Windows;
        _count[series] = Math.Min(_count[series] + 1, Windows);
    }

    /// <summary>The ring's windows, to save: both values, counts, next slots and steps.</summary>
    public (double[] First, double[] Second, int[] Count, int[] Next, long[] Steps) State =>
        ((double[])First.Clone(), (double[])Second.Clone(), (int[])_count.Clone(), (int[])_next.Clone(), _span.State);

    /// <summary>
    /// Checks a saved <see cref="State"/> against this ring's shape (<paramref name="mismatch"/> says what, when it does
    /// not fit); returns what restores it (steps null: saved before windows had steps, all taken as step 0).
    /// </summary>
    public Action Prepare(double[] first, double[] second, int[] count, int[] next, long[]? steps, Func<string> mismatch)
    {
        if (first.Length != First.Length || !_span.Fits(steps) || second.Length != Second.Length || count.Length != _count.Length
            || next.Length != _next.Length || count.Any(c => c < 0 || c > Windows) || next.Any(n => n < 0 || n >= Windows))
            throw new InvalidDataException(mismatch());
        return () =>
        {
            first.CopyTo(First, 0);
            second.CopyTo(Second, 0);
            _span.Restore(steps);
            count.CopyTo(_count, 0);
            next.CopyTo(_next, 0);
        };
    }
}

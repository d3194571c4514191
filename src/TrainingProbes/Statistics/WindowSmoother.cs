namespace TrainingProbes.Statistics;

/// <summary>
/// The mean of each series over its last n windows within a span of steps, with the standard error of that mean,
/// <c>sqrt(sum_i se_i^2) / m</c> over the m &lt;= n windows held (the windows' minibatches are independent draws, so
/// their errors add in quadrature; the parameters move between windows, so the mean describes the recent past,
/// not one theta). A window whose step is <c>span</c> or more steps before the series' latest is left out, however
/// few windows there are. Undefined (NaN) values are not added. Allocates only at construction.
/// </summary>
internal sealed class WindowSmoother
{
    private readonly WindowRing _ring;   // per window: the value, its squared standard error

    /// <param name="series">Number of series.</param>
    /// <param name="windows">Windows per mean (at least 2).</param>
    /// <param name="span">Steps a window stays in the mean: those at least this many steps before the latest are left out.</param>
    public WindowSmoother(int series, int windows, long span = long.MaxValue) =>
        _ring = new WindowRing(series, windows, span, "A mean over windows needs at least 2 windows.");

    /// <summary>
    /// Adds the value of <paramref name="series"/> of the window at <paramref name="step"/> and returns the mean over the
    /// windows held within the span, and its standard error.
    /// </summary>
    public (double Mean, double StandardError) Add(int series, double value, double standardError, long step = 0)
    {
        _ring.Advance(step);
        if (!double.IsNaN(value)) _ring.Add(series, value, standardError * standardError, step);

        var (first, skip, count) = Held(series);
        double sum = 0, variance = 0;
        for (int i = skip; i < count; i++)
        {
            int slot = Slot(series, first, i);
            sum += _ring.First[slot];
            variance += _ring.Second[slot];
        }

        int m = count - skip;
        return m == 0 ? (double.NaN, double.NaN) : (sum / m, Math.Sqrt(variance) / m);
    }

    /// <summary>
    /// The windows of <paramref name="series"/> held, oldest first: the i-th is at <see cref="Slot"/>(series, First, i) for
    /// i in [Skip, Count); the first Skip are outside the span that ends at the latest window (steps only grow, so they
    /// are the oldest).
    /// </summary>
    private (int First, int Skip, int Count) Held(int series)
    {
        int m = _ring.Written(series);
        int first = m < _ring.Windows ? 0 : _ring.Next(series);
        int skip = 0;
        while (skip < m && !_ring.Holds(Slot(series, first, skip))) skip++;
        return (first, skip, m);
    }

    private int Slot(int series, int first, int i) => series * _ring.Windows + (first + i) % _ring.Windows;

    /// <summary>
    /// The between-window spread of <paramref name="series"/>: <c>sqrt(sum (v_i - v_(i-1))^2 / (2 (m - 1)))</c> over the
    /// finite values of the windows held, in the order they came (von Neumann's successive differences). It estimates
    /// how far one window's value scatters around the run's level: the minibatch noise the jackknife sees plus the
    /// window-to-window movement it cannot, while a slow trend of the level adds only its squared step. NaN below two values.
    /// </summary>
    public double Spread(int series)
    {
        var (first, skip, count) = Held(series);
        double sum = 0, previous = double.NaN;
        int pairs = 0;
        for (int i = skip; i < count; i++)
        {
            double value = _ring.First[Slot(series, first, i)];
            if (!double.IsFinite(value)) { previous = double.NaN; continue; }
            if (!double.IsNaN(previous))
            {
                sum += (value - previous) * (value - previous);
                pairs++;
            }

            previous = value;
        }

        return pairs == 0 ? double.NaN : Math.Sqrt(sum / (2.0 * pairs));
    }

    /// <summary>The smoother's windows, to save: values, variances, counts and next slots.</summary>
    public (double[] Values, double[] Variances, int[] Count, int[] Next, long[] Steps) State => _ring.State;

    /// <summary>Checks a saved <see cref="State"/> against this smoother's shape; returns what restores it (steps null: a state saved before windows had steps, all taken as step 0).</summary>
    public Action Prepare(double[] values, double[] variances, int[] count, int[] next, long[]? steps) =>
        _ring.Prepare(values, variances, count, next, steps, () =>
            $"The saved smoothing state holds {count.Length} series over {(count.Length > 0 ? values.Length / count.Length : 0)} windows; this session smooths {_ring.Series} series over {_ring.Windows} (ProbeOptions.SmoothingWindows).");
}

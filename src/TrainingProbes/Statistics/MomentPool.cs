namespace TrainingProbes.Statistics;

/// <summary>
/// The two moments of the last n windows' micro-batch Gram matrices within a span of steps, per geometry: d, the mean squared norm of a
/// micro-batch gradient (the mean diagonal), and s, the unbiased |E g|^2 (the mean off-diagonal). The moment-form
/// indicators (cosine, regret, relative regret, flatness, noise, norms, disparity, norm test) depend on a window only
/// through them, so their mean over windows is a ratio of pooled moments rather than a mean of noisy ratios: from one
/// minibatch, s is so noisy that single windows' ratios swing past 0, and their mean wastes most of the information
/// (docs/REFERENCE.md, "Smoothed values"). Standard errors are a jackknife over the windows held. Allocates only at
/// construction.
/// </summary>
internal sealed class MomentPool
{
    private readonly WindowRing _ring;   // per window: d, s

    /// <param name="series">Number of series (geometries).</param>
    /// <param name="windows">Windows pooled (at least 2).</param>
    /// <param name="span">Steps a window stays in the pool: those at least this many steps before the latest are left out.</param>
    public MomentPool(int series, int windows, long span = long.MaxValue) =>
        _ring = new WindowRing(series, windows, span, "Pooling needs at least 2 windows.");

    /// <summary>The mean diagonal and mean off-diagonal entry of a K x K Gram matrix (K at least 2).</summary>
    public static (double D, double S) Moments(ReadOnlySpan<double> gram, int k)
    {
        double diagonal = 0, all = 0;
        for (int i = 0; i < k; i++)
        {
            diagonal += gram[i * k + i];
            for (int j = 0; j < k; j++) all += gram[i * k + j];
        }

        return (diagonal / k, (all - diagonal) / (k * (k - 1.0)));
    }

    /// <summary>Adds the moments of the window at <paramref name="step"/> to <paramref name="series"/> (non-finite ones are not added).</summary>
    public void Add(int series, double d, double s, long step = 0)
    {
        _ring.Advance(step);
        if (double.IsFinite(d) && double.IsFinite(s)) _ring.Add(series, d, s, step);
    }

    /// <summary>The most windows held, n.</summary>
    public int Capacity => _ring.Windows;

    /// <summary>Windows of <paramref name="series"/> held within the span.</summary>
    public int Count(int series)
    {
        int held = 0;
        for (int i = 0; i < _ring.Written(series); i++)
            if (_ring.Holds(series * _ring.Windows + i)) held++;
        return held;
    }

    /// <summary>
    /// The pooled moments of <paramref name="series"/> over its windows within the span, leaving out the
    /// <paramref name="leftOut"/>-th of them (-1: none).
    /// </summary>
    public (double D, double S) Pooled(int series, int leftOut = -1)
    {
        double d = 0, s = 0;
        int used = 0;
        for (int i = 0, j = -1; i < _ring.Written(series); i++)
        {
            int slot = series * _ring.Windows + i;
            if (!_ring.Holds(slot) || ++j == leftOut) continue;
            d += _ring.First[slot];
            s += _ring.Second[slot];
            used++;
        }

        return used == 0 ? (double.NaN, double.NaN) : (d / used, s / used);
    }

    /// <summary>Writes a K x K matrix whose mean diagonal is <paramref name="d"/> and mean off-diagonal <paramref name="s"/>.</summary>
    public static void Synthesize(double d, double s, int k, Span<double> gram)
    {
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                gram[i * k + j] = i == j ? d : s;
    }

    /// <summary>The pool's windows, to save.</summary>
    public (double[] D, double[] S, int[] Count, int[] Next, long[] Steps) State => _ring.State;

    /// <summary>Checks a saved <see cref="State"/> against this pool's shape; returns what restores it (steps null: saved before windows had steps, all taken as step 0).</summary>
    public Action Prepare(double[] d, double[] s, int[] count, int[] next, long[]? steps) =>
        _ring.Prepare(d, s, count, next, steps, () =>
            $"The saved moment pool holds {count.Length} series over {(count.Length > 0 ? d.Length / count.Length : 0)} windows; this session pools {_ring.Series} over {_ring.Windows} (ProbeOptions.SmoothingWindows).");
}

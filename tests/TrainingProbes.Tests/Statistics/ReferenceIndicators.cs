namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>
/// The indicator definitions, recomputed in plain double precision directly from the gradient vectors
/// (no Gram matrix, no TorchSharp, no library code), to check the library against.
/// </summary>
internal static class ReferenceIndicators
{
    /// <summary>The names of the per-geometry (first-order) family.</summary>
    public static readonly string[] FirstOrderNames =
    [
        Indicators.GradientNorm,
        Indicators.MeanGradientNorm,
        Indicators.Cosine,
        Indicators.Regret,
        Indicators.RegretUpper,
        Indicators.RelativeRegret,
        Indicators.JensenRatio,
        Indicators.ContrastiveFlatness,
        Indicators.GradientNoise,
        Indicators.Coherence,
        Indicators.Disparity,
        Indicators.NormTest,
        Indicators.InnerProductTest,
        Indicators.OrthogonalityTest,
    ];

    /// <summary>
    /// The first-order family of the (already whitened) gradients <paramref name="h"/>, keyed by indicator name: with a
    /// <paramref name="scale"/> (K for micro-batches of one minibatch), for a minibatch of scale times one gradient's
    /// examples, through S = mean over pairs i != j of h_i.h_j, D = mean |h_i|^2, T_b = (D - S) / scale, A^2 = S + T_b;
    /// without, the pairwise means of K minibatch gradients.
    /// </summary>
    public static Dictionary<string, double> FirstOrder(IReadOnlyList<double[]> h, double regretQuantile, double? scale = null)
    {
        if (scale is not { } s) return Minibatches(h, regretQuantile);
        int k = h.Count;
        int p = h[0].Length;
        var norms = h.Select(Norm).ToArray();
        var gbar = new double[p];
        foreach (var hi in h)
            for (int c = 0; c < p; c++) gbar[c] += hi[c] / k;
        double gbarSq = Dot(gbar, gbar);

        double pairSum = 0, distanceSum = 0;
        var regrets = new List<double>();
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                if (i == j) continue;
                double dot = Dot(h[i], h[j]);
                pairSum += dot;
                distanceSum += Dot(Subtract(h[i], h[j]), Subtract(h[i], h[j]));
                if (norms[i] > 0) regrets.Add(norms[j] - dot / norms[i]);
            }

        int pairs = k * (k - 1);
        double signal = pairSum / pairs;
        double squares = norms.Select(n => n * n).Average();
        double noise = (squares - signal) / s;
        double total = signal + noise;

        double ipSum = 0, orthSum = 0;
        foreach (var hi in h)
        {
            double a = Dot(hi, gbar);
            ipSum += (a - gbarSq) * (a - gbarSq);
            var residual = new double[p];
            for (int c = 0; c < p; c++) residual[c] = hi[c] - a / gbarSq * gbar[c];
            orthSum += Dot(residual, residual);
        }

        return new Dictionary<string, double>
        {
            [Indicators.GradientNorm] = Math.Sqrt(total),
            [Indicators.MeanGradientNorm] = Math.Sqrt(Math.Max(signal, 0)),
            [Indicators.Cosine] = signal / total,
            [Indicators.Regret] = noise / Math.Sqrt(total),
            [Indicators.RegretUpper] = LinearQuantile(regrets, regretQuantile),
            [Indicators.RelativeRegret] = noise / total,
            [Indicators.JensenRatio] = norms.Average() / Math.Sqrt(squares),
            [Indicators.ContrastiveFlatness] = signal > 0 ? Math.Sqrt(total / signal) : double.PositiveInfinity,
            [Indicators.GradientNoise] = noise,
            [Indicators.Coherence] = k * gbarSq / squares,
            [Indicators.Disparity] = Math.Sqrt(distanceSum / pairs / s),
            [Indicators.NormTest] = signal > 0 ? Math.Sqrt(noise / signal) : double.PositiveInfinity,
            [Indicators.InnerProductTest] = Math.Sqrt(ipSum / (k - 1.0) / (s * gbarSq * gbarSq)),
            [Indicators.OrthogonalityTest] = Math.Sqrt(orthSum / (k - 1.0) / (s * gbarSq)),
        };
    }

    /// <summary>The pairwise means of K minibatch gradients <paramref name="h"/>, as the specification states them.</summary>
    private static Dictionary<string, double> Minibatches(IReadOnlyList<double[]> h, double regretQuantile)
    {
        int k = h.Count;
        int p = h[0].Length;
        var norms = h.Select(Norm).ToArray();
        var gbar = new double[p];
        foreach (var hi in h)
            for (int c = 0; c < p; c++) gbar[c] += hi[c] / k;
        double gbarNorm = Norm(gbar);
        double gbarSq = Dot(gbar, gbar);

        double meanNorm = norms.Average();
        double meanNormSq = norms.Select(n => n * n).Average();

        double sumCos = 0, sumRegret = 0, sumRegretNorm = 0, sumDisparity = 0;
        var regrets = new List<double>();
        for (int i = 0; i < k; i++)
        {
            for (int j = 0; j < k; j++)
            {
                if (i == j) continue;
                double dot = Dot(h[i], h[j]);
                sumCos += dot / (norms[i] * norms[j]);
                double r = norms[j] - dot / norms[i];
                regrets.Add(r);
                sumRegret += r;
                sumRegretNorm += norms[j];
                sumDisparity += Norm(Subtract(h[i], h[j]));
            }
        }

        int pairs = k * (k - 1);
        double noise = (norms.Sum(n => n * n) - k * gbarSq) / (k - 1);

        double ipSum = 0, orthSum = 0;
        foreach (var hi in h)
        {
            double a = Dot(hi, gbar);
            ipSum += (a - gbarSq) * (a - gbarSq);
            var residual = new double[p];
            for (int c = 0; c < p; c++) residual[c] = hi[c] - a / gbarSq * gbar[c];
            orthSum += Dot(residual, residual);
        }

        return new Dictionary<string, double>
        {
            [Indicators.GradientNorm] = meanNorm,
            [Indicators.MeanGradientNorm] = gbarNorm,
            [Indicators.Cosine] = sumCos / pairs,
            [Indicators.Regret] = sumRegret / pairs,
            [Indicators.RegretUpper] = LinearQuantile(regrets, regretQuantile),
            [Indicators.RelativeRegret] = sumRegret / sumRegretNorm,
            [Indicators.JensenRatio] = meanNorm / Math.Sqrt(meanNormSq),
            [Indicators.ContrastiveFlatness] = meanNorm / gbarNorm,
            [Indicators.GradientNoise] = noise,
            [Indicators.Coherence] = k * gbarSq / meanNormSq,
            [Indicators.Disparity] = sumDisparity / pairs,
            [Indicators.NormTest] = Math.Sqrt(noise / (k * gbarSq)),
            [Indicators.InnerProductTest] = Math.Sqrt(ipSum / ((k - 1.0) * k * gbarSq * gbarSq)),
            [Indicators.OrthogonalityTest] = Math.Sqrt(orthSum / ((k - 1.0) * k * gbarSq)),
        };
    }


    /// <summary>
    /// Mean GSNR over all coordinates, corrected for finite K: per coordinate with K values that are not all equal,
    /// <c>(K - 3) / (K - 1) mean^2 / (var + epsilon) - 1 / K</c> (unbiased variance), and 0 for a coordinate whose values
    /// are all equal; NaN for K &lt; 4. Written from the definition, one coordinate at a time.
    /// </summary>
    public static double Gsnr(IReadOnlyList<double[]> g, double epsilon)
    {
        int k = g.Count;
        if (k < 4) return double.NaN;
        double sum = 0;
        for (int c = 0; c < g[0].Length; c++)
        {
            if (g.All(gi => gi[c] == g[0][c])) continue;
            double mean = 0;
            for (int i = 0; i < k; i++) mean += g[i][c];
            mean /= k;
            double variance = 0;
            for (int i = 0; i < k; i++) variance += (g[i][c] - mean) * (g[i][c] - mean);
            variance /= k - 1;
            sum += (k - 3.0) / (k - 1.0) * mean * mean / (variance + epsilon) - 1.0 / k;
        }

        return sum / g[0].Length;
    }

    /// <summary>
    /// The GSNR's standard error by the linearised jackknife, from the definition: per coordinate that varies, with
    /// e_ic = g_ic - m_c and w = (K - 1) SS_c / (K (K - 2)) + epsilon, the influence of gradient i is
    /// alpha e + beta e^2 with alpha = 2 m / ((K - 1) w) and beta = -m^2 / ((K - 2) w^2); the error is
    /// (K - 4) / (K - 2) / N sqrt((K - 1) / K sum_i (d_i - mean d)^2). One coordinate at a time, in plain loops.
    /// </summary>
    public static double GsnrLinearisedError(IReadOnlyList<double[]> g, double epsilon)
    {
        int k = g.Count, n = g[0].Length;
        var d = new double[k];
        for (int c = 0; c < n; c++)
        {
            if (g.All(gi => gi[c] == g[0][c])) continue;
            double mean = 0;
            for (int i = 0; i < k; i++) mean += g[i][c];
            mean /= k;
            double squares = 0;
            for (int i = 0; i < k; i++) squares += (g[i][c] - mean) * (g[i][c] - mean);
            double w = (k - 1.0) * squares / (k * (k - 2.0)) + epsilon;
            double alpha = 2 * mean / ((k - 1) * w), beta = -mean * mean / ((k - 2) * w * w);
            for (int i = 0; i < k; i++)
            {
                double e = g[i][c] - mean;
                d[i] += alpha * e + beta * e * e;
            }
        }

        double average = d.Average();
        return (k - 4.0) / (k - 2.0) / n * Math.Sqrt((k - 1.0) / k * d.Sum(v => (v - average) * (v - average)));
    }

    /// <summary>
    /// Jackknife standard error of <paramref name="statistic"/> over the K gradients: the statistic of each K - 1
    /// subset, then <c>sqrt((K - 1) / K sum (v_i - mean v)^2)</c>.
    /// </summary>
    public static double Jackknife(IReadOnlyList<double[]> g, Func<IReadOnlyList<double[]>, double> statistic)
    {
        int k = g.Count;
        var leftOut = Enumerable.Range(0, k).Select(i => statistic(g.Where((_, j) => j != i).ToList())).ToArray();
        double mean = leftOut.Average();
        return Math.Sqrt((k - 1.0) / k * leftOut.Sum(v => (v - mean) * (v - mean)));
    }

    /// <summary><c>||last - first|| / ||first||</c>.</summary>
    public static double Drift(double[] first, double[] last) => Norm(Subtract(last, first)) / Norm(first);

    /// <summary>The adaptive (ASAM) whitening <c>D = |theta| + eta</c>.</summary>
    public static double[] AdaptiveWhitening(double[] theta, double eta) => theta.Select(t => Math.Abs(t) + eta).ToArray();

    /// <summary><c>h_i = D g_i</c>, elementwise.</summary>
    public static double[][] Whiten(IReadOnlyList<double[]> g, double[] d) =>
        g.Select(gi => gi.Select((v, c) => v * d[c]).ToArray()).ToArray();

    /// <summary>Quantile with linear interpolation between order statistics (numpy's default method).</summary>
    public static double LinearQuantile(IEnumerable<double> values, double q)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        double position = q * (sorted.Length - 1);
        int below = (int)Math.Floor(position);
        if (below >= sorted.Length - 1) return sorted[^1];
        return sorted[below] + (position - below) * (sorted[below + 1] - sorted[below]);
    }

    public static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int c = 0; c < a.Length; c++) s += a[c] * b[c];
        return s;
    }

    public static double Norm(double[] a) => Math.Sqrt(Dot(a, a));

    private static double[] Subtract(double[] a, double[] b) => a.Select((v, c) => v - b[c]).ToArray();
}

/// <summary>
/// The diagonal Fisher of the fisher geometry, kept across windows: <c>F_w = beta F_{w-1} + (1 - beta) mean_i g_i^2</c>,
/// bias-corrected by <c>1 - beta^w</c>, whitening <c>D = 1/sqrt(Fhat)</c> where <c>F &gt; 0</c> and 0 elsewhere.
/// </summary>
internal sealed class ReferenceFisher(int parameterCount, double decay)
{
    private readonly double[] _f = new double[parameterCount];
    private int _window;

    /// <summary>Folds one window's gradients into F and returns the whitening D of that window.</summary>
    public double[] NextWindow(IReadOnlyList<double[]> g)
    {
        _window++;
        int k = g.Count;
        var d = new double[_f.Length];
        for (int c = 0; c < _f.Length; c++)
        {
            double meanSquare = 0;
            for (int i = 0; i < k; i++) meanSquare += g[i][c] * g[i][c];
            meanSquare /= k;
            _f[c] = decay * _f[c] + (1 - decay) * meanSquare;
            double corrected = _f[c] / (1 - Math.Pow(decay, _window));
            d[c] = _f[c] > 0 ? 1 / Math.Sqrt(corrected) : 0;
        }
        return d;
    }
}

/// <summary>Comparison helpers with messages that say which value differs.</summary>
internal static class Close
{
    /// <summary>Asserts <c>|actual - expected| &lt;= relative * max(|expected|, scale)</c>.</summary>
    public static void Assert(double expected, double actual, double relative, string what, double scale = 0)
    {
        Xunit.Assert.False(double.IsNaN(expected), $"{what}: the reference value is NaN (test setup problem).");
        if (double.IsInfinity(expected))
        {
            Xunit.Assert.True(expected == actual, $"{what}: expected {expected}, got {actual:R}.");
            return;
        }

        double tolerance = relative * Math.Max(Math.Abs(expected), scale);
        Xunit.Assert.True(
            Math.Abs(actual - expected) <= tolerance,
            $"{what}: expected {expected:R}, got {actual:R} (difference {Math.Abs(actual - expected):E3}, tolerance {tolerance:E3}).");
    }

    /// <summary>Relative difference <c>|a - b| / max(|a|, |b|)</c>.</summary>
    public static double RelativeDifference(double a, double b) =>
        a == b ? 0 : Math.Abs(a - b) / Math.Max(Math.Abs(a), Math.Abs(b));
}

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// One read of a block [K, L] of a window's gradients as <c>CoordinateSums</c>' remarks define it, written out in double
/// one coordinate at a time (plain loops, no library code, no TorchSharp): the Gram matrix of <c>h = D g</c>, the GSNR
/// sums <c>[R, U, N, d_0 .. d_(K-1)]</c>, the fold of F and the fisher and adaptive D. The reference the tensor path
/// and the managed kernel are held to.
/// </summary>
internal static class CoordinateReference
{
    /// <summary>How many roundings of the stored dtype a coordinate's spread must exceed to vary.</summary>
    public const double RoundingFactor = 8;

    public static readonly double Float32Epsilon = Math.Pow(2, -23);
    public static readonly double Float64Epsilon = Math.Pow(2, -52);
    public static readonly double BFloat16Epsilon = Math.Pow(2, -7);

    /// <summary>Mean and sum of squared deviations of column <paramref name="c"/>'s K values.</summary>
    public static (double Mean, double Squares) Moments(double[,] g, long c)
    {
        int k = g.GetLength(0);
        double mean = 0;
        for (int i = 0; i < k; i++) mean += g[i, c];
        mean /= k;
        double squares = 0;
        for (int i = 0; i < k; i++) squares += (g[i, c] - mean) * (g[i, c] - mean);
        return (mean, squares);
    }

    /// <summary>Whether a column with these moments varies: <c>SS &gt; (K - 1) (8 eps |m|)^2</c>.</summary>
    public static bool Varies(double mean, double squares, int k, double storedEpsilon) =>
        squares > (k - 1) * Math.Pow(RoundingFactor * storedEpsilon * Math.Abs(mean), 2);

    /// <summary>
    /// The GSNR sums of columns [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>), and per
    /// influence the sum of the absolute values of its terms (the scale its rounding is judged on).
    /// </summary>
    public static (double[] Sums, double[] InfluenceScale) Gsnr(double[,] g, long start, long count, double storedEpsilon, double epsilon)
    {
        int k = g.GetLength(0);
        var sums = new double[3 + k];
        var scale = new double[k];
        for (long c = start; c < start + count; c++)
        {
            var (m, ss) = Moments(g, c);
            sums[2]++;
            if (!Varies(m, ss, k, storedEpsilon)) continue;
            sums[0] += m * m / (ss / (k - 1) + epsilon);
            sums[1]++;
            if (k < 5) continue;
            double w = (k - 1.0) * ss / (k * (k - 2.0)) + epsilon;
            double alpha = 2 * m / ((k - 1) * w);
            double beta = -m * m / ((k - 2) * w * w);
            for (int i = 0; i < k; i++)
            {
                double e = g[i, c] - m;
                double term = alpha * e + beta * e * e;
                sums[3 + i] += term;
                scale[i] += Math.Abs(term);
            }
        }

        return (sums, scale);
    }

    /// <summary>
    /// F after the block's fold, <c>F &lt;- decay F + (1 - decay) (SS / K + m^2)</c> where that mean square is finite, on
    /// a copy of <paramref name="fisher"/> (indexed by column); and the sum of the block's new F.
    /// </summary>
    public static (double[] Fisher, double Sum) Fold(double[,] g, long start, long count, double[] fisher, double decay)
    {
        int k = g.GetLength(0);
        var folded = (double[])fisher.Clone();
        double sum = 0;
        for (long c = start; c < start + count; c++)
        {
            var (m, ss) = Moments(g, c);
            double q = ss / k + m * m;
            if (double.IsFinite(q)) folded[c] = decay * fisher[c] + (1 - decay) * q;
            sum += folded[c];
        }

        return (folded, sum);
    }

    /// <summary>The fisher D of a coordinate with (new) F <paramref name="f"/>: <c>1 / sqrt(max(F, floor) bias)</c> where F &gt; 0, else 0.</summary>
    public static double FisherD(double f, double floor, double bias, bool float32)
    {
        double d = f > 0 ? 1 / Math.Sqrt(Math.Max(f, floor) * bias) : 0;
        return float32 ? (float)d : d;
    }

    /// <summary>The adaptive D, <c>|theta| + eta</c> (in float32 for float32 gradients).</summary>
    public static double AdaptiveD(double theta, double eta, bool float32) =>
        float32 ? MathF.Abs((float)theta) + (float)eta : Math.Abs(theta) + eta;

    /// <summary>
    /// The K x K Gram matrix (row-major) of <c>h_ic = D_c g_ic</c> over the block's columns, h rounded to float32 for
    /// float32 gradients (as both backends whiten), the products and sums in double. <paramref name="d"/> null: D = I.
    /// </summary>
    public static double[] Gram(double[,] g, long start, long count, Func<long, double>? d, bool float32)
    {
        int k = g.GetLength(0);
        var gram = new double[k * k];
        var h = new double[k];
        for (long c = start; c < start + count; c++)
        {
            double dc = d?.Invoke(c) ?? 1;
            for (int i = 0; i < k; i++) h[i] = d is null ? g[i, c] : float32 ? (float)((float)g[i, c] * (float)dc) : g[i, c] * dc;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++) gram[i * k + j] += h[i] * h[j];
        }

        return gram;
    }

    /// <summary>The sum of squares of the block's values.</summary>
    public static double SumOfSquares(double[,] g, long start, long count)
    {
        double sum = 0;
        for (int i = 0; i < g.GetLength(0); i++)
            for (long c = start; c < start + count; c++) sum += g[i, c] * g[i, c];
        return sum;
    }

    /// <summary>Each Gram entry within <paramref name="relative"/> of its Cauchy-Schwarz bound <c>sqrt(G_ii G_jj)</c>.</summary>
    public static void AssertGram(double[] expected, ReadOnlySpan<double> actual, int k, double relative, string what)
    {
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                double bound = Math.Sqrt(expected[i * k + i] * expected[j * k + j]);
                double difference = Math.Abs(expected[i * k + j] - actual[i * k + j]);
                Assert.True(difference <= relative * bound,
                    $"{what} [{i},{j}]: expected {expected[i * k + j]:R}, got {actual[i * k + j]:R} (difference {difference:E3}, bound {bound:E3}).");
            }
    }

    /// <summary>
    /// U and N exactly; R within <paramref name="relative"/> of <c>max(1, |R|)</c>; each influence within
    /// <paramref name="relative"/> of the sum of its terms' absolute values.
    /// </summary>
    public static void AssertGsnr((double[] Sums, double[] InfluenceScale) expected, ReadOnlySpan<double> actual, int k, double relative, string what)
    {
        var (sums, scale) = expected;
        Assert.Equal(3 + k, actual.Length);
        Assert.True(sums[1] == actual[1], $"{what}: U expected {sums[1]}, got {actual[1]}");
        Assert.True(sums[2] == actual[2], $"{what}: N expected {sums[2]}, got {actual[2]}");
        Assert.True(Math.Abs(sums[0] - actual[0]) <= relative * Math.Max(1, Math.Abs(sums[0])), $"{what}: R expected {sums[0]:R}, got {actual[0]:R}");
        for (int i = 0; i < k; i++)
            Assert.True(Math.Abs(sums[3 + i] - actual[3 + i]) <= relative * scale[i],
                $"{what}: d_{i} expected {sums[3 + i]:R}, got {actual[3 + i]:R} (scale {scale[i]:E3})");
    }
}

/// <summary>
/// Columns of the kinds a window holds: a dead unit's zeros, a constant, one nonzero minibatch (a different one each
/// time), values one rounding apart, an outlier, a spread of a few roundings, zero-mean noise, and noise with a signal;
/// all times <c>scale</c> and rounded to the gradients' dtype. Runs of 40 columns alternate between all the kinds and
/// only those the managed kernel's float32 path decides (no spread within a few roundings), so that both of its paths
/// are taken whatever the alignment.
/// </summary>
internal static class TestColumns
{
    private static readonly int[] FastKinds = [0, 1, 2, 4, 6, 7, 7, 7, 6];

    public static double[,] Mixed(int k, int p, double scale, int seed, bool float32)
    {
        var random = new Random(seed);
        var g = new double[k, p];
        double one = 1, next = float32 ? MathF.BitIncrement(1f) : Math.BitIncrement(1.0);
        // A few float32 roundings; float64 values get a few thousand float64 roundings, since the ratio of a spread of a
        // few float64 roundings depends on how its mean rounds (to ~1e-3: no two float64 sums agree on it to 1e-9).
        double rounding = float32 ? CoordinateReference.Float32Epsilon : 4096 * CoordinateReference.Float64Epsilon;
        for (int c = 0; c < p; c++)
        {
            int kind = c / 40 % 2 == 0 ? c % 10 : FastKinds[c % FastKinds.Length];
            double sign = random.Next(2) == 0 ? -1 : 1;
            for (int i = 0; i < k; i++)
            {
                double v = kind switch
                {
                    0 => 0,                                                        // a dead unit
                    1 => 0.25,                                                     // constant
                    2 => i == c / 10 % k ? sign * 3 * Math.Pow(10, random.Next(-3, 4)) : 0,   // one nonzero minibatch
                    3 => i % 2 == 0 ? one : next,                                  // one rounding apart
                    4 => i == k - 1 ? 40 : 1 + 0.01 * random.NextDouble(),         // an outlier
                    5 => sign * (1 + rounding * random.Next(0, 40)),               // a spread of a few roundings
                    6 => random.NextDouble() * 2 - 1,                              // zero-mean noise
                    _ => random.NextDouble() * 2 - 1 + 0.3,                        // noise with a signal
                };
                g[i, c] = float32 ? (float)(scale * v) : scale * v;
            }
        }

        return g;
    }
}

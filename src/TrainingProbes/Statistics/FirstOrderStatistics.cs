namespace TrainingProbes.Statistics;

/// <summary>
/// The first-order family of a window, derived in double precision from the K x K Gram matrix
/// <c>G_ij = &lt;g_i, g_j&gt;</c> of the window's gradients in one geometry. Everything here is O(K^2):
/// the O(K P) work (the Gram matrix itself) is done on the parameters' device.
/// </summary>
internal readonly record struct FirstOrderStatistics(
    double MeanNorm,
    double MeanGradientNorm,
    double Cosine,
    double Regret,
    double RegretUpper,
    double RelativeRegret,
    double JensenRatio,
    double ContrastiveFlatness,
    double Noise,
    double Coherence,
    double Disparity,
    double NormTest,
    double InnerProductTest,
    double OrthogonalityTest)
{
    /// <summary>Computes the family from a row-major K x K Gram matrix.</summary>
    /// <param name="gram">Row-major Gram matrix, length K*K, symmetric.</param>
    /// <param name="k">Number of gradients in the window (at least 2).</param>
    /// <param name="quantile">Quantile of the pairwise regret reported as <see cref="RegretUpper"/>.</param>
    /// <param name="scratch">Scratch space of at least K*(K-1) doubles (reused to avoid allocation).</param>
    public static FirstOrderStatistics FromGram(ReadOnlySpan<double> gram, int k, double quantile, Span<double> scratch)
    {
        if (k < 2) throw new ArgumentOutOfRangeException(nameof(k), k, "A window needs at least two gradients.");
        if (gram.Length < k * k) throw new ArgumentException($"Gram matrix needs {k * k} entries, got {gram.Length}.", nameof(gram));

        double sumNorm = 0, sumSq = 0, sumAll = 0;
        for (int i = 0; i < k; i++)
        {
            double gii = Math.Max(gram[i * k + i], 0);
            sumNorm += Math.Sqrt(gii);
            sumSq += gii;
            for (int j = 0; j < k; j++) sumAll += gram[i * k + j];
        }

        double meanNorm = sumNorm / k;
        double meanSq = sumSq / k;
        double meanGradSq = Math.Max(sumAll / ((double)k * k), 0);   // ||gbar||^2
        double meanGradNorm = Math.Sqrt(meanGradSq);

        // Pairwise quantities over ordered pairs i != j; pairs whose reference gradient is zero have no direction and are left out.
        double sumCos = 0, sumRegret = 0, sumRegretNorm = 0, sumDisparity = 0;
        int cosPairs = 0, regretPairs = 0, pairs = 0;
        for (int i = 0; i < k; i++)
        {
            double ni = Math.Sqrt(Math.Max(gram[i * k + i], 0));
            for (int j = 0; j < k; j++)
            {
                if (i == j) continue;
                double gij = gram[i * k + j];
                double nj = Math.Sqrt(Math.Max(gram[j * k + j], 0));
                double d2 = gram[i * k + i] + gram[j * k + j] - 2 * gij;
                sumDisparity += Math.Sqrt(Math.Max(d2, 0));
                pairs++;
                if (ni > 0 && nj > 0)
                {
                    sumCos += gij / (ni * nj);
                    cosPairs++;
                }
                if (ni > 0)
                {
                    double r = nj - gij / ni;
                    scratch[regretPairs++] = r;
                    sumRegret += r;
                    sumRegretNorm += nj;
                }
            }
        }

        double noise = (sumSq - k * meanGradSq) / (k - 1);

        // Tests of Byrd et al. (norm) and Bollapragada et al. (inner product, orthogonality), with the
        // K minibatch gradients as the samples of the mean gradient. Each is reported as the smallest
        // tolerance theta for which the test would pass.
        double ipVar = 0, orth = 0;
        for (int i = 0; i < k; i++)
        {
            double ai = 0;
            for (int j = 0; j < k; j++) ai += gram[i * k + j];
            ai /= k;                                         // <g_i, gbar>
            ipVar += (ai - meanGradSq) * (ai - meanGradSq);
            if (meanGradSq > 0) orth += gram[i * k + i] - ai * ai / meanGradSq;
        }

        double normTest = Math.Sqrt(Math.Max(noise, 0) / (k * meanGradSq));
        double innerProductTest = Math.Sqrt(ipVar / ((k - 1.0) * k * meanGradSq * meanGradSq));
        double orthogonalityTest = Math.Sqrt(Math.Max(orth, 0) / ((k - 1.0) * k * meanGradSq));

        return new FirstOrderStatistics(
            MeanNorm: meanNorm,
            MeanGradientNorm: meanGradNorm,
            Cosine: cosPairs > 0 ? sumCos / cosPairs : double.NaN,
            Regret: regretPairs > 0 ? sumRegret / regretPairs : double.NaN,
            RegretUpper: regretPairs > 0 ? Quantile(scratch[..regretPairs], quantile) : double.NaN,
            RelativeRegret: sumRegretNorm > 0 ? sumRegret / sumRegretNorm : double.NaN,
            JensenRatio: meanSq > 0 ? meanNorm / Math.Sqrt(meanSq) : double.NaN,
            ContrastiveFlatness: meanGradNorm > 0 ? meanNorm / meanGradNorm : double.NaN,
            Noise: noise,
            Coherence: meanSq > 0 ? k * meanGradSq / meanSq : double.NaN,
            Disparity: sumDisparity / pairs,
            NormTest: normTest,
            InnerProductTest: innerProductTest,
            OrthogonalityTest: orthogonalityTest);
    }

    /// <summary>Number of values in the record, in declaration order (<see cref="CopyTo"/>, <see cref="FromSpan"/>).</summary>
    public const int FieldCount = 14;

    /// <summary>Writes the values in declaration order.</summary>
    public void CopyTo(Span<double> destination)
    {
        destination[0] = MeanNorm; destination[1] = MeanGradientNorm; destination[2] = Cosine; destination[3] = Regret;
        destination[4] = RegretUpper; destination[5] = RelativeRegret; destination[6] = JensenRatio;
        destination[7] = ContrastiveFlatness; destination[8] = Noise; destination[9] = Coherence; destination[10] = Disparity;
        destination[11] = NormTest; destination[12] = InnerProductTest; destination[13] = OrthogonalityTest;
    }

    /// <summary>The record of <see cref="FieldCount"/> values in declaration order.</summary>
    public static FirstOrderStatistics FromSpan(ReadOnlySpan<double> v) =>
        new(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]);

    /// <summary>Scratch doubles <see cref="StandardErrors"/> needs for a window of <paramref name="k"/> gradients.</summary>
    public static int StandardErrorScratch(int k) => (k - 1) * (k - 1) + (k - 1) * (k - 2) + k * FieldCount + FieldCount;

    /// <summary>
    /// Jackknife standard errors over the K minibatches, one per value of the family: each value is recomputed from
    /// the (K-1) x (K-1) Gram matrix that leaves minibatch i out (the same K x K matrix, so no device work), and
    /// <c>se = sqrt((K-1)/K sum_i (v_(i) - mean_i v_(i))^2)</c>. NaN where K &lt; 3 (a leave-one-out window needs two
    /// gradients) or where a leave-one-out value is undefined.
    /// </summary>
    /// <param name="gram">Row-major K x K Gram matrix.</param>
    /// <param name="k">Number of gradients.</param>
    /// <param name="quantile">Quantile of <see cref="RegretUpper"/>.</param>
    /// <param name="scratch">At least <see cref="StandardErrorScratch"/>(K) doubles.</param>
    public static FirstOrderStatistics StandardErrors(ReadOnlySpan<double> gram, int k, double quantile, Span<double> scratch)
    {
        Span<double> result = stackalloc double[FieldCount];
        if (k < 3)
        {
            result.Fill(double.NaN);
            return FromSpan(result);
        }

        int m = k - 1;
        var sub = scratch[..(m * m)];
        var pairs = scratch.Slice(m * m, m * (m - 1));
        var leftOut = scratch.Slice(m * m + m * (m - 1), k * FieldCount);
        for (int i = 0; i < k; i++)
        {
            for (int a = 0, r = 0; a < k; a++)
            {
                if (a == i) continue;
                for (int b = 0, c = 0; b < k; b++)
                    if (b != i) sub[r * m + c++] = gram[a * k + b];
                r++;
            }

            FromGram(sub, m, quantile, pairs).CopyTo(leftOut.Slice(i * FieldCount, FieldCount));
        }

        for (int f = 0; f < FieldCount; f++)
        {
            double mean = 0;
            for (int i = 0; i < k; i++) mean += leftOut[i * FieldCount + f];
            mean /= k;
            double squares = 0;
            for (int i = 0; i < k; i++)
            {
                double d = leftOut[i * FieldCount + f] - mean;
                squares += d * d;
            }

            result[f] = Math.Sqrt((k - 1.0) / k * squares);
        }

        return FromSpan(result);
    }

    /// <summary>Quantile with linear interpolation between order statistics (sorts <paramref name="values"/> in place).</summary>
    internal static double Quantile(Span<double> values, double q)
    {
        values.Sort();
        double position = q * (values.Length - 1);
        int lower = (int)Math.Floor(position);
        int upper = Math.Min(lower + 1, values.Length - 1);
        double fraction = position - lower;
        return values[lower] + fraction * (values[upper] - values[lower]);
    }
}

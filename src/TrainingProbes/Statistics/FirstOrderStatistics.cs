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

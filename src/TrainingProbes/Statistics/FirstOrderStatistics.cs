namespace TrainingProbes.Statistics;

/// <summary>
/// The first-order family of a window, derived in double precision from the K x K Gram matrix
/// <c>G_ij = &lt;g_i, g_j&gt;</c> of its gradients in one geometry. Everything here is O(K^2): the O(K P) work (the Gram
/// matrix itself) is done by the window pass.
/// </summary>
/// <remarks>
/// <para>
/// Most members describe a minibatch gradient of the trainer's batch size b, through two moments of the window:
/// <c>S = mean_{i != j} G_ij</c>, which estimates <c>|m|^2</c> (m the expected gradient) without bias, and
/// <c>T = mean_i G_ii - S</c>, which estimates the trace of one window gradient's covariance. A window gradient carries
/// 1/s of the trainer's batch (s = K for the K micro-batches of one batch, 1 when each gradient is a minibatch), so the
/// covariance at b is <c>T_b = T / s</c> and <c>E|g_b|^2 = A^2 = S + T_b</c> (with s = K, A^2 is exactly the squared
/// norm of the window's mean gradient, which is the trainer's minibatch gradient). Then:
/// norm <c>A</c>, mean norm <c>sqrt(max(S, 0))</c>, cosine <c>S / A^2</c>, regret <c>T_b / A</c>, relative regret
/// <c>T_b / A^2</c>, contrastive flatness <c>A / sqrt(S)</c> (infinite when S &lt;= 0: no signal), noise <c>T_b</c>,
/// disparity <c>sqrt(2 T_b)</c>, norm test <c>sqrt(T_b / S)</c>, and the inner-product and orthogonality tests with the
/// sample variance of one window gradient divided by s. These are the expectations for two independent minibatches of
/// size b (McCandlish et al. 2018 use the same two moments for the noise scale).
/// </para>
/// <para>
/// Three members have no such scaling law and describe the window's own K gradients: the upper quantile of the pairwise
/// regret <c>||g_j|| - g_i.g_j / ||g_i||</c>, the Jensen ratio <c>mean ||g_i|| / sqrt(mean ||g_i||^2)</c> and the
/// m-coherence <c>K ||gbar||^2 / mean ||g_i||^2</c>.
/// </para>
/// </remarks>
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
    /// <param name="scale">s, the trainer's batch over one window gradient's (K for micro-batches of one batch, else 1).</param>
    /// <param name="quantile">Quantile of the pairwise regret reported as <see cref="RegretUpper"/>.</param>
    /// <param name="scratch">Scratch space of at least K*(K-1) doubles (reused to avoid allocation).</param>
    public static FirstOrderStatistics FromGram(ReadOnlySpan<double> gram, int k, double scale, double quantile, Span<double> scratch)
    {
        if (k < 2) throw new ArgumentOutOfRangeException(nameof(k), k, "A window needs at least two gradients.");
        if (gram.Length < k * k) throw new ArgumentException($"Gram matrix needs {k * k} entries, got {gram.Length}.", nameof(gram));
        if (!(scale >= 1)) throw new ArgumentOutOfRangeException(nameof(scale), scale, "The batch scale is at least 1.");

        double diagonal = 0, offDiagonal = 0, sumNorm = 0;
        for (int i = 0; i < k; i++)
        {
            diagonal += gram[i * k + i];
            sumNorm += Math.Sqrt(Math.Max(gram[i * k + i], 0));
            for (int j = 0; j < k; j++)
                if (j != i) offDiagonal += gram[i * k + j];
        }

        double d = diagonal / k;                        // mean ||g_i||^2
        double s = offDiagonal / (k * (k - 1.0));       // unbiased |m|^2
        double meanGradSq = (diagonal + offDiagonal) / ((double)k * k);   // ||gbar||^2
        double t = Math.Max(d - s, 0);                  // trace of one window gradient's covariance
        double tb = t / scale;                          // ... at the trainer's batch
        double a2 = s + tb;                             // E |g_b|^2

        // Pairwise regret over ordered pairs i != j; pairs whose reference gradient is zero have no direction.
        int regretPairs = 0;
        for (int i = 0; i < k; i++)
        {
            double ni = Math.Sqrt(Math.Max(gram[i * k + i], 0));
            if (!(ni > 0)) continue;
            for (int j = 0; j < k; j++)
                if (j != i) scratch[regretPairs++] = Math.Sqrt(Math.Max(gram[j * k + j], 0)) - gram[i * k + j] / ni;
        }

        // Bollapragada et al.'s tests with a_i = <g_i, gbar>, the sample variance of one window gradient over s.
        double ipVar = 0, orth = 0;
        for (int i = 0; i < k; i++)
        {
            double ai = 0;
            for (int j = 0; j < k; j++) ai += gram[i * k + j];
            ai /= k;
            ipVar += (ai - meanGradSq) * (ai - meanGradSq);
            if (meanGradSq > 0) orth += gram[i * k + i] - ai * ai / meanGradSq;
        }

        return new FirstOrderStatistics(
            MeanNorm: Math.Sqrt(Math.Max(a2, 0)),
            MeanGradientNorm: Math.Sqrt(Math.Max(s, 0)),
            Cosine: a2 > 0 ? s / a2 : double.NaN,
            Regret: a2 > 0 ? tb / Math.Sqrt(a2) : double.NaN,
            RegretUpper: regretPairs > 0 ? Quantile(scratch[..regretPairs], quantile) : double.NaN,
            RelativeRegret: a2 > 0 ? tb / a2 : double.NaN,
            JensenRatio: d > 0 ? sumNorm / k / Math.Sqrt(d) : double.NaN,
            ContrastiveFlatness: !(a2 > 0) ? double.NaN : s > 0 ? Math.Sqrt(a2 / s) : double.PositiveInfinity,
            Noise: tb,
            Coherence: d > 0 ? k * meanGradSq / d : double.NaN,
            Disparity: Math.Sqrt(2 * tb),
            NormTest: s > 0 ? Math.Sqrt(tb / s) : tb > 0 ? double.PositiveInfinity : double.NaN,
            InnerProductTest: meanGradSq > 0 ? Math.Sqrt(ipVar / (k - 1.0) / (scale * meanGradSq * meanGradSq)) : double.NaN,
            OrthogonalityTest: meanGradSq > 0 ? Math.Sqrt(Math.Max(orth, 0) / (k - 1.0) / (scale * meanGradSq)) : double.NaN);
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

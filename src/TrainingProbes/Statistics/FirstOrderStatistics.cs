namespace TrainingProbes.Statistics;

/// <summary>
/// The first-order family of a window, derived in double precision from the K x K Gram matrix
/// <c>G_ij = &lt;g_i, g_j&gt;</c> of its gradients in one geometry. Everything here is O(K^2): the O(K P) work (the Gram
/// matrix itself) is done by the window pass.
/// </summary>
/// <remarks>
/// <para>
/// When each of the K gradients is a minibatch's (the step family, the fixed-point probe), the members are the pairwise
/// means of the specification: the cosine <c>mean_{i != j} G_ij / (n_i n_j)</c>, the regret
/// <c>mean_{i != j} n_j - G_ij / n_i</c>, the relative regret <c>sum r_ij / sum n_j</c>, the mean norm, the norm of the
/// mean gradient, the contrastive flatness <c>mean n_i / ||gbar||</c>, the noise, the disparity <c>mean ||g_i - g_j||</c>
/// and the tests of Byrd et al. and Bollapragada et al. for the mean of the K gradients.
/// </para>
/// <para>
/// When the K gradients are micro-batches of one minibatch (the default window), the members describe a minibatch
/// gradient of the trainer's batch size b instead, through two moments of the window:
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
    double OrthogonalityTest,
    double NoiseScale,
    double ExampleNoise,
    double ExampleSnr)
{
    /// <summary>Computes the family from a row-major K x K Gram matrix.</summary>
    /// <param name="gram">Row-major Gram matrix, length K*K, symmetric.</param>
    /// <param name="k">Number of gradients in the window (at least 2).</param>
    /// <param name="scale">s, the trainer's batch over one micro-batch gradient's for micro-batches of one minibatch; null
    /// when each gradient is a minibatch's (the pairwise means).</param>
    /// <param name="quantile">Quantile of the pairwise regret reported as <see cref="RegretUpper"/>.</param>
    /// <param name="scratch">Scratch space of at least K*(K-1) doubles (reused to avoid allocation).</param>
    /// <param name="examples">n, examples behind each gradient, for the per-example members (NaN: unknown, they are NaN).</param>
    public static FirstOrderStatistics FromGram(ReadOnlySpan<double> gram, int k, double? scale, double quantile, Span<double> scratch,
        double examples = double.NaN)
    {
        if (k < 2) throw new ArgumentOutOfRangeException(nameof(k), k, "A window needs at least two gradients.");
        if (gram.Length < k * k) throw new ArgumentException($"Gram matrix needs {k * k} entries, got {gram.Length}.", nameof(gram));
        return scale is { } s ? MicroBatches(gram, k, s, quantile, scratch, examples) : Minibatches(gram, k, quantile, scratch, examples);
    }

    /// <summary>The pairwise means of K minibatch gradients.</summary>
    private static FirstOrderStatistics Minibatches(ReadOnlySpan<double> gram, int k, double quantile, Span<double> scratch, double examples)
    {
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

        var pairwise = Pairwise(gram, k, scratch);
        int regretPairs = pairwise.RegretPairs;
        double noise = (sumSq - k * meanGradSq) / (k - 1);

        // Tests of Byrd et al. (norm) and Bollapragada et al. (inner product, orthogonality), with the
        // K minibatch gradients as the samples of the mean gradient. Each is reported as the smallest
        // tolerance theta for which the test would pass.
        var (ipVar, orth) = TestSums(gram, k, meanGradSq);

        double normTest = Math.Sqrt(Math.Max(noise, 0) / (k * meanGradSq));
        double innerProductTest = Math.Sqrt(ipVar / ((k - 1.0) * k * meanGradSq * meanGradSq));
        double orthogonalityTest = Math.Sqrt(Math.Max(orth, 0) / ((k - 1.0) * k * meanGradSq));

        return new FirstOrderStatistics(
            MeanNorm: meanNorm,
            MeanGradientNorm: meanGradNorm,
            Cosine: pairwise.CosinePairs > 0 ? pairwise.Cosine / pairwise.CosinePairs : double.NaN,
            Regret: regretPairs > 0 ? pairwise.Regret / regretPairs : double.NaN,
            RegretUpper: regretPairs > 0 ? Quantile(scratch[..regretPairs], quantile) : double.NaN,
            RelativeRegret: pairwise.RegretNorm > 0 ? pairwise.Regret / pairwise.RegretNorm : double.NaN,
            JensenRatio: meanSq > 0 ? meanNorm / Math.Sqrt(meanSq) : double.NaN,
            ContrastiveFlatness: meanGradNorm > 0 ? meanNorm / meanGradNorm : double.NaN,
            Noise: noise,
            Coherence: meanSq > 0 ? k * meanGradSq / meanSq : double.NaN,
            Disparity: pairwise.Disparity / pairwise.Pairs,
            NormTest: normTest,
            InnerProductTest: innerProductTest,
            OrthogonalityTest: orthogonalityTest,
            NoiseScale: NoiseScaleOf(examples * noise, meanGradSq - noise / k),
            ExampleNoise: examples * noise,
            ExampleSnr: SnrOf(examples * noise, meanGradSq - noise / k));
    }

    /// <summary>K micro-batches of one minibatch, reported for the minibatch: through S and T at the batch scale.</summary>
    private static FirstOrderStatistics MicroBatches(ReadOnlySpan<double> gram, int k, double scale, double quantile, Span<double> scratch, double examples)
    {
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

        // Bollapragada et al.'s tests with the sample variance of one window gradient over s.
        var (ipVar, orth) = TestSums(gram, k, meanGradSq);

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
            OrthogonalityTest: meanGradSq > 0 ? Math.Sqrt(Math.Max(orth, 0) / (k - 1.0) / (scale * meanGradSq)) : double.NaN,
            NoiseScale: NoiseScaleOf(examples * t, s),
            ExampleNoise: examples * t,
            ExampleSnr: SnrOf(examples * t, s));
    }

    /// <summary>
    /// Sums over the ordered pairs i != j of minibatch gradients: cosines, regrets <c>n_j - G_ij / n_i</c> (each also
    /// into <paramref name="scratch"/>) with the norms they are relative to, and disparities. Pairs whose reference
    /// gradient is zero have no direction and are left out of the cosines and regrets.
    /// </summary>
    private static (double Cosine, int CosinePairs, double Regret, double RegretNorm, int RegretPairs, double Disparity, int Pairs) Pairwise(
        ReadOnlySpan<double> gram, int k, Span<double> scratch)
    {
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

        return (sumCos, cosPairs, sumRegret, sumRegretNorm, regretPairs, sumDisparity, pairs);
    }

    /// <summary>
    /// The sums of Bollapragada et al.'s tests with <c>a_i = &lt;g_i, gbar&gt;</c>: the squared spread of the a_i about
    /// <c>||gbar||^2</c> (inner product) and the squared norms of the g_i orthogonal to gbar (orthogonality).
    /// </summary>
    private static (double InnerProduct, double Orthogonal) TestSums(ReadOnlySpan<double> gram, int k, double meanGradSq)
    {
        double ipVar = 0, orth = 0;
        for (int i = 0; i < k; i++)
        {
            double ai = 0;
            for (int j = 0; j < k; j++) ai += gram[i * k + j];
            ai /= k;                                         // <g_i, gbar>
            ipVar += (ai - meanGradSq) * (ai - meanGradSq);
            if (meanGradSq > 0) orth += gram[i * k + i] - ai * ai / meanGradSq;
        }

        return (ipVar, orth);
    }

    /// <summary>
    /// <c>B_noise = tr(Sigma) / |m|^2</c> from the per-example noise and an unbiased |m|^2; infinite when the estimate of
    /// |m|^2 is not above 0 (no signal detectable), NaN when the examples per gradient are unknown.
    /// </summary>
    private static double NoiseScaleOf(double exampleNoise, double signal) =>
        double.IsNaN(exampleNoise) ? double.NaN : signal > 0 ? exampleNoise / signal : exampleNoise > 0 ? double.PositiveInfinity : double.NaN;

    /// <summary><c>|m|^2 / tr(Sigma)</c>; NaN when the examples per gradient are unknown or there is no noise.</summary>
    private static double SnrOf(double exampleNoise, double signal) => exampleNoise > 0 ? signal / exampleNoise : double.NaN;

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

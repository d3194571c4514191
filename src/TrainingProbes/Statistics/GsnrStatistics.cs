namespace TrainingProbes.Statistics;

/// <summary>
/// The mean gradient signal-to-noise ratio of a window, corrected for its finite K, and its jackknife standard error.
/// </summary>
/// <remarks>
/// <para>
/// Per coordinate c the K minibatch gradients have mean m_c and unbiased variance v_c. For the minibatch gradient's
/// mean mu_c and variance sigma_c^2, <c>E[m_c^2] = mu_c^2 + sigma_c^2 / K</c>, and for (near) Gaussian minibatch
/// gradients <c>E[1 / v_c] = (K - 1) / ((K - 3) sigma_c^2)</c> with m_c and v_c independent. So
/// <c>snr_c = (K - 3) / (K - 1) m_c^2 / v_c - 1 / K</c> estimates <c>mu_c^2 / sigma_c^2</c> without bias; the raw
/// ratio m_c^2 / v_c of Liu et al. (2020) overstates it, by (K - 1) / (K (K - 3)) on pure noise (0.175 at K = 8).
/// </para>
/// <para>
/// GSNR is the mean of snr_c over all coordinates; one whose K values are exactly equal (a dead unit's zeros) has no
/// noise to compare with and counts as 0. The EB criterion of Mahsereci et al. (2017), with the K minibatch gradients as
/// the samples of the averaged gradient, is <c>1 - mean_c K m_c^2 / sigma_c^2</c>; with the same correction its
/// estimate is <c>-K GSNR</c>: 0 in expectation on pure noise for every K &gt;= 4, negative while the gradient carries
/// signal. Both need K &gt;= 4 (NaN below); the standard error (jackknife over the K minibatches, each leave-one-out
/// value corrected for K - 1) needs K &gt;= 5.
/// </para>
/// </remarks>
internal static class GsnrStatistics
{
    /// <summary>
    /// GSNR and its standard error from the device sums <c>[R, U, N, R_(0..K-1), U_(0..K-1)]</c>: R the sum of
    /// m_c^2 / v_c over the U coordinates that vary, N all coordinates, and the same with minibatch i left out.
    /// </summary>
    public static (double Value, double StandardError) FromSums(ReadOnlySpan<double> sums, int k)
    {
        double n = sums[2];
        double value = Corrected(sums[0], sums[1], n, k);
        if (k - 1 < 4 || !(n > 0)) return (value, double.NaN);

        Span<double> leftOut = stackalloc double[k];
        for (int i = 0; i < k; i++) leftOut[i] = Corrected(sums[3 + i], sums[3 + k + i], n, k - 1);
        return (value, Jackknife.StandardError(leftOut));
    }

    /// <summary><c>((K - 3) / (K - 1) R - U / K) / N</c>, or NaN for K &lt; 4 or no coordinates.</summary>
    public static double Corrected(double ratioSum, double varying, double coordinates, int k) =>
        k >= 4 && coordinates > 0 ? ((k - 3.0) / (k - 1.0) * ratioSum - varying / k) / coordinates : double.NaN;
}

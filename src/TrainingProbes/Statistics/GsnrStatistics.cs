namespace TrainingProbes.Statistics;

/// <summary>
/// The mean gradient signal-to-noise ratio of a window, corrected for its finite K, and its standard error by a
/// linearised jackknife over the window's K gradients.
/// </summary>
/// <remarks>
/// <para>
/// Per coordinate c the K gradients have mean m_c and unbiased variance v_c. For the gradients' mean mu_c and variance
/// sigma_c^2, <c>E[m_c^2] = mu_c^2 + sigma_c^2 / K</c>, and for (near) Gaussian gradients
/// <c>E[1 / v_c] = (K - 1) / ((K - 3) sigma_c^2)</c>. So <c>(K - 3) / (K - 1) m_c^2 / v_c - 1 / K</c> estimates
/// <c>mu_c^2 / sigma_c^2</c> without bias (Liu et al. 2020's raw ratio overstates it by (K - 1) / (K (K - 3)) on pure
/// noise). The mean over all coordinates is the GSNR of one of the window's gradients; a coordinate whose K values are
/// equal, or differ by no more than the rounding of their dtype, counts as 0 (see <see cref="CoordinateSums"/>).
/// </para>
/// <para>
/// The standard error is the delete-one jackknife's, linearised: leaving gradient i out changes each coordinate's
/// ratio by about <c>-(alpha_c e_ic + beta_c e_ic^2)</c> (e the deviation from the coordinate's mean, alpha and beta the
/// ratio's derivatives at the leave-one-out average), so one pass gives the K influences <c>d_i</c> and
/// <c>se(R) = sqrt((K - 1) / K sum_i (d_i - mean d)^2)</c>, with one division per coordinate instead of K + 1.
/// </para>
/// </remarks>
internal static class GsnrStatistics
{
    /// <summary>Length of the sums: <c>[R, U, N, d_0 .. d_(K-1)]</c>.</summary>
    public static int Length(int k) => 3 + k;

    /// <summary>
    /// GSNR and its standard error from the sums <c>[R, U, N, d_0 .. d_(K-1)]</c> (R the sum of m_c^2 / v_c over the U
    /// coordinates that vary, N all coordinates, d the influences), times <paramref name="scale"/>: the GSNR of a
    /// gradient over <paramref name="scale"/> times as many examples as one of the window's (K for micro-batches of one
    /// batch, so the value is the trainer's minibatch's). NaN below K = 4; the error needs K &gt;= 5.
    /// </summary>
    public static (double Value, double StandardError) FromSums(ReadOnlySpan<double> sums, int k, double scale)
    {
        double n = sums[2];
        double value = scale * Corrected(sums[0], sums[1], n, k);
        if (k < 5 || !(n > 0)) return (value, double.NaN);

        var influence = sums.Slice(3, k);
        double mean = 0;
        foreach (double d in influence) mean += d;
        mean /= k;
        double squares = 0;
        foreach (double d in influence) squares += (d - mean) * (d - mean);
        double ratioError = Math.Sqrt((k - 1.0) / k * squares);
        // A leave-one-out value is corrected for K - 1 gradients: ((K - 4) / (K - 2) R_(i) - U_(i) / (K - 1)) / N.
        return (value, scale * (k - 4.0) / (k - 2.0) * ratioError / n);
    }

    /// <summary><c>((K - 3) / (K - 1) R - U / K) / N</c>, or NaN for K &lt; 4 or no coordinates.</summary>
    public static double Corrected(double ratioSum, double varying, double coordinates, int k) =>
        k >= 4 && coordinates > 0 ? ((k - 3.0) / (k - 1.0) * ratioSum - varying / k) / coordinates : double.NaN;
}

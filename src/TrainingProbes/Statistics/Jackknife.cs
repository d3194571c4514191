namespace TrainingProbes.Statistics;

/// <summary>The delete-one jackknife over a window's K minibatches.</summary>
internal static class Jackknife
{
    /// <summary>
    /// <c>se = sqrt((K-1)/K sum_i (v_(i) - mean_i v_(i))^2)</c> from the K leave-one-out values v_(i); NaN when one of
    /// them is undefined, +infinity when one is infinite (a contrastive flatness whose mean gradient a left-out
    /// micro-batch makes undetectable: its uncertainty is unbounded, not unknown).
    /// </summary>
    public static double StandardError(ReadOnlySpan<double> leaveOneOut)
    {
        int k = leaveOneOut.Length;
        bool infinite = false;
        foreach (double v in leaveOneOut)
        {
            if (double.IsNaN(v)) return double.NaN;
            infinite |= double.IsInfinity(v);
        }

        if (infinite) return double.PositiveInfinity;
        double mean = 0;
        foreach (double v in leaveOneOut) mean += v;
        mean /= k;
        double squares = 0;
        foreach (double v in leaveOneOut) squares += (v - mean) * (v - mean);
        return Math.Sqrt((k - 1.0) / k * squares);
    }
}

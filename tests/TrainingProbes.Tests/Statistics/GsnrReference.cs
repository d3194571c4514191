namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The GSNR sums [R, U, N, R_(i), U_(i)] of the definition (float32 gradients, 8 float32 eps of rounding), written
/// out in double one coordinate at a time: the reference the managed kernels are compared with.
/// </summary>
internal static class GsnrReference
{
    /// <param name="g">[K, P] gradients.</param>
    /// <param name="start">First column.</param>
    /// <param name="count">Columns.</param>
    /// <param name="epsilon">Added to every variance.</param>
    public static double[] Sums(float[,] g, long start, long count, double epsilon)
    {
        int k = g.GetLength(0);
        double rounding = 8 * Math.Pow(2, -23);
        var sums = new double[3 + 2 * k];
        for (long c = start; c < start + count; c++)
        {
            var x = Enumerable.Range(0, k).Select(i => (double)g[i, c]).ToArray();
            double mean = x.Average();
            double ss = x.Sum(v => (v - mean) * (v - mean));
            double variance = ss / (k - 1);
            sums[2]++;
            if (x.Max() == x.Min() || !(variance > Math.Pow(rounding * Math.Abs(mean), 2))) continue;
            sums[0] += mean * mean / (variance + epsilon);
            sums[1]++;
            for (int i = 0; i < k; i++)
            {
                var others = x.Where((_, j) => j != i).ToArray();
                double m = others.Average();
                double v = others.Sum(o => (o - m) * (o - m)) / (k - 2);
                if (others.Any(o => o != 0) && v > Math.Pow(rounding * Math.Abs(m), 2))
                {
                    sums[3 + i] += m * m / (v + epsilon);
                    sums[3 + k + i]++;
                }
            }
        }

        return sums;
    }
}

/// <summary>What the suites take of their repeated measurements.</summary>
internal static class BenchmarkStatistics
{
    /// <summary>The median of <paramref name="values"/> (the mean of the middle two for an even count); NaN when empty.</summary>
    public static double Median(IReadOnlyCollection<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) return double.NaN;
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

using TrainingProbes.Statistics;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

public sealed class GsnrKernelTests
{
    private static double[] Reference(float[,] g, long start, long count, double epsilon) =>
        GsnrReference.Sums(g, start, count, epsilon, downdate: false);

    [Theory]
    [InlineData(8, 1037, 0, 1037)]
    [InlineData(5, 203, 17, 150)]
    [InlineData(16, 64, 3, 61)]
    public void The_managed_pass_gives_the_sums_of_the_definition(int k, int p, long start, long count)
    {
        var random = new Random(k * 1000 + p);
        var g = new float[k, p];
        for (int c = 0; c < p; c++)
        {
            int kind = c % 7;
            for (int i = 0; i < k; i++)
                g[i, c] = kind switch
                {
                    0 => 0f,                                                   // a dead unit
                    1 => 0.25f,                                                // constant
                    2 => i == 0 ? 3f : 0f,                                     // one nonzero minibatch
                    3 => i == k - 1 ? 40f : 1f + 1e-4f * (float)random.NextDouble(),   // an outlier
                    4 => (i % 2 == 0) ? 1f : MathF.BitIncrement(1f),           // one ulp apart
                    _ => (float)(random.NextDouble() * 2 - 1 + 0.2),           // noise with a signal
                };
        }

        using var tensor = torch.tensor(g);
        var sums = new double[3 + 2 * k];
        GsnrKernel.Accumulate(tensor, start, count, 0, sums);
        var expected = Reference(g, start, count, 0);
        // The leave-one-out variance is a downdate of the full one (as on the tensor path): with the outlier column
        // (40 among values 1e-4 apart) it keeps about 1e-4 relative precision of a ratio near 1e9 per coordinate (the float64 jackknife test allows 1e-3 too).
        for (int i = 0; i < sums.Length; i++)
            Assert.True(Math.Abs(sums[i] - expected[i]) <= 1e-3 * Math.Max(1, Math.Abs(expected[i])), $"sum {i}: expected {expected[i]}, got {sums[i]}");
        // Without the outlier columns the sums agree to rounding.
        Assert.Equal(expected[1], sums[1]);
        Assert.Equal(expected[2], sums[2]);
    }
}

using TrainingProbes.Statistics;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

public sealed class GsnrKernelTests
{
    private static double[] Reference(float[,] g, long start, long count, double epsilon) =>
        GsnrReference.Sums(g, start, count, epsilon);

    /// <summary>Dead units, constants, sparse and outlier columns, values one ulp apart, and noise with a signal.</summary>
    private static float[,] Columns(int k, int p)
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

        return g;
    }

    [Theory]
    [InlineData(8, 1037, 0)]
    [InlineData(5, 203, 0)]
    [InlineData(16, 64, 1e-3)]
    public void The_tensor_path_gives_the_sums_of_the_definition(int k, int p, double epsilon)
    {
        // The path for gradients the managed pass cannot read (another device, bfloat16 storage): float64 tensors.
        var g = Columns(k, p);
        using var tensor = torch.tensor(g);
        using var sums = torch.zeros(3 + 2 * k, dtype: ScalarType.Float64);
        using (torch.NewDisposeScope()) FirstOrderFamily.AccumulateGsnr(tensor, sums, k, ScalarType.Float32, epsilon);
        var actual = sums.data<double>().ToArray();
        var expected = Reference(g, 0, p, epsilon);
        for (int i = 0; i < actual.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-9 * Math.Max(1, Math.Abs(expected[i])), $"sum {i}: expected {expected[i]}, got {actual[i]}");
    }

    [Theory]
    [InlineData(8, 1037, 0, 1037)]
    [InlineData(5, 203, 17, 150)]
    [InlineData(16, 64, 3, 61)]
    public void The_managed_pass_gives_the_sums_of_the_definition(int k, int p, long start, long count)
    {
        var g = Columns(k, p);
        using var tensor = torch.tensor(g);
        var sums = new double[3 + 2 * k];
        GsnrKernel.Accumulate(tensor, start, count, 0, sums);
        var expected = Reference(g, start, count, 0);
        // Counts exactly; ratio sums to float32 rounding of each ratio. The leave-one-out variance of the outlier column
        // (40 among values 1e-4 apart) is summed from the other K - 1 values: a downdate of the full one kept only
        // about 1e-4 of a ratio near 1e9 there, in float64 too.
        for (int i = 0; i < sums.Length; i++)
        {
            bool isCount = i is 1 or 2 || i >= 3 + k;
            double tolerance = isCount ? 0 : 1e-5 * Math.Max(1, Math.Abs(expected[i]));
            Assert.True(Math.Abs(sums[i] - expected[i]) <= tolerance, $"sum {i}: expected {expected[i]}, got {sums[i]}");
        }
    }

    /// <summary>
    /// Columns of a fixed-point window seen in an end-to-end run: one minibatch dominates, and the other K - 1 values are
    /// zeros beside one tiny value (1e-26). With that minibatch left out, the float32 sums of squares are subnormal, their
    /// reciprocal overflowed and 0 x infinity gave a NaN leave-one-out ratio (a NaN standard error); such columns now go
    /// to the float64 sums, which give the definition's finite values.
    /// </summary>
    [Fact]
    public void Columns_whose_other_values_are_zeros_and_one_tiny_value_give_the_definitions_finite_sums()
    {
        const int k = 5, p = 24;
        var g = new float[k, p];
        for (int c = 0; c < p; c++)
        {
            float[] column = (c % 3) switch
            {
                0 => [0f, 0f, -4.417615E-26f, -3.691999E-05f, 0f],
                1 => [0f, -0.0035044574f, 0f, -5.5633903E-25f, 0f],
                _ => [0.3f + 0.01f * c, -0.2f, 0.1f, 0.05f * c, -0.4f],
            };
            for (int i = 0; i < k; i++) g[i, c] = column[i];
        }

        using var tensor = torch.tensor(g);
        var sums = new double[3 + 2 * k];
        GsnrKernel.Accumulate(tensor, 0, p, 0, sums);
        var expected = Reference(g, 0, p, 0);
        for (int i = 0; i < sums.Length; i++)
        {
            Assert.True(double.IsFinite(sums[i]), $"sum {i} is {sums[i]}");
            bool isCount = i is 1 or 2 || i >= 3 + k;
            double tolerance = isCount ? 0 : 1e-5 * Math.Max(1, Math.Abs(expected[i]));
            Assert.True(Math.Abs(sums[i] - expected[i]) <= tolerance, $"sum {i}: expected {expected[i]}, got {sums[i]}");
        }
    }
}

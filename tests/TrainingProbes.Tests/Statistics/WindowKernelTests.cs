using TrainingProbes.Capture;
using TrainingProbes.Statistics;
using TrainingProbes.Tests.IndicatorsTests;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The managed window pass (Gram matrices of the three geometries, GSNR sums) and the managed Fisher fold against
/// plain float64 loops over the same float32 values, on the edge cases of float32: squares that overflow (1e20) or
/// are subnormal (1e-25), constant and zero columns, P not a multiple of the vector width, ranges starting mid-vector.
/// </summary>
public sealed class WindowKernelTests
{
    private const double Floor = 0.3, Bias = 1.7;
    private const float Eta = 0.01f;

    /// <summary>Columns of several kinds, scaled by <paramref name="scale"/>.</summary>
    private static float[,] Gradients(int k, int p, float scale, int seed)
    {
        var random = new Random(seed);
        var g = new float[k, p];
        for (int c = 0; c < p; c++)
        {
            int kind = c % 9;
            for (int i = 0; i < k; i++)
                g[i, c] = scale * kind switch
                {
                    0 => 0f,                                               // a dead unit
                    1 => 0.25f,                                            // constant
                    2 => i == 0 ? 3f : 0f,                                 // one nonzero minibatch
                    3 => i % 2 == 0 ? 1f : MathF.BitIncrement(1f),         // one ulp apart
                    4 => i == k - 1 ? 40f : 1f + 0.01f * (float)random.NextDouble(),   // an outlier
                    _ => (float)(random.NextDouble() * 2 - 1 + 0.3),       // noise with a signal
                };
        }

        return g;
    }

    private static double FisherD(double f) => f > 0 ? (float)(1.0 / Math.Sqrt(Math.Max(f, Floor) * Bias)) : 0;

    private static double AdaptiveD(float theta) => MathF.Abs(theta) + Eta;

    /// <summary>The Gram matrix of D g (D g rounded to float32, as the tensor path computes it), in float64.</summary>
    private static double[] ReferenceGram(float[,] g, long start, long count, Func<int, double> d)
    {
        int k = g.GetLength(0);
        var gram = new double[k * k];
        for (long c = start; c < start + count; c++)
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    gram[i * k + j] += (double)(float)(g[i, c] * d((int)c)) * (float)(g[j, c] * d((int)c));
        return gram;
    }

    private static double[] ReferenceGsnr(float[,] g, long start, long count) =>
        GsnrReference.Sums(g, start, count, epsilon: 0);

    private static void AssertGram(double[] expected, ReadOnlySpan<double> actual, int k, string what)
    {
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                // Each entry on the scale of its Cauchy-Schwarz bound: float32 products summed a few hundred at a time.
                double bound = Math.Sqrt(expected[i * k + i] * expected[j * k + j]);
                Assert.True(Math.Abs(expected[i * k + j] - actual[i * k + j]) <= 1e-5 * bound,
                    $"{what} [{i},{j}]: expected {expected[i * k + j]}, got {actual[i * k + j]}");
            }
    }

    [Theory]
    [InlineData(2, 37, 0, 37, 1f)]
    [InlineData(3, 203, 5, 190, 1f)]
    [InlineData(8, 1037, 3, 1030, 1f)]
    [InlineData(8, 5000, 1, 4998, 1e20f)]
    [InlineData(8, 2000, 7, 1990, 1e-25f)]
    [InlineData(5, 3001, 13, 2900, 3e-3f)]
    [InlineData(32, 777, 9, 700, 1f)]
    public void Grams_and_gsnr_sums_match_float64_loops(int k, int p, long start, long count, float scale)
    {
        var g = Gradients(k, p, scale, k * 31 + p);
        var random = new Random(p);
        var fisher = Enumerable.Range(0, p).Select(c => c % 11 == 0 ? 0.0 : c % 5 == 0 ? 1e-3 * random.NextDouble() : 2 * random.NextDouble()).ToArray();
        var theta = Enumerable.Range(0, p).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        using var gradients = torch.tensor(g);
        using var f = torch.tensor(fisher, ScalarType.Float64);
        using var t = torch.tensor(theta);
        var kernel = new WindowKernel(k, 0);
        var sums = new double[3 * k * k + 3 + 2 * k];
        kernel.Accumulate(gradients, start, count, f, Floor, Bias, t, Eta, 0, k * k, 2 * k * k, 3 * k * k, sums);

        AssertGram(ReferenceGram(g, start, count, _ => 1), sums.AsSpan(0, k * k), k, "euclidean");
        AssertGram(ReferenceGram(g, start, count, c => FisherD(fisher[c])), sums.AsSpan(k * k, k * k), k, "fisher");
        AssertGram(ReferenceGram(g, start, count, c => AdaptiveD(theta[c])), sums.AsSpan(2 * k * k, k * k), k, "adaptive");

        var expected = ReferenceGsnr(g, start, count);
        var actual = sums.AsSpan(3 * k * k);
        // Counts exactly; ratio sums to float32 rounding of each ratio.
        for (int i = 0; i < expected.Length; i++)
        {
            bool count_ = i is 1 or 2 || i >= 3 + k;
            double tolerance = count_ ? 0 : 1e-5 * Math.Max(1, Math.Abs(expected[i]));
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance, $"GSNR sum {i}: expected {expected[i]}, got {actual[i]}");
        }
    }

    [Theory]
    [InlineData(3)]
    [InlineData(8)]
    [InlineData(16)]
    public void Gsnr_of_sparse_columns_with_one_nonzero_minibatch_matches_float64(int k)
    {
        // Every other column has one nonzero value, in a different minibatch each time (a first layer's input pixel
        // that one minibatch of the K saw), the others noise: whole vectors the float32 path takes, sparse lanes
        // included. With that minibatch left out such a column has no noise (it counts for nothing); with any other
        // left out its ratio is 1 / (K - 1).
        const int P = 2_001;
        var random = new Random(k);
        var g = new float[k, P];
        for (int c = 0; c < P; c++)
            for (int i = 0; i < k; i++)
                g[i, c] = c % 2 == 0
                    ? (i == c / 2 % k ? (float)((random.NextDouble() + 0.1) * (random.Next(2) == 0 ? -1 : 1) * Math.Pow(10, random.Next(-6, 6))) : 0f)
                    : (float)(random.NextDouble() * 2 - 1 + 0.3);
        using var gradients = torch.tensor(g);
        var sums = new double[3 + 2 * k];
        GsnrKernel.Accumulate(gradients, 0, P, 0, sums);
        var expected = ReferenceGsnr(g, 0, P);
        for (int i = 0; i < expected.Length; i++)
        {
            bool count = i is 1 or 2 || i >= 3 + k;
            double tolerance = count ? 0 : 1e-5 * Math.Max(1, Math.Abs(expected[i]));
            Assert.True(Math.Abs(expected[i] - sums[i]) <= tolerance, $"K = {k}, GSNR sum {i}: expected {expected[i]}, got {sums[i]}");
        }
    }

    [Fact]
    public void Gsnr_on_pure_noise_takes_the_float32_path_and_matches_float64()
    {
        // Mostly fast-path columns: the float32 ratios summed 32 vectors at a time, against float64.
        const int K = 8, P = 20_003;
        var random = new Random(3);
        var g = new float[K, P];
        for (int i = 0; i < K; i++)
            for (int c = 0; c < P; c++) g[i, c] = (float)(random.NextDouble() - 0.45) * (1 + c % 3);
        using var gradients = torch.tensor(g);
        var sums = new double[3 + 2 * K];
        GsnrKernel.Accumulate(gradients, 1, P - 1, 0, sums);
        var expected = ReferenceGsnr(g, 1, P - 1);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - sums[i]) <= 1e-5 * Math.Max(1, Math.Abs(expected[i])), $"GSNR sum {i}: expected {expected[i]}, got {sums[i]}");
    }

    [Theory]
    [InlineData(1f)]
    [InlineData(1e20f)]
    [InlineData(1e-25f)]
    public void The_managed_fisher_fold_and_floor_match_float64_loops(float scale)
    {
        const int K = 3;
        const double Decay = 0.9, FloorFraction = 0.2;
        // Two parameter tensors of 13 and 7 values (not multiples of the vector width), one segment.
        var model = nn.Sequential(nn.Linear(13, 1, hasBias: false), nn.Linear(1, 7, hasBias: false));
        using var window = new GradientWindow(model, null, K);
        using var whitening = new Whitening(new ProbeOptions { FisherDecay = Decay, FisherFloor = FloorFraction }, Geometry.Fisher, window);
        Assert.True(whitening.Managed(0));
        var random = new Random(7);
        var fisher = new double[20];
        for (int w = 0; w < 3; w++)
        {
            var all = new float[K][];
            for (int i = 0; i < K; i++)
            {
                all[i] = Enumerable.Range(0, 20).Select(c => c % 6 == 0 ? 0f : scale * (float)(random.NextDouble() * 2 - 1)).ToArray();
                using var first = torch.tensor(all[i][..13]).view(1, 13);
                using var second = torch.tensor(all[i][13..]).view(7, 1);
                window.Store(i, [first, second]);
            }

            whitening.Update();
            for (int c = 0; c < 20; c++)
                fisher[c] = Decay * fisher[c] + (1 - Decay) * Enumerable.Range(0, K).Average(i => (double)all[i][c] * all[i][c]);
        }

        var state = whitening.StateTensors;
        var f = state[0].data<double>().ToArray();
        var floor = state[1].data<double>().ToArray();
        for (int c = 0; c < 20; c++)
        {
            Close.Assert(fisher[c], f[c], 1e-12, $"F[{c}]");
            double expectedFloor = FloorFraction * (c < 13 ? fisher[..13].Average() : fisher[13..].Average());
            Close.Assert(expectedFloor, floor[c], 1e-12, $"floor[{c}]");
        }
    }
}

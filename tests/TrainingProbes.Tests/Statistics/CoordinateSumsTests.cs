using TorchSharp;
using TrainingProbes.Statistics;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The tensor path (<see cref="CoordinateSums"/>, for gradients the managed kernel cannot read: another device, float64,
/// half-precision storage) against the float64 definition (<see cref="CoordinateReference"/>) on the same values: the
/// Gram matrices of the three geometries, the GSNR sums, the fold of F and its sum, in float64 and float32, on the
/// edge cases of <see cref="TestColumns"/>. Its GSNR sums and F are float64 whatever the input, so they match to
/// rounding; its float32 Grams are float32 matrix products.
/// </summary>
public sealed class CoordinateSumsTests
{
    private const double Decay = 0.9, Bias = 1.7, Eta = 1.0 / 64;
    private static readonly Geometry[] AllGeometries = [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive];

    private sealed class Read
    {
        public required double[] Sums;
        public required double[] Fisher;
        public required double FisherSum;
    }

    /// <summary>Columns [start, start + count) of <paramref name="g"/> as one [K, count] block of <paramref name="dtype"/>.</summary>
    private static Read Run(double[,] g, long start, long count, ScalarType dtype, double[] fisher, double[] theta, double floor,
        ScalarType stored, double epsilon = 0, Geometry[]? geometries = null)
    {
        using var scope = torch.NewDisposeScope();
        int k = g.GetLength(0);
        var layout = new CoordinateSums.Layout(k, geometries ?? AllGeometries);
        var all = torch.tensor(g, ScalarType.Float64).to(dtype);
        var f = torch.tensor(fisher, ScalarType.Float64);
        var t = torch.tensor(theta, ScalarType.Float64).to(dtype);
        var sums = torch.zeros(layout.Length, ScalarType.Float64);
        var state = new CoordinateSums.BlockState(f.narrow(0, start, count), Decay, floor, Bias, t.narrow(0, start, count), Eta, stored);
        double fisherSum;
        using (torch.no_grad())
            fisherSum = CoordinateSums.Accumulate(all.narrow(1, start, count), state, layout, epsilon, sums).item<double>();
        return new Read { Sums = sums.data<double>().ToArray(), Fisher = f.data<double>().ToArray(), FisherSum = fisherSum };
    }


    [Theory]
    [InlineData(ScalarType.Float64, 2, 301, 0, 301, 1.0)]
    [InlineData(ScalarType.Float64, 5, 1001, 13, 900, 3e-3)]
    [InlineData(ScalarType.Float64, 8, 1037, 3, 1030, 1e20)]
    [InlineData(ScalarType.Float64, 8, 1037, 3, 1030, 1e-25)]
    [InlineData(ScalarType.Float64, 32, 203, 9, 190, 1.0)]
    [InlineData(ScalarType.Float32, 3, 603, 5, 590, 1.0)]
    [InlineData(ScalarType.Float32, 8, 1037, 3, 1030, 1.0)]
    [InlineData(ScalarType.Float32, 8, 1037, 3, 1030, 1e20)]
    [InlineData(ScalarType.Float32, 8, 1037, 3, 1030, 1e-25)]
    [InlineData(ScalarType.Float32, 16, 777, 0, 777, 1.0)]
    public void Grams_gsnr_sums_and_the_fold_match_the_definition(ScalarType dtype, int k, int p, long start, long count, double scale)
    {
        bool float32 = dtype == ScalarType.Float32;
        var g = TestColumns.Mixed(k, p, scale, k * 17 + p, float32);
        var random = new Random(p);
        var fisher = Enumerable.Range(0, p).Select(c => scale * scale * (c % 11 == 0 ? 0 : c % 5 == 0 ? 1e-3 * random.NextDouble() : 2 * random.NextDouble())).ToArray();
        var theta = Enumerable.Range(0, p).Select(_ => float32 ? (float)(random.NextDouble() * 2 - 1) : random.NextDouble() * 2 - 1).ToArray();
        double floor = 0.3 * scale * scale;
        var read = Run(g, start, count, dtype, fisher, theta, floor, dtype);

        var (expectedF, expectedSum) = CoordinateReference.Fold(g, start, count, fisher, Decay);
        for (int c = 0; c < p; c++) Close.Assert(expectedF[c], read.Fisher[c], 1e-12, $"F[{c}]");
        Close.Assert(expectedSum, read.FisherSum, 1e-12, "sum of the new F");

        var layout = new CoordinateSums.Layout(k, AllGeometries);
        double gramTolerance = float32 ? 1e-5 : 1e-9;
        foreach (var (index, d) in new (int, Func<long, double>?)[]
                 {
                     (0, null),
                     (1, c => CoordinateReference.FisherD(expectedF[c], floor, Bias, float32)),
                     (2, c => CoordinateReference.AdaptiveD(theta[c], Eta, float32)),
                 })
        {
            var expected = CoordinateReference.Gram(g, start, count, d, float32);
            var actual = read.Sums.AsSpan(layout.Gram(index), k * k);
            CoordinateReference.AssertGram(expected, actual, k, gramTolerance, AllGeometries[index].ToString());
        }

        var stored = float32 ? CoordinateReference.Float32Epsilon : CoordinateReference.Float64Epsilon;
        CoordinateReference.AssertGsnr(CoordinateReference.Gsnr(g, start, count, stored, 0), read.Sums.AsSpan(layout.Gsnr), k, 1e-9, "gsnr");
    }

    /// <summary>
    /// float32 gradients whose squares overflow (1e20) or underflow (1e-25) float32: the GSNR sums and F, formed in
    /// float64, are still the definition's, and so is the fisher Gram of the whitened values, which are of order 1.
    /// </summary>
    [Theory]
    [InlineData(1e20)]
    [InlineData(1e-25)]
    public void Float32_gsnr_sums_and_the_fold_are_the_definitions_at_any_scale(double scale)
    {
        const int K = 8, P = 1037;
        var g = TestColumns.Mixed(K, P, scale, 5, float32: true);
        var random = new Random(5);
        var fisher = Enumerable.Range(0, P).Select(c => scale * scale * (c % 11 == 0 ? 0 : 2 * random.NextDouble())).ToArray();
        var theta = new double[P];
        double floor = 0.3 * scale * scale;
        var read = Run(g, 0, P, ScalarType.Float32, fisher, theta, floor, ScalarType.Float32, geometries: [Geometry.Fisher]);

        var (expectedF, expectedSum) = CoordinateReference.Fold(g, 0, P, fisher, Decay);
        for (int c = 0; c < P; c++) Close.Assert(expectedF[c], read.Fisher[c], 1e-12, $"F[{c}]");
        Close.Assert(expectedSum, read.FisherSum, 1e-12, "sum of the new F");
        var layout = new CoordinateSums.Layout(K, [Geometry.Fisher]);
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 0, P, c => CoordinateReference.FisherD(expectedF[c], floor, Bias, true), true),
            read.Sums.AsSpan(layout.Gram(0), K * K), K, 1e-5, "fisher");
        CoordinateReference.AssertGsnr(CoordinateReference.Gsnr(g, 0, P, CoordinateReference.Float32Epsilon, 0), read.Sums.AsSpan(layout.Gsnr), K, 1e-9, "gsnr");
    }

    /// <summary>A nonzero epsilon is added to each variance, in R and in the influences' w.</summary>
    [Theory]
    [InlineData(ScalarType.Float64, 1e-3)]
    [InlineData(ScalarType.Float32, 1e-6)]
    public void Epsilon_is_added_to_every_variance(ScalarType dtype, double epsilon)
    {
        const int K = 16, P = 513;
        var g = TestColumns.Mixed(K, P, 1, 9, dtype == ScalarType.Float32);
        var read = Run(g, 0, P, dtype, new double[P], new double[P], 0, dtype, epsilon, geometries: []);
        var expected = CoordinateReference.Gsnr(g, 0, P, dtype == ScalarType.Float32 ? CoordinateReference.Float32Epsilon : CoordinateReference.Float64Epsilon, epsilon);
        CoordinateReference.AssertGsnr(expected, read.Sums, K, 1e-9, "with epsilon");
        var without = CoordinateReference.Gsnr(g, 0, P, CoordinateReference.Float32Epsilon, 0);
        Assert.True(Math.Abs(without.Sums[0] - read.Sums[0]) > 1e-3 * without.Sums[0], "epsilon changed nothing");
        Assert.Equal(0.0, read.FisherSum);   // no fisher geometry: no F
    }

    /// <summary>
    /// The stored dtype's rounding decides which coordinates vary: float64 values one float64 ulp apart do not;
    /// bfloat16 storage (read as float32) needs a spread of 8 bfloat16 roundings, which float32's would not.
    /// </summary>
    [Fact]
    public void The_stored_dtypes_rounding_decides_which_columns_vary()
    {
        const int K = 8, P = 2_001;
        var random = new Random(13);
        var g = new double[K, P];
        for (int c = 0; c < P; c++)
        {
            double spread = Math.Pow(2, -random.Next(-1, 9));
            for (int i = 0; i < K; i++)
            {
                uint bits = BitConverter.SingleToUInt32Bits((float)(1.5 + spread * (random.NextDouble() - 0.5)));
                g[i, c] = BitConverter.UInt32BitsToSingle((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000);
            }
        }

        var read = Run(g, 0, P, ScalarType.Float32, new double[P], new double[P], 0, ScalarType.BFloat16, geometries: []);
        var expected = CoordinateReference.Gsnr(g, 0, P, CoordinateReference.BFloat16Epsilon, 0);
        Assert.InRange(expected.Sums[1], 0.1 * P, 0.9 * P);
        CoordinateReference.AssertGsnr(expected, read.Sums, K, 1e-9, "bfloat16");

        var ulps = new double[K, 3];
        for (int i = 0; i < K; i++)
        {
            ulps[i, 0] = i % 2 == 0 ? 1.0 : Math.BitIncrement(1.0);
            ulps[i, 1] = i % 2 == 0 ? -3.0 : Math.BitDecrement(-3.0);
            ulps[i, 2] = 1 + 1e-10 * i;   // a spread far above float64's rounding
        }

        var float64 = Run(ulps, 0, 3, ScalarType.Float64, new double[3], new double[3], 0, ScalarType.Float64, geometries: []);
        Assert.Equal(1.0, float64.Sums[1]);
        Assert.Equal(3.0, float64.Sums[2]);
    }

    /// <summary>The first window's floor reads the block's sum of squares, in float64.</summary>
    [Theory]
    [InlineData(ScalarType.Float32, 1e20)]
    [InlineData(ScalarType.Float32, 1e-25)]
    [InlineData(ScalarType.Float64, 1.0)]
    public void The_sum_of_squares_is_the_float64_sum(ScalarType dtype, double scale)
    {
        var g = TestColumns.Mixed(5, 203, scale, 2, dtype == ScalarType.Float32);
        using var scope = torch.NewDisposeScope();
        double actual = CoordinateSums.SumOfSquares(torch.tensor(g, ScalarType.Float64).to(dtype)).item<double>();
        Close.Assert(CoordinateReference.SumOfSquares(g, 0, 203), actual, 1e-12, "sum of squares");
    }

    [Fact]
    public void A_whitened_geometry_needs_its_state()
    {
        var g = TestColumns.Mixed(4, 17, 1, 2, float32: true);
        Assert.Contains("F", Assert.Throws<InvalidOperationException>(() =>
        {
            using var scope = torch.NewDisposeScope();
            var layout = new CoordinateSums.Layout(4, [Geometry.Fisher]);
            CoordinateSums.Accumulate(torch.tensor(g, ScalarType.Float32), new CoordinateSums.BlockState(null, 0.9, 0, 1, null, 0, ScalarType.Float32),
                layout, 0, torch.zeros(layout.Length, ScalarType.Float64));
        }).Message);
        Assert.Contains("theta", Assert.Throws<InvalidOperationException>(() =>
        {
            using var scope = torch.NewDisposeScope();
            var layout = new CoordinateSums.Layout(4, [Geometry.Adaptive]);
            CoordinateSums.Accumulate(torch.tensor(g, ScalarType.Float32), new CoordinateSums.BlockState(null, 0.9, 0, 1, null, 0, ScalarType.Float32),
                layout, 0, torch.zeros(layout.Length, ScalarType.Float64));
        }).Message);
    }

    /// <summary>Without a floor a coordinate that never had a gradient (F = 0) has D = 0 and adds nothing to the fisher Gram.</summary>
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float64)]
    public void Without_a_floor_a_coordinate_with_F_zero_adds_nothing_to_the_fisher_gram(ScalarType dtype)
    {
        const int K = 8, P = 67;
        bool float32 = dtype == ScalarType.Float32;
        var g = TestColumns.Mixed(K, P, 1, 8, float32);   // columns 0, 10, 20... are dead
        var fisher = new double[P];
        var read = Run(g, 0, P, dtype, fisher, new double[P], 0, dtype, geometries: [Geometry.Fisher]);
        var (expectedF, _) = CoordinateReference.Fold(g, 0, P, fisher, Decay);
        Assert.Equal(0.0, read.Fisher[0]);
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 0, P, c => CoordinateReference.FisherD(expectedF[c], 0, Bias, float32), float32),
            read.Sums.AsSpan(0, K * K), K, float32 ? 1e-5 : 1e-9, "fisher without a floor");
    }
}

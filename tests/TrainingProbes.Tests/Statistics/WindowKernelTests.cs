using TrainingProbes.Statistics;
using TrainingProbes.Tests.IndicatorsTests;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The managed float32 pass (<see cref="WindowKernel"/>) against the float64 definition (<see cref="CoordinateReference"/>)
/// on the same float32 values: the Gram matrices of the three geometries, the GSNR sums and the fold of F, on float32's
/// edge cases (squares that overflow at 1e20 or underflow at 1e-25, dead and constant columns, one nonzero minibatch,
/// values one ulp apart, outliers), K from 2 to 32, ranges that start mid-vector and blocks whose width is not a
/// multiple of 8. U and N must match exactly; R and the influences to 1e-5 of their scale; Grams to 1e-5 of their
/// Cauchy-Schwarz bound, the fisher one with D from a float32 rsqrt of about 2 ulps; F to float32 rounding of the
/// window's mean square on the float32 path, to 1e-12 on the float64 one.
/// </summary>
public sealed class WindowKernelTests
{
    private const double Decay = 0.9, Bias = 1.7;
    private const float Eta = 1f / 64;

    /// <summary>A Gram entry's share of its bound that D's rounding may move: twice (h_i and h_j) 2 ulps of rsqrt plus the rounding of h.</summary>
    private static readonly double FisherGramTolerance = 1e-5 + 2 * (2 * CoordinateReference.Float32Epsilon + CoordinateReference.Float32Epsilon / 2);

    /// <summary>The float32 path forms a window's mean square <c>SS / K + m^2</c> in float32 (observed up to 2.2e-7 of it).</summary>
    private const double FastFisherTolerance = 1e-6;

    private static readonly Geometry[] AllGeometries = [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive];

    /// <summary>What a read gave: the layout's sums, F after it and the sum of the new F the kernel returned.</summary>
    private sealed class Read
    {
        public required double[] Sums;
        public required double[] Fisher;
        public required double FisherSum;
    }

    /// <summary>
    /// A read of columns [start, start + count) of <paramref name="g"/>, in blocks split at <paramref name="splits"/>
    /// (offsets from start), each block's state at its first column.
    /// </summary>
    private static Read Run(double[,] g, long start, long count, long[] splits, double[]? fisher, float[]? theta, double floor,
        double storedEpsilon, Geometry[] geometries, double epsilon = 0)
    {
        int k = g.GetLength(0), p = g.GetLength(1);
        var layout = new CoordinateSums.Layout(k, geometries);
        var kernel = new WindowKernel(layout, epsilon);
        var block = new PinnedBlock(g);
        var f = new Pinned<double>(p);
        fisher?.CopyTo(f.Values, 0);
        var t = new Pinned<float>(p);
        theta?.CopyTo(t.Values, 0);
        var sums = new double[layout.Length];
        double fisherSum = 0;
        long[] bounds = [start, .. splits.Select(s => start + s), start + count];
        for (int b = 0; b + 1 < bounds.Length; b++)
        {
            var state = KernelCalls.State(fisher is null ? 0 : f.Address(bounds[b]), Decay, floor, Bias,
                theta is null ? 0 : t.Address(bounds[b]), Eta, storedEpsilon);
            fisherSum += KernelCalls.Accumulate(kernel, block.Rows(bounds[b]), bounds[b + 1] - bounds[b], state, sums);
        }

        return new Read { Sums = sums, Fisher = f.Values, FisherSum = fisherSum };
    }

    /// <summary>F before the window: zero (a coordinate never seen), small (the floor binds) or of the gradients' size.</summary>
    private static double[] PreviousFisher(int p, double scale, Random random) =>
        Enumerable.Range(0, p).Select(c => scale * scale * (c % 11 == 0 ? 0 : c % 5 == 0 ? 1e-3 * random.NextDouble() : 2 * random.NextDouble())).ToArray();


    [Theory]
    [InlineData(2, 3101, 0, 3101, 1.0)]
    [InlineData(3, 2203, 5, 2190, 1.0)]
    [InlineData(5, 3001, 13, 2900, 3e-3)]
    [InlineData(8, 1037, 3, 1030, 1.0)]
    [InlineData(8, 5000, 1, 4998, 1e20)]
    [InlineData(8, 2000, 7, 1990, 1e-25)]
    [InlineData(8, 13, 2, 5, 1.0)]
    [InlineData(16, 1203, 0, 1203, 1.0)]
    [InlineData(32, 777, 9, 700, 1.0)]
    [InlineData(32, 777, 9, 700, 1e20)]
    public void Grams_gsnr_sums_and_the_fold_match_the_definition(int k, int p, long start, long count, double scale) =>
        MatchesTheDefinition(k, p, start, count, scale, AllGeometries);

    /// <summary>K = 2, 3 and 5 (not multiples of the tiles' 4 rows) with the whitened geometries only.</summary>
    [Theory]
    [InlineData(2, 3101, 0, 3101, 1.0)]
    [InlineData(3, 2203, 5, 2190, 1.0)]
    [InlineData(3, 2203, 5, 2190, 1e-25)]
    [InlineData(5, 3001, 13, 2900, 3e-3)]
    [InlineData(5, 3001, 13, 2900, 1e20)]
    public void Whitened_grams_gsnr_sums_and_the_fold_match_the_definition_for_any_k(int k, int p, long start, long count, double scale) =>
        MatchesTheDefinition(k, p, start, count, scale, [Geometry.Fisher, Geometry.Adaptive]);

    private static void MatchesTheDefinition(int k, int p, long start, long count, double scale, Geometry[] geometries)
    {
        var g = TestColumns.Mixed(k, p, scale, k * 31 + p, float32: true);
        var random = new Random(p);
        var fisher = PreviousFisher(p, scale, random);
        var theta = Enumerable.Range(0, p).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        double floor = 0.3 * scale * scale;
        // Three blocks: 3 columns (fewer than a vector), an odd number, the rest; each starts where the last ended.
        var read = Run(g, start, count, count > 8 ? [3, count / 3 | 1] : [], fisher, theta, floor, CoordinateReference.Float32Epsilon, geometries);

        var (expectedF, expectedSum) = CoordinateReference.Fold(g, start, count, fisher, Decay);
        for (int c = 0; c < p; c++) Close.Assert(expectedF[c], read.Fisher[c], FastFisherTolerance, $"F[{c}]");
        Close.Assert(expectedSum, read.FisherSum, FastFisherTolerance, "sum of the new F");

        var layout = new CoordinateSums.Layout(k, geometries);
        for (int index = 0; index < geometries.Length; index++)
        {
            var (d, tolerance) = geometries[index] switch
            {
                Geometry.Fisher => ((Func<long, double>?)(c => CoordinateReference.FisherD(expectedF[c], floor, Bias, float32: true)), FisherGramTolerance),
                Geometry.Adaptive => (c => CoordinateReference.AdaptiveD(theta[c], Eta, float32: true), 1e-5),
                _ => (null, 1e-5),
            };
            CoordinateReference.AssertGram(CoordinateReference.Gram(g, start, count, d, float32: true), read.Sums.AsSpan(layout.Gram(index), k * k), k,
                tolerance, geometries[index].ToString());
        }

        CoordinateReference.AssertGsnr(CoordinateReference.Gsnr(g, start, count, CoordinateReference.Float32Epsilon, 0), read.Sums.AsSpan(layout.Gsnr), k, 1e-5, "gsnr");
    }

    /// <summary>
    /// A nonzero epsilon sends every column through the float64 path: the GSNR sums and F are then the definition's to
    /// float64 rounding.
    /// </summary>
    [Theory]
    [InlineData(8, 1e-3)]
    [InlineData(16, 1e-6)]
    public void With_epsilon_every_column_takes_the_float64_path(int k, double epsilon)
    {
        const int P = 1013;
        var g = TestColumns.Mixed(k, P, 1, k, float32: true);
        var fisher = PreviousFisher(P, 1, new Random(k));
        var read = Run(g, 0, P, [], fisher, null, 0.3, CoordinateReference.Float32Epsilon, [Geometry.Euclidean, Geometry.Fisher], epsilon);

        var (expectedF, expectedSum) = CoordinateReference.Fold(g, 0, P, fisher, Decay);
        for (int c = 0; c < P; c++) Close.Assert(expectedF[c], read.Fisher[c], 1e-12, $"F[{c}]");
        Close.Assert(expectedSum, read.FisherSum, 1e-12, "sum of the new F");
        var layout = new CoordinateSums.Layout(k, [Geometry.Euclidean, Geometry.Fisher]);
        CoordinateReference.AssertGsnr(CoordinateReference.Gsnr(g, 0, P, CoordinateReference.Float32Epsilon, epsilon), read.Sums.AsSpan(layout.Gsnr), k, 1e-12, "gsnr");
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 0, P, c => CoordinateReference.FisherD(expectedF[c], 0.3, Bias, float32: true), float32: true),
            read.Sums.AsSpan(layout.Gram(1), k * k), k, FisherGramTolerance, "fisher");
    }

    /// <summary>
    /// Every other column has one nonzero value, in a different minibatch each time (a first layer's input pixel that one
    /// minibatch of the K saw), magnitudes from 1e-6 to 1e6, the others noise: whole vectors the float32 path takes,
    /// sparse lanes included.
    /// </summary>
    [Theory]
    [InlineData(3)]
    [InlineData(8)]
    [InlineData(16)]
    public void Gsnr_of_sparse_columns_with_one_nonzero_minibatch_matches_the_definition(int k)
    {
        const int P = 2_001;
        var random = new Random(k);
        var g = new double[k, P];
        for (int c = 0; c < P; c++)
            for (int i = 0; i < k; i++)
                g[i, c] = c % 2 == 0
                    ? (i == c / 2 % k ? (float)((random.NextDouble() + 0.1) * (random.Next(2) == 0 ? -1 : 1) * Math.Pow(10, random.Next(-6, 6))) : 0f)
                    : (float)(random.NextDouble() * 2 - 1 + 0.3);
        var read = Run(g, 0, P, [], null, null, 0, CoordinateReference.Float32Epsilon, []);
        var expected = CoordinateReference.Gsnr(g, 0, P, CoordinateReference.Float32Epsilon, 0);
        Assert.Equal(P, expected.Sums[1]);   // every column varies: the sparse ones count
        CoordinateReference.AssertGsnr(expected, read.Sums, k, 1e-5, $"K = {k}");
    }

    /// <summary>Mostly float32-path columns: the float32 ratios and influences summed 32 vectors at a time, against float64.</summary>
    [Fact]
    public void Gsnr_of_pure_noise_takes_the_float32_path_and_matches_the_definition()
    {
        const int K = 8, P = 20_003;
        var random = new Random(3);
        var g = new double[K, P];
        for (int i = 0; i < K; i++)
            for (int c = 0; c < P; c++) g[i, c] = (float)((random.NextDouble() - 0.45) * (1 + c % 3));
        var read = Run(g, 1, P - 1, [], null, null, 0, CoordinateReference.Float32Epsilon, [Geometry.Euclidean]);
        var layout = new CoordinateSums.Layout(K, [Geometry.Euclidean]);
        CoordinateReference.AssertGsnr(CoordinateReference.Gsnr(g, 1, P - 1, CoordinateReference.Float32Epsilon, 0), read.Sums.AsSpan(layout.Gsnr), K, 1e-5, "noise");
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 1, P - 1, null, float32: true), read.Sums.AsSpan(0, K * K), K, 1e-5, "euclidean");
    }

    /// <summary>
    /// Columns of a fixed-point window seen in an end-to-end run: one minibatch dominates, the other K - 1 values are
    /// zeros beside one tiny value (1e-26), so that the float32 squares of the rest are subnormal. The sums are the
    /// definition's, and finite.
    /// </summary>
    [Fact]
    public void Columns_whose_other_values_are_zeros_and_one_tiny_value_give_the_definitions_finite_sums()
    {
        const int K = 5, P = 24;
        var g = new double[K, P];
        for (int c = 0; c < P; c++)
        {
            float[] column = (c % 3) switch
            {
                0 => [0f, 0f, -4.417615E-26f, -3.691999E-05f, 0f],
                1 => [0f, -0.0035044574f, 0f, -5.5633903E-25f, 0f],
                _ => [0.3f + 0.01f * c, -0.2f, 0.1f, 0.05f * c, -0.4f],
            };
            for (int i = 0; i < K; i++) g[i, c] = column[i];
        }

        var read = Run(g, 0, P, [], null, null, 0, CoordinateReference.Float32Epsilon, []);
        Assert.All(read.Sums, s => Assert.True(double.IsFinite(s)));
        CoordinateReference.AssertGsnr(CoordinateReference.Gsnr(g, 0, P, CoordinateReference.Float32Epsilon, 0), read.Sums, K, 1e-5, "tiny");
    }

    /// <summary>
    /// Gradients stored in bfloat16 (rounded to 8 bits, read as float32): a coordinate varies only beyond 8 bfloat16
    /// roundings of its mean, so most columns of values a few bfloat16 roundings apart count as constant; the counts
    /// are the definition's, exactly.
    /// </summary>
    [Fact]
    public void The_stored_dtypes_rounding_decides_which_columns_vary()
    {
        const int K = 8, P = 3_001;
        var random = new Random(11);
        var g = new double[K, P];
        for (int c = 0; c < P; c++)
        {
            double spread = Math.Pow(2, -random.Next(-1, 9));
            for (int i = 0; i < K; i++)
                g[i, c] = BFloat16(1.5 + spread * (random.NextDouble() - 0.5));
        }

        var read = Run(g, 0, P, [], null, null, 0, CoordinateReference.BFloat16Epsilon, []);
        var expected = CoordinateReference.Gsnr(g, 0, P, CoordinateReference.BFloat16Epsilon, 0);
        Assert.InRange(expected.Sums[1], 0.1 * P, 0.9 * P);   // the threshold splits the columns
        CoordinateReference.AssertGsnr(expected, read.Sums, K, 1e-5, "bfloat16");
        var asFloat32 = CoordinateReference.Gsnr(g, 0, P, CoordinateReference.Float32Epsilon, 0);
        Assert.True(asFloat32.Sums[1] > expected.Sums[1], "float32's threshold would count more columns");
    }

    /// <summary>float32 rounded to bfloat16 (nearest even), as float32.</summary>
    private static double BFloat16(double value)
    {
        uint bits = BitConverter.SingleToUInt32Bits((float)value);
        bits = (bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000;
        return BitConverter.UInt32BitsToSingle(bits);
    }

    /// <summary>
    /// A NaN or an infinity in one gradient: that column adds nothing to R and U (it counts in N), and its F keeps its
    /// value (the window is not published, F must not carry the NaN); every other column is folded as usual.
    /// </summary>
    [Fact]
    public void A_non_finite_column_leaves_its_F_and_adds_nothing_to_R_and_U()
    {
        const int K = 8, P = 203;
        var g = TestColumns.Mixed(K, P, 1, 5, float32: true);
        g[3, 50] = double.NaN;
        g[0, 121] = double.PositiveInfinity;
        g[7, 122] = float.MaxValue;   // its square overflows float32, not float64: folded
        var fisher = PreviousFisher(P, 1, new Random(5));
        var read = Run(g, 0, P, [], fisher, null, 0.3, CoordinateReference.Float32Epsilon, [Geometry.Fisher]);

        foreach (int c in new[] { 50, 121 }) Assert.Equal(fisher[c], read.Fisher[c]);
        Assert.True(read.Fisher[122] > 1e74, "the largest float32 is folded");
        var (expectedF, expectedSum) = CoordinateReference.Fold(g, 0, P, fisher, Decay);
        for (int c = 0; c < P; c++) Close.Assert(expectedF[c], read.Fisher[c], FastFisherTolerance, $"F[{c}]");
        Close.Assert(expectedSum, read.FisherSum, FastFisherTolerance, "sum of the new F");
        var layout = new CoordinateSums.Layout(K, [Geometry.Fisher]);
        var (sums, _) = CoordinateReference.Gsnr(g, 0, P, CoordinateReference.Float32Epsilon, 0);
        var actual = read.Sums.AsSpan(layout.Gsnr);
        Assert.Equal(sums[1], actual[1]);
        Assert.Equal(P, actual[2]);
        Close.Assert(sums[0], actual[0], 1e-5, "R");
    }

    /// <summary>The first window's floor reads the sum of squares of the block's values, in float64 whatever their size.</summary>
    [Theory]
    [InlineData(3, 1.0)]
    [InlineData(8, 1e20)]
    [InlineData(16, 1e-25)]
    public void The_sum_of_squares_is_the_float64_sum(int k, double scale)
    {
        const int P = 1_003;
        var g = TestColumns.Mixed(k, P, scale, k, float32: true);
        var kernel = new WindowKernel(new CoordinateSums.Layout(k, [Geometry.Fisher]), 0);
        double actual = KernelCalls.SumOfSquares(kernel, new PinnedBlock(g).Rows(2), P - 3);
        Close.Assert(CoordinateReference.SumOfSquares(g, 2, P - 3), actual, 1e-12, "sum of squares");
    }

    /// <summary>Each geometry's Gram matrix lands at its offset of the layout, whatever the order; the whitened ones need their state.</summary>
    [Fact]
    public void The_sums_follow_the_layout_and_a_whitened_geometry_needs_its_state()
    {
        const int K = 4, P = 301;
        var g = TestColumns.Mixed(K, P, 1, 3, float32: true);
        var theta = Enumerable.Range(0, P).Select(c => (float)Math.Sin(c)).ToArray();
        var fisher = PreviousFisher(P, 1, new Random(3));
        Geometry[] order = [Geometry.Adaptive, Geometry.Euclidean, Geometry.Fisher];
        var read = Run(g, 0, P, [], fisher, theta, 0.3, CoordinateReference.Float32Epsilon, order);
        var (expectedF, _) = CoordinateReference.Fold(g, 0, P, fisher, Decay);
        var layout = new CoordinateSums.Layout(K, order);
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 0, P, c => CoordinateReference.AdaptiveD(theta[c], Eta, true), true), read.Sums.AsSpan(layout.Gram(0), K * K), K, 1e-5, "adaptive first");
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 0, P, null, true), read.Sums.AsSpan(layout.Gram(1), K * K), K, 1e-5, "euclidean second");
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 0, P, c => CoordinateReference.FisherD(expectedF[c], 0.3, Bias, true), true),
            read.Sums.AsSpan(layout.Gram(2), K * K), K, FisherGramTolerance, "fisher third");

        Assert.Contains("fisher", Assert.Throws<InvalidOperationException>(() => Run(g, 0, P, [], null, theta, 0, CoordinateReference.Float32Epsilon, order)).Message);
        Assert.Contains("theta", Assert.Throws<InvalidOperationException>(() => Run(g, 0, P, [], fisher, null, 0, CoordinateReference.Float32Epsilon, order)).Message);
    }


    /// <summary>Without a floor a coordinate that never had a gradient (F = 0) has D = 0 and adds nothing to the fisher Gram.</summary>
    [Fact]
    public void Without_a_floor_a_coordinate_with_F_zero_adds_nothing_to_the_fisher_gram()
    {
        const int K = 8, P = 67;
        var g = TestColumns.Mixed(K, P, 1, 8, float32: true);   // column 0, 10, 20... are dead
        var fisher = new double[P];
        var read = Run(g, 0, P, [], fisher, null, 0, CoordinateReference.Float32Epsilon, [Geometry.Fisher]);
        var (expectedF, _) = CoordinateReference.Fold(g, 0, P, fisher, Decay);
        Assert.Equal(0.0, read.Fisher[0]);
        CoordinateReference.AssertGram(CoordinateReference.Gram(g, 0, P, c => CoordinateReference.FisherD(expectedF[c], 0, Bias, true), true),
            read.Sums.AsSpan(0, K * K), K, FisherGramTolerance, "fisher without a floor");
    }
}

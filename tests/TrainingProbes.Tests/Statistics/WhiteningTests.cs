using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Statistics;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.StatisticsTests;

/// <summary>
/// The whitening D of each geometry, read straight from <see cref="Whitening"/>, against the formulas computed by hand
/// in double: fisher <c>D = 1/sqrt(max(F, floor) / (1 - decay^w))</c> (0 where <c>F &lt;= 0</c>), adaptive
/// <c>D = |theta| + eta</c>, euclidean none.
/// </summary>
public sealed class WhiteningTests
{
    private const int K = 3;
    private const double Decay = 0.9;

    // 0.weight [3, 4] and 0.bias [3] in float64 (segment 0), 1.weight [2, 3] and 1.bias [2] in float32 (segment 1).
    private static readonly long[][] Shapes = [[3, 4], [3], [2, 3], [2]];
    private static readonly int[] SegmentOf = [0, 0, 1, 1];
    private static readonly int[] Sizes = Shapes.Select(s => (int)s.Aggregate(1L, (a, b) => a * b)).ToArray();

    /// <summary>Two layers of different dtypes, so that the window has two segments.</summary>
    private static nn.Module Model()
    {
        torch.manual_seed(3);
        return nn.Sequential(nn.Linear(4, 3).to(ScalarType.Float64), nn.Linear(3, 2));
    }

    /// <summary>
    /// Gradients per window, slot and parameter tensor. Coordinate 0 of 0.weight and of 1.bias is zero in every window
    /// (F = 0); coordinate 1 of 0.weight and coordinate 2 of 1.weight are tiny (the floor binds there). Float32 tensors
    /// hold float32 values, so that the double reference starts from exactly what the window holds.
    /// </summary>
    private static double[][][][] Gradients(int windows, int seed)
    {
        var random = new Random(seed);
        var result = new double[windows][][][];
        for (int w = 0; w < windows; w++)
        {
            result[w] = new double[K][][];
            for (int i = 0; i < K; i++)
            {
                result[w][i] = new double[Shapes.Length][];
                for (int p = 0; p < Shapes.Length; p++)
                {
                    var values = new double[Sizes[p]];
                    for (int c = 0; c < values.Length; c++)
                    {
                        double scale = (p, c) switch { (0, 0) or (3, 0) => 0, (0, 1) or (2, 2) => 1e-4, _ => 1.0 + p };
                        double v = scale * (2 * random.NextDouble() - 1);
                        values[c] = SegmentOf[p] == 1 ? (float)v : v;
                    }

                    result[w][i][p] = values;
                }
            }
        }

        return result;
    }

    private static void Store(GradientWindow window, double[][][] gradients)
    {
        using var scope = torch.NewDisposeScope();
        for (int i = 0; i < K; i++)
            window.Store(i, Enumerable.Range(0, Shapes.Length)
                .Select(p => (Tensor?)torch.tensor(gradients[i][p], Shapes[p], SegmentOf[p] == 0 ? ScalarType.Float64 : ScalarType.Float32))
                .ToArray());
    }

    /// <summary>D per parameter tensor after the given windows, by hand in double.</summary>
    private static double[][] ReferenceFisher(double[][][][] windows, double decay, double floorFraction)
    {
        var d = new double[Shapes.Length][];
        for (int p = 0; p < Shapes.Length; p++)
        {
            var f = new double[Sizes[p]];
            foreach (var window in windows)
                for (int c = 0; c < f.Length; c++)
                {
                    double meanSquare = 0;
                    for (int i = 0; i < K; i++) meanSquare += window[i][p][c] * window[i][p][c] / K;
                    f[c] = decay * f[c] + (1 - decay) * meanSquare;
                }

            double floor = floorFraction * f.Average();
            double correction = 1 - Math.Pow(decay, windows.Length);
            d[p] = f.Select(v => v > 0 ? 1 / Math.Sqrt(Math.Max(v, floor) / correction) : 0).ToArray();
        }

        return d;
    }

    /// <summary>The reference D of a segment, its tensors one after the other.</summary>
    private static double[] OfSegment(double[][] perTensor, int segment) =>
        Enumerable.Range(0, Shapes.Length).Where(p => SegmentOf[p] == segment).SelectMany(p => perTensor[p]).ToArray();

    private static double[] Host(Tensor d) => d.to(ScalarType.Float64).data<double>().ToArray();

    private static void AssertClose(double[] expected, double[] actual, double relative, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int c = 0; c < expected.Length; c++)
            Close.Assert(expected[c], actual[c], relative, $"{what}, coordinate {c}");
    }

    /// <summary>Runs <paramref name="windows"/> through a whitening of the given options; returns it and its window.</summary>
    private static (Whitening Whitening, GradientWindow Window) Updated(ProbeOptions options, Geometry geometries, double[][][][] windows)
    {
        var window = new GradientWindow(Model(), null, K);
        var whitening = new Whitening(options, geometries, window);
        foreach (var gradients in windows)
        {
            Store(window, gradients);
            whitening.Update();
        }

        return (whitening, window);
    }

    [Fact]
    public void Fisher_D_with_the_floor_binding_matches_the_double_formula_in_each_segment()
    {
        const double Floor = 1e-2;
        var windows = Gradients(2, 5);
        var (whitening, window) = Updated(new ProbeOptions { FisherDecay = Decay, FisherFloor = Floor }, Geometry.All, windows);
        using var _ = window;
        using var __ = whitening;
        using var scope = torch.NewDisposeScope();

        var expected = ReferenceFisher(windows, Decay, Floor);
        var unfloored = ReferenceFisher(windows, Decay, 0);
        Assert.Equal(2, whitening.Updates);
        for (int s = 0; s < 2; s++)
        {
            var d = whitening.Segment(Geometry.Fisher, s)!;
            Assert.Equal(s == 0 ? ScalarType.Float64 : ScalarType.Float32, d.dtype);
            var reference = OfSegment(expected, s);
            AssertClose(reference, Host(d), s == 0 ? 1e-12 : 1e-6, $"fisher D of segment {s}");

            // The floor binds on the tiny coordinates: ignoring it would give a D several times larger there.
            var raw = OfSegment(unfloored, s);
            Assert.Contains(Enumerable.Range(0, raw.Length), c => raw[c] > 2 * reference[c]);
        }

        // F <= 0 (no gradient in any window) gives D = 0, exactly.
        Assert.Equal(0.0, Host(whitening.Segment(Geometry.Fisher, 0)!)[0]);
        Assert.Equal(0.0, Host(whitening.Segment(Geometry.Fisher, 1)!)[Sizes[2]]);
    }

    [Fact]
    public void Fisher_D_without_a_floor_is_the_bias_corrected_inverse_root_of_F()
    {
        var windows = Gradients(3, 7);
        var (whitening, window) = Updated(new ProbeOptions { FisherDecay = Decay, FisherFloor = 0 }, Geometry.Fisher, windows);
        using var _ = window;
        using var __ = whitening;
        using var scope = torch.NewDisposeScope();

        var expected = ReferenceFisher(windows, Decay, 0);
        var floored = ReferenceFisher(windows, Decay, 1e-2);
        for (int s = 0; s < 2; s++)
        {
            AssertClose(OfSegment(expected, s), Host(whitening.Segment(Geometry.Fisher, s)!), s == 0 ? 1e-12 : 1e-6, $"unfloored fisher D of segment {s}");
            Assert.NotEqual(OfSegment(floored, s), OfSegment(expected, s));
        }

        Assert.Equal([15L, 8L], whitening.StateTensors.Select(t => t.numel()));   // F of each segment, and no floor
    }

    [Fact]
    public void A_chunk_is_the_segments_D_over_its_columns_in_the_asked_dtype()
    {
        var windows = Gradients(2, 9);
        var (whitening, window) = Updated(new ProbeOptions { FisherDecay = Decay, FisherFloor = 1e-2, AdaptiveEta = 0.25 }, Geometry.All, windows);
        using var _ = window;
        using var __ = whitening;
        using var scope = torch.NewDisposeScope();

        var expected = OfSegment(ReferenceFisher(windows, Decay, 1e-2), 0);
        var chunk = whitening.Chunk(Geometry.Fisher, 0, 5, 7, ScalarType.Float64)!;
        Assert.Equal([7L], chunk.shape);
        AssertClose(expected[5..12], Host(chunk), 1e-12, "fisher chunk");
        var narrow = whitening.Chunk(Geometry.Fisher, 0, 5, 7, ScalarType.Float32)!;
        Assert.Equal(ScalarType.Float32, narrow.dtype);
        AssertClose(expected[5..12], Host(narrow), 1e-6, "fisher chunk in float32");

        Assert.True(whitening.Chunk(Geometry.Adaptive, 1, 2, 3, ScalarType.Float32)!
            .allclose(whitening.Segment(Geometry.Adaptive, 1)!.narrow(0, 2, 3), rtol: 0, atol: 0));
        Assert.Null(whitening.Chunk(Geometry.Euclidean, 1, 2, 3, ScalarType.Float32));
    }

    [Fact]
    public void Adaptive_D_is_the_absolute_theta_at_the_last_update_plus_eta()
    {
        const double Eta = 0.05;
        var model = Model();
        using var window = new GradientWindow(model, null, K);
        using var whitening = new Whitening(new ProbeOptions { AdaptiveEta = Eta }, Geometry.Adaptive | Geometry.Euclidean, window);
        using var scope = torch.NewDisposeScope();
        var theta = model.parameters().Select(p => p.detach().to(ScalarType.Float64).flatten().data<double>().ToArray()).ToArray();
        whitening.Update();
        using (torch.no_grad())
            foreach (var p in model.parameters()) p.mul_(-3).add_(1);   // moved after the update: D keeps the theta it read

        for (int s = 0; s < 2; s++)
        {
            var expected = Enumerable.Range(0, Shapes.Length).Where(p => SegmentOf[p] == s)
                .SelectMany(p => theta[p]).Select(t => Math.Abs(t) + Eta).ToArray();
            AssertClose(expected, Host(whitening.Segment(Geometry.Adaptive, s)!), s == 0 ? 1e-15 : 1e-7, $"adaptive D of segment {s}");
        }

        Assert.Null(whitening.Segment(Geometry.Euclidean, 0));
        Assert.Empty(whitening.StateTensors);
        Assert.Contains("fisher", Assert.Throws<InvalidOperationException>(() => whitening.Segment(Geometry.Fisher, 0)).Message);
    }

    [Fact]
    public void Restoring_the_state_tensors_and_the_update_count_gives_the_same_D()
    {
        var windows = Gradients(3, 11);
        var options = new ProbeOptions { FisherDecay = Decay, FisherFloor = 1e-2 };
        var (original, window) = Updated(options, Geometry.Fisher, windows[..2]);
        using var _ = window;
        using var __ = original;
        using var restored = new Whitening(options, Geometry.Fisher, window);
        using var scope = torch.NewDisposeScope();

        Assert.Equal(4, original.StateTensors.Count);   // F and floor of each segment
        Assert.All(original.StateTensors, t => Assert.Equal(ScalarType.Float64, t.dtype));
        foreach (var (from, to) in original.StateTensors.Zip(restored.StateTensors)) to.copy_(from);
        restored.Updates = original.Updates;
        for (int s = 0; s < 2; s++)
            Assert.True(restored.Segment(Geometry.Fisher, s)!.allclose(original.Segment(Geometry.Fisher, s)!, rtol: 0, atol: 0), $"segment {s} after the restore");

        // And both continue alike, as the reference says.
        Store(window, windows[2]);
        original.Update();
        restored.Update();
        var expected = ReferenceFisher(windows, Decay, 1e-2);
        for (int s = 0; s < 2; s++)
        {
            Assert.True(restored.Segment(Geometry.Fisher, s)!.allclose(original.Segment(Geometry.Fisher, s)!, rtol: 0, atol: 0), $"segment {s} one update later");
            AssertClose(OfSegment(expected, s), Host(restored.Segment(Geometry.Fisher, s)!), s == 0 ? 1e-12 : 1e-6, $"restored fisher D of segment {s}");
        }

        Assert.Throws<ArgumentOutOfRangeException>(() => restored.Updates = -1);
    }
}

using System.Runtime.ExceptionServices;
using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Statistics;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.StatisticsTests;

/// <summary>
/// The whitening's state after windows folded the way a session folds them (<see cref="FirstOrderFamily"/> reading a
/// <see cref="GradientWindow"/>: the float64 layer through the tensor path, the float32 layer through the managed
/// kernel), against a float64 recurrence written by hand: <c>F &lt;- decay F + (1 - decay) mean_i g_i^2</c>; a floor
/// per parameter tensor, <c>FisherFloor x</c> its mean F after the previous window (the first window's from its own
/// squares); fisher <c>D = 1/sqrt(max(F, floor) / (1 - decay^w))</c> (0 where <c>F &lt;= 0</c>) as
/// <see cref="Whitening.Segment"/> and <see cref="Whitening.Chunk"/> read it; adaptive <c>D = |theta| + eta</c>.
/// </summary>
public sealed class WhiteningTests
{
    private const int K = 8;
    private const double Decay = 0.9, FloorFraction = 1e-2;

    /// <summary>The float32 path folds a float32 mean square (see <see cref="Tests.Statistics.WindowKernelTests"/>).</summary>
    private const double Float32Tolerance = 1e-6;

    // 0.weight [3, 4] and 0.bias [3] in float64 (segment 0), 1.weight [7, 3] and 1.bias [7] in float32 (segment 1): the
    // float32 tensors are not multiples of 8 long, and the bias starts mid-vector.
    private static readonly long[][] Shapes = [[3, 4], [3], [7, 3], [7]];
    private static readonly int[] SegmentOf = [0, 0, 1, 1];
    private static readonly int[] Sizes = Shapes.Select(s => (int)s.Aggregate(1L, (a, b) => a * b)).ToArray();

    private static nn.Module Model()
    {
        torch.manual_seed(3);
        return nn.Sequential(nn.Linear(4, 3).to(ScalarType.Float64), nn.Linear(3, 7));
    }

    /// <summary>
    /// Gradients per window, slot and parameter tensor. Coordinate 0 of 0.weight and of 1.bias is zero in every window
    /// (F = 0, D = 0); coordinate 1 of 0.weight and coordinate 2 of 1.weight are tiny (the floor binds there). Float32
    /// tensors hold float32 values, so that the double reference starts from exactly what the window holds.
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
                        double v = scale * (2 * random.NextDouble() - 1 + 0.2);
                        values[c] = SegmentOf[p] == 1 ? (float)v : v;
                    }

                    result[w][i][p] = values;
                }
            }
        }

        return result;
    }

    /// <summary>The reference: F, the floor each window used and D per parameter tensor after each window.</summary>
    private sealed class Reference
    {
        public Reference(double[][][][] windows, double decay, double fraction)
        {
            var f = Sizes.Select(n => new double[n]).ToArray();
            double[] floors = new double[Shapes.Length];
            foreach (var (window, w) in windows.Select((x, w) => (x, w + 1)))
            {
                var previousMeans = f.Select(t => t.Average()).ToArray();
                for (int p = 0; p < Shapes.Length; p++)
                {
                    double squares = 0;
                    for (int c = 0; c < Sizes[p]; c++)
                    {
                        double meanSquare = 0;
                        for (int i = 0; i < K; i++) meanSquare += window[i][p][c] * window[i][p][c] / K;
                        f[p][c] = decay * f[p][c] + (1 - decay) * meanSquare;
                        for (int i = 0; i < K; i++) squares += window[i][p][c] * window[i][p][c];
                    }

                    // The first window's floor from its own squares; the others' from the previous window's mean F.
                    floors[p] = w == 1 ? fraction * (1 - decay) * squares / (K * Sizes[p]) : fraction * previousMeans[p];
                }

                Bias = 1 / (1 - Math.Pow(decay, w));
            }

            Fisher = f;
            Floors = floors;
            Next = f.Select(t => fraction * t.Average()).ToArray();
            D = f.Select((t, p) => t.Select(v => v > 0 ? 1 / Math.Sqrt(Math.Max(v, floors[p]) * Bias) : 0).ToArray()).ToArray();
        }

        public double[][] Fisher { get; }

        /// <summary>The floors the last window used.</summary>
        public double[] Floors { get; }

        /// <summary>The floors the next window will use.</summary>
        public double[] Next { get; }

        public double Bias { get; }

        public double[][] D { get; }

        public double[] OfSegment(double[][] perTensor, int segment) =>
            Enumerable.Range(0, Shapes.Length).Where(p => SegmentOf[p] == segment).SelectMany(p => perTensor[p]).ToArray();
    }

    /// <summary>A model's window and first-order family, folding windows as a session's worker does.</summary>
    private sealed class Stream : IDisposable
    {
        private readonly ProbeWindowContext _context;
        private int _windows;

        public Stream(ProbeOptions options, Geometry geometries, FlatParameterBuffer? theta = null, nn.Module? model = null)
        {
            Layout = new ParameterLayout(model ?? Model(), null);
            Window = new GradientWindow(Layout, K);
            Family = new FirstOrderFamily(options, geometries, Layout, K, microBatches: false, theta, "", layerCount: 0);
            _context = new ProbeWindowContext(null!, Layout, K);
        }

        public ParameterLayout Layout { get; }

        public GradientWindow Window { get; }

        public FirstOrderFamily Family { get; }

        public Whitening Whitening => Family.Whitening;

        /// <summary>Folds one window; returns what it reported.</summary>
        public IReadOnlyList<IndicatorValue> Fold(double[][][] gradients)
        {
            using (var scope = torch.NewDisposeScope())
            using (torch.no_grad())
                for (int i = 0; i < K; i++)
                    Window.Store(i, Enumerable.Range(0, Shapes.Length)
                        .Select(p => (Tensor?)torch.tensor(gradients[i][p], Shapes[p], SegmentOf[p] == 0 ? ScalarType.Float64 : ScalarType.Float32))
                        .ToArray());

            _context.Begin(_windows, _windows);
            _windows++;
            using (var scope = torch.NewDisposeScope())
            using (torch.no_grad())
            {
                Family.Compute(_context, Window, defer: false);
                _context.Resolve((_, exception) => ExceptionDispatchInfo.Throw(exception));
            }

            return _context.Values.ToArray();
        }

        public void Dispose()
        {
            Family.Dispose();
            Window.Dispose();
        }
    }

    private static double[] Host(Tensor t)
    {
        using var values = t.to(ScalarType.Float64);
        return values.data<double>().ToArray();
    }

    /// <summary>Same shape, dtype and values, bit for bit.</summary>
    private static bool Same(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && Host(a).Zip(Host(b)).All(x => BitConverter.DoubleToInt64Bits(x.First) == BitConverter.DoubleToInt64Bits(x.Second));

    private static void AssertClose(double[] expected, double[] actual, double relative, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int c = 0; c < expected.Length; c++) Close.Assert(expected[c], actual[c], relative, $"{what}, coordinate {c}");
    }

    private static ProbeOptions Options(double floor = FloorFraction) => new() { FisherDecay = Decay, FisherFloor = floor, AdaptiveEta = 0.25 };

    [Fact]
    public void F_floors_and_D_after_several_windows_match_the_float64_recurrence_in_each_segment()
    {
        var windows = Gradients(4, 5);
        using var stream = new Stream(Options(), Geometry.Euclidean | Geometry.Fisher);
        for (int w = 0; w < windows.Length; w++)
        {
            stream.Fold(windows[w]);
            var reference = new Reference(windows[..(w + 1)], Decay, FloorFraction);
            Assert.Equal(w + 1, stream.Whitening.Updates);
            Close.Assert(reference.Bias, stream.Whitening.Bias, 1e-15, "bias");
            for (int s = 0; s < 2; s++)
            {
                double tolerance = s == 0 ? 1e-12 : Float32Tolerance;
                AssertClose(reference.OfSegment(reference.Fisher, s), Host(stream.Whitening.StateTensors[s]), tolerance, $"window {w}: F of segment {s}");
                using var scope = torch.NewDisposeScope();
                var d = stream.Whitening.Segment(Geometry.Fisher, s)!;
                Assert.Equal(s == 0 ? ScalarType.Float64 : ScalarType.Float32, d.dtype);
                AssertClose(reference.OfSegment(reference.D, s), Host(d), tolerance, $"window {w}: fisher D of segment {s}");
            }

            for (int p = 0; p < Shapes.Length; p++)
            {
                double tolerance = SegmentOf[p] == 0 ? 1e-12 : Float32Tolerance;
                Close.Assert(reference.Floors[p], stream.Whitening.Floor(p), tolerance, $"window {w}: floor of tensor {p}");
                Close.Assert(reference.Next[p], stream.Whitening.Floors[p], tolerance, $"window {w}: next floor of tensor {p}");
            }
        }

        // F <= 0 (no gradient in any window) gives D = 0, exactly; the floor binds on the tiny coordinates.
        using var final = torch.NewDisposeScope();
        var last = new Reference(windows, Decay, FloorFraction);
        var unfloored = new Reference(windows, Decay, 0);
        Assert.Equal(0.0, Host(stream.Whitening.Segment(Geometry.Fisher, 0)!)[0]);
        Assert.Equal(0.0, Host(stream.Whitening.Segment(Geometry.Fisher, 1)!)[Sizes[2]]);
        Assert.True(unfloored.D[0][1] > 10 * last.D[0][1], "test setup: the floor binds on 0.weight[1]");
        Assert.True(unfloored.D[2][2] > 10 * last.D[2][2], "test setup: the floor binds on 1.weight[2]");
    }

    [Fact]
    public void The_first_windows_floor_comes_from_its_own_squares_and_the_next_from_its_mean_F()
    {
        // One window: its floor is FisherFloor (1 - decay) sum g^2 / (K n) per tensor, read before the fold; D is raised
        // to it on the tiny coordinates. The floor of the second window is FisherFloor x the first window's mean F.
        var windows = Gradients(2, 7);
        using var stream = new Stream(Options(), Geometry.Fisher);
        Assert.True(stream.Whitening.NeedsFirstFloors);
        stream.Fold(windows[0]);
        Assert.False(stream.Whitening.NeedsFirstFloors);
        for (int p = 0; p < Shapes.Length; p++)
        {
            double squares = 0;
            for (int i = 0; i < K; i++) squares += windows[0][i][p].Sum(v => v * v);
            Close.Assert(FloorFraction * (1 - Decay) * squares / (K * Sizes[p]), stream.Whitening.Floor(p), 1e-12, $"first floor of tensor {p}");
        }

        using (var scope = torch.NewDisposeScope())
        {
            double raised = 1 / Math.Pow(Host(stream.Whitening.Segment(Geometry.Fisher, 0)!)[1], 2) / stream.Whitening.Bias;
            Close.Assert(stream.Whitening.Floor(0), raised, 1e-12, "0.weight[1] is raised to the floor");
        }

        var means = stream.Whitening.StateTensors.Select(Host).ToArray();
        double weightMean = means[1][..Sizes[2]].Average(), biasMean = means[1][Sizes[2]..].Average();
        stream.Fold(windows[1]);
        Close.Assert(FloorFraction * means[0][..Sizes[0]].Average(), stream.Whitening.Floor(0), 1e-12, "second floor of 0.weight");
        Close.Assert(FloorFraction * means[0][Sizes[0]..].Average(), stream.Whitening.Floor(1), 1e-12, "second floor of 0.bias");
        Close.Assert(FloorFraction * weightMean, stream.Whitening.Floor(2), 1e-12, "second floor of 1.weight");
        Close.Assert(FloorFraction * biasMean, stream.Whitening.Floor(3), 1e-12, "second floor of 1.bias");
    }

    [Fact]
    public void Without_a_floor_D_is_the_bias_corrected_inverse_root_of_F()
    {
        var windows = Gradients(3, 9);
        using var stream = new Stream(Options(floor: 0), Geometry.Euclidean | Geometry.Fisher);
        foreach (var window in windows) stream.Fold(window);
        var expected = new Reference(windows, Decay, 0);
        var floored = new Reference(windows, Decay, FloorFraction);
        Assert.False(stream.Whitening.NeedsFirstFloors);
        using var scope = torch.NewDisposeScope();
        for (int s = 0; s < 2; s++)
        {
            AssertClose(expected.OfSegment(expected.D, s), Host(stream.Whitening.Segment(Geometry.Fisher, s)!), s == 0 ? 1e-12 : Float32Tolerance, $"unfloored D of segment {s}");
            Assert.NotEqual(expected.OfSegment(floored.D, s), expected.OfSegment(expected.D, s));
        }

        Assert.All(Enumerable.Range(0, Shapes.Length), p => Assert.Equal(0.0, stream.Whitening.Floor(p)));
        Assert.Equal([15L, 28L], stream.Whitening.StateTensors.Select(t => t.numel()));   // F of each segment, float64
        Assert.All(stream.Whitening.StateTensors, t => Assert.Equal(ScalarType.Float64, t.dtype));
    }

    [Fact]
    public void The_windows_gsnr_is_the_definitions_over_every_tensor()
    {
        var windows = Gradients(1, 21);
        using var stream = new Stream(Options(), Geometry.Euclidean | Geometry.Fisher);
        var values = stream.Fold(windows[0]);
        double r = 0, u = 0, n = 0;
        for (int p = 0; p < Shapes.Length; p++)
        {
            var g = new double[K, Sizes[p]];
            for (int i = 0; i < K; i++)
                for (int c = 0; c < Sizes[p]; c++) g[i, c] = windows[0][i][p][c];
            var (sums, _) = Tests.Statistics.CoordinateReference.Gsnr(g, 0, Sizes[p], Tests.Statistics.CoordinateReference.Float32Epsilon, 0);
            r += sums[0];
            u += sums[1];
            n += sums[2];
        }

        Assert.Equal(Sizes.Sum(), n);
        Assert.Equal(n - 2, u);   // the two dead coordinates do not vary
        double expected = ((K - 3.0) / (K - 1.0) * r - u / K) / n;
        var gsnr = values.Single(v => v.Name == Indicators.Gsnr && v.Layer is null);
        Close.Assert(expected, gsnr.Value, 1e-6, "gsnr");
        var error = values.Single(v => v.Name == Indicators.Gsnr + Indicators.StandardErrorSuffix && v.Layer is null);
        Assert.True(error.Value > 0 && double.IsFinite(error.Value), $"gsnr standard error {error.Value}");
    }

    [Fact]
    public void A_chunk_is_the_segments_D_over_its_columns_in_the_asked_dtype()
    {
        var windows = Gradients(2, 9);
        using var stream = new Stream(Options(), Geometry.Fisher);
        foreach (var window in windows) stream.Fold(window);
        using var scope = torch.NewDisposeScope();
        var reference = new Reference(windows, Decay, FloorFraction);

        // Columns 10..16 of segment 0 span 0.weight and 0.bias: each with its own tensor's floor.
        var expected = reference.OfSegment(reference.D, 0);
        var chunk = stream.Whitening.Chunk(Geometry.Fisher, 0, 10, 5, ScalarType.Float64)!;
        Assert.Equal([5L], chunk.shape);
        AssertClose(expected[10..15], Host(chunk), 1e-12, "fisher chunk");
        var narrow = stream.Whitening.Chunk(Geometry.Fisher, 0, 10, 5, ScalarType.Float32)!;
        Assert.Equal(ScalarType.Float32, narrow.dtype);
        AssertClose(expected[10..15], Host(narrow), Float32Tolerance, "fisher chunk in float32");

        var segment = stream.Whitening.Segment(Geometry.Fisher, 1)!;
        Assert.True(Same(stream.Whitening.Chunk(Geometry.Fisher, 1, 19, 6, ScalarType.Float32)!, segment.narrow(0, 19, 6)));
        Assert.Null(stream.Whitening.Chunk(Geometry.Euclidean, 1, 2, 3, ScalarType.Float32));
        Assert.Contains("adaptive", Assert.Throws<InvalidOperationException>(() => stream.Whitening.Segment(Geometry.Adaptive, 0)).Message);
    }

    [Fact]
    public void Adaptive_D_is_the_absolute_theta_the_session_copied_plus_eta()
    {
        const double Eta = 0.05;
        var model = Model();
        var layout = new ParameterLayout(model, null);
        using var theta = layout.CreateFlatBuffer();
        using (torch.no_grad()) theta.LoadParameters();   // as the session copies theta
        using var whitening = new Whitening(new ProbeOptions { AdaptiveEta = Eta }, Geometry.Adaptive | Geometry.Euclidean, layout, theta);
        using var scope = torch.NewDisposeScope();
        var copied = model.parameters().Select(p => Host(p.detach().flatten())).ToArray();
        using (torch.no_grad())
            foreach (var p in model.parameters()) p.mul_(-3).add_(1);   // moved after the copy: D keeps the theta it read

        for (int s = 0; s < 2; s++)
        {
            var expected = Enumerable.Range(0, Shapes.Length).Where(p => SegmentOf[p] == s)
                .SelectMany(p => copied[p]).Select(t => s == 0 ? Math.Abs(t) + Eta : (float)(Math.Abs(t) + Eta)).ToArray();
            AssertClose(expected, Host(whitening.Segment(Geometry.Adaptive, s)!), s == 0 ? 1e-15 : 1e-7, $"adaptive D of segment {s}");
        }

        Assert.Null(whitening.Segment(Geometry.Euclidean, 0));
        Assert.Empty(whitening.StateTensors);
        Assert.False(whitening.NeedsFirstFloors);
        Assert.Contains("fisher", Assert.Throws<InvalidOperationException>(() => whitening.Segment(Geometry.Fisher, 0)).Message);
        Assert.Throws<ArgumentNullException>(() => new Whitening(new ProbeOptions(), Geometry.Adaptive, layout, null));
    }

    [Fact]
    public void The_state_the_kernels_read_is_the_whitenings()
    {
        var windows = Gradients(2, 4);
        using var stream = new Stream(Options(), Geometry.Fisher);
        foreach (var window in windows) stream.Fold(window);
        stream.Whitening.Begin();   // a third window begins: it uses the floors the second left
        using var scope = torch.NewDisposeScope();
        for (int q = 0; q < Shapes.Length; q++)
        {
            var managed = stream.Whitening.Managed(q, 1, ScalarType.BFloat16);
            Assert.Equal(Decay, managed.Decay);
            Assert.Equal(stream.Whitening.Floor(q), managed.Floor);
            Assert.Equal(stream.Whitening.Bias, managed.Bias);
            Assert.Equal(Math.Pow(2, -7), managed.StoredEpsilon);

            var tensors = stream.Whitening.Tensors(q, 1, 2, ScalarType.Float32);
            var p = stream.Layout.Parameters[q];
            Assert.True(Same(tensors.Fisher!, stream.Whitening.StateTensors[p.Segment].narrow(0, p.Offset + 1, 2)));
            Assert.Equal(stream.Whitening.Floor(q), tensors.Floor);
            Assert.Equal(stream.Whitening.Bias, tensors.Bias);
            Assert.Equal(ScalarType.Float32, tensors.Stored);
            Assert.Null(tensors.Theta);
        }

        Close.Assert(1 / (1 - Math.Pow(Decay, 3)), stream.Whitening.Bias, 1e-15, "bias of the third window");
        Assert.True(stream.Whitening.ManagedState(1));
    }

    /// <summary>
    /// What <see cref="FirstOrderFamily.Save"/> keeps (F, the update count, the next floors) restores a whitening that
    /// folds the next window exactly as the original does.
    /// </summary>
    [Fact]
    public void Restoring_F_the_update_count_and_the_floors_continues_the_same_recurrence()
    {
        var windows = Gradients(3, 11);
        using var original = new Stream(Options(), Geometry.Fisher);
        using var restored = new Stream(Options(), Geometry.Fisher);
        original.Fold(windows[0]);
        original.Fold(windows[1]);

        foreach (var (from, to) in original.Whitening.StateTensors.Zip(restored.Whitening.StateTensors)) to.copy_(from);
        restored.Whitening.Updates = original.Whitening.Updates;
        restored.Whitening.Floors = original.Whitening.Floors;
        Assert.False(restored.Whitening.NeedsFirstFloors);

        original.Fold(windows[2]);
        restored.Fold(windows[2]);
        var reference = new Reference(windows, Decay, FloorFraction);
        using var scope = torch.NewDisposeScope();
        for (int s = 0; s < 2; s++)
        {
            Assert.True(Same(restored.Whitening.StateTensors[s], original.Whitening.StateTensors[s]), $"F of segment {s}");
            Assert.True(Same(restored.Whitening.Segment(Geometry.Fisher, s)!, original.Whitening.Segment(Geometry.Fisher, s)!), $"D of segment {s}");
            AssertClose(reference.OfSegment(reference.D, s), Host(restored.Whitening.Segment(Geometry.Fisher, s)!), s == 0 ? 1e-12 : Float32Tolerance, $"restored D of segment {s}");
        }

        Assert.Equal(original.Whitening.Floors, restored.Whitening.Floors);
        Assert.Throws<ArgumentOutOfRangeException>(() => restored.Whitening.Updates = -1);
        Assert.Throws<InvalidDataException>(() => restored.Whitening.Floors = new double[3]);
    }

    /// <summary>Right after a restore, before the next window, D should be the original's (as the probes read it).</summary>
    [Fact]
    public void Right_after_a_restore_D_is_the_originals()
    {
        var windows = Gradients(2, 11);
        using var original = new Stream(Options(), Geometry.Fisher);
        using var restored = new Stream(Options(), Geometry.Fisher);
        foreach (var window in windows) original.Fold(window);
        foreach (var (from, to) in original.Whitening.StateTensors.Zip(restored.Whitening.StateTensors)) to.copy_(from);
        restored.Whitening.Updates = original.Whitening.Updates;
        restored.Whitening.Floors = original.Whitening.Floors;
        restored.Whitening.FloorsInUse = original.Whitening.FloorsInUse;
        using var scope = torch.NewDisposeScope();
        for (int s = 0; s < 2; s++)
            Assert.True(Same(restored.Whitening.Segment(Geometry.Fisher, s)!, original.Whitening.Segment(Geometry.Fisher, s)!), $"D of segment {s}");
    }


    /// <summary>
    /// A window where one parameter tensor has no gradient (a parameter the loss does not use counts as zeros): its F
    /// and its floor are 0, its D is 0, and every fisher value of the window is finite, with or without FisherFloor.
    /// </summary>
    [Theory]
    [InlineData(FloorFraction)]
    [InlineData(0.0)]
    public void A_tensor_without_gradient_keeps_the_fisher_values_finite(double floor)
    {
        var windows = Gradients(2, 13);
        foreach (var window in windows)
            foreach (var slot in window) Array.Clear(slot[3]);   // 1.bias: no gradient
        using var stream = new Stream(Options(floor), Geometry.Euclidean | Geometry.Fisher);
        foreach (var window in windows)
        {
            var values = stream.Fold(window);
            var fisher = values.Where(v => v.Geometry == Geometry.Fisher && !v.Name.EndsWith(Indicators.StandardErrorSuffix)).ToArray();
            Assert.NotEmpty(fisher);
            Assert.All(fisher, v => Assert.True(double.IsFinite(v.Value), $"{v.Name} [fisher] = {v.Value}"));
        }

        Assert.Equal(0.0, stream.Whitening.Floor(3));
        using var scope = torch.NewDisposeScope();
        Assert.All(Host(stream.Whitening.Segment(Geometry.Fisher, 1)!)[Sizes[2]..], d => Assert.Equal(0.0, d));
    }
}

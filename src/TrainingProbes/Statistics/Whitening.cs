using System.Runtime.Intrinsics;
using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The per-coordinate whitening <c>h = D g</c> of each geometry, for one stream of windows over one
/// <see cref="GradientWindow"/>, and the state it needs. The only place D is computed: the first-order family (passive
/// and one-theta windows) reads it chunk by chunk, the active windows (finite radius) and the invariant curvature of
/// <see cref="FixedPointProbe"/> read it a segment at a time.
/// <list type="bullet">
/// <item><description>euclidean: no whitening (<c>D = I</c>; null here).</description></item>
/// <item><description>fisher: at each <see cref="Update"/>, <c>F &lt;- decay F + (1 - decay) mean_i g_i^2</c> over the
/// window's K gradients (float64), and each coordinate's floor <c>FisherFloor x mean(F)</c> over its parameter tensor;
/// then <c>D = 1 / sqrt(max(F, floor) / (1 - decay^w))</c> where <c>F &gt; 0</c>, <c>D = 0</c> where <c>F &lt;= 0</c>,
/// w the number of updates (Adam's bias correction). A floor per parameter tensor scales with the tensor, so it keeps
/// the invariance to rescaling a whole tensor (the symmetry of ReLU networks); <c>FisherFloor = 0</c> is no floor.</description></item>
/// <item><description>adaptive: <c>D = |theta| + eta</c>, theta the watched parameters at the last <see cref="Update"/>.</description></item>
/// </list>
/// D comes in the gradients' compute dtype (see <see cref="WindowChunks.ComputeType"/>): a tiny gradient's D is large,
/// never subnormal. The Fisher average and its floor are kept in float64: squares of small float32 gradients (below
/// about 1e-19) are subnormal in float32, which is both inexact and, on CPUs, two orders of magnitude slower.
/// </summary>
internal sealed unsafe class Whitening : IDisposable
{
    private readonly GradientWindow _window;
    private readonly double _decay;
    private readonly double _floorFraction;
    private readonly double _eta;
    private readonly FlatParameterBuffer? _fisher;   // running average F of squared gradients, float64
    private readonly FlatParameterBuffer? _floor;    // FisherFloor x the mean F of each parameter tensor, float64
    private readonly FlatParameterBuffer? _theta;    // parameters at the last update, for the adaptive geometry
    private long _updates;
    private double _biasCorrection;

    /// <param name="options">Fisher decay and floor, adaptive eta.</param>
    /// <param name="geometries">The geometries whose D is asked for; only their state is allocated.</param>
    /// <param name="window">Where the K gradients are; D is laid out like its segments.</param>
    public Whitening(ProbeOptions options, Geometry geometries, GradientWindow window)
    {
        _window = window;
        _decay = options.FisherDecay;
        _floorFraction = options.FisherFloor;
        _eta = options.AdaptiveEta;
        if (geometries.HasFlag(Geometry.Fisher))
        {
            _fisher = window.CreateFlatBuffer(minimum: ScalarType.Float64);
            if (_floorFraction > 0) _floor = window.CreateFlatBuffer(minimum: ScalarType.Float64);
        }

        if (geometries.HasFlag(Geometry.Adaptive)) _theta = window.CreateFlatBuffer();
    }

    /// <summary>
    /// Number of updates so far, w of the bias correction <c>1 / (1 - decay^w)</c>. Settable to restore a saved state
    /// together with <see cref="StateTensors"/>.
    /// </summary>
    public long Updates
    {
        get => _updates;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _updates = value;
            _biasCorrection = 1.0 / (1.0 - Math.Pow(_decay, value));
        }
    }

    /// <summary>
    /// The state carried from window to window, to save and restore (by <c>copy_</c>) with <see cref="Updates"/>: F of
    /// each segment, then, with a floor, the floor of each segment; float64, flat, on the segments' devices. Empty without
    /// the fisher geometry. The adaptive theta is not in it: every update reads it from the parameters again.
    /// </summary>
    public IReadOnlyList<Tensor> StateTensors =>
        [.. _fisher?.Segments ?? [], .. _floor?.Segments ?? []];

    /// <summary>
    /// Takes in the window the <see cref="GradientWindow"/> holds now: folds its K gradients into F, sets each parameter
    /// tensor's floor from the new F, counts the update, and copies the parameters for the adaptive geometry (call while
    /// the parameters are at the window's theta).
    /// </summary>
    public void Update()
    {
        LoadTheta();
        Fold();
    }

    /// <summary>
    /// The parameters as of the last <see cref="LoadTheta"/> (the window's theta), laid out like the window's segments;
    /// null without the adaptive geometry. Other probes of the same window may read it (the drift probe does, on the
    /// worker, instead of keeping a copy of its own).
    /// </summary>
    public FlatParameterBuffer? Theta => _theta;

    /// <summary>The first half of <see cref="Update"/>: copies the parameters for the adaptive geometry (call at the window's theta).</summary>
    public void LoadTheta()
    {
        using var noGrad = torch.no_grad();   // state, never part of a graph (and the parameters require gradients)
        _theta?.LoadParameters();
    }

    /// <summary>
    /// The second half of <see cref="Update"/>: counts the update, folds the window's K gradients into F and sets the
    /// floors. It reads the window's buffer and this object's state only, never the parameters: it may run on a worker.
    /// </summary>
    public void Fold()
    {
        using var noGrad = torch.no_grad();
        Updates = _updates + 1;
        if (_fisher is null) return;

        for (int s = 0; s < _window.Segments.Count; s++)
        {
            var segment = _window.Segments[s];
            if (Managed(s))
            {
                FoldManaged(s);
                continue;
            }

            long chunk = WindowChunks.Columns(segment, _window.K);
            for (long offset = 0; offset < segment.Count; offset += chunk)
            {
                using var scope = torch.NewDisposeScope();
                long length = Math.Min(chunk, segment.Count - offset);
                Fold(WindowChunks.Read(segment, offset, length), _fisher.Segments[s].narrow(0, offset, length));
            }
        }

        if (_floor is null) return;
        foreach (var parameter in _window.Parameters)
        {
            if (Managed(parameter.Segment)) continue;   // FoldManaged set its floor
            using var scope = torch.NewDisposeScope();
            using var scalars = new ScalarScope();
            var mean = _fisher.Segments[parameter.Segment].narrow(0, parameter.Offset, parameter.Count).mean();
            _floor.Segments[parameter.Segment].narrow(0, parameter.Offset, parameter.Count).copy_(mean.mul(scalars[_floorFraction]));
        }
    }

    /// <summary>Whether segment <paramref name="segment"/>'s state is read and written in managed code (CPU, float32 gradients).</summary>
    internal bool Managed(int segment) => WindowKernel.Supports(_window.Segments[segment].Gradients);

    /// <summary>
    /// The fold of a managed segment in one pass over its gradients, read in place: per coordinate the K squares in
    /// float64 (never overflowing or subnormal), F updated in place, and per parameter tensor the sum of the new F for
    /// its floor.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private void FoldManaged(int s)
    {
        var gradients = _window.Segments[s].Gradients;
        float* g = WindowKernel.Address<float>(gradients);
        double* fisher = WindowKernel.Address<double>(_fisher!.Segments[s]);
        long columns = gradients.shape[1];
        int k = _window.K;
        double decay = _decay, weight = (1 - _decay) / k;
        var decayV = Vector256.Create(decay);
        var weightV = Vector256.Create(weight);
        var infinity = Vector256.Create(double.PositiveInfinity);
        foreach (var parameter in _window.Parameters)
        {
            if (parameter.Segment != s) continue;
            long start = parameter.Offset, end = parameter.Offset + parameter.Count, c = start;
            var total = Vector256<double>.Zero;
            for (; c + 4 <= end; c += 4)
            {
                var squares = Vector256<double>.Zero;
                for (int i = 0; i < k; i++)
                {
                    var x = Vector256.WidenLower(Vector128.Load(g + i * columns + c).ToVector256Unsafe());
                    squares += x * x;
                }

                // A non-finite square (a NaN or infinite gradient) leaves F as it was there: it would poison F for good.
                var old = Vector256.Load(fisher + c);
                var f = Vector256.ConditionalSelect(Vector256.LessThan(squares, infinity), old * decayV + squares * weightV, old);
                Vector256.Store(f, fisher + c);
                total += f;
            }

            double sum = Vector256.Sum(total);
            for (; c < end; c++)
            {
                double squares = 0;
                for (int i = 0; i < k; i++)
                {
                    double x = g[i * columns + c];
                    squares += x * x;
                }

                if (double.IsFinite(squares)) fisher[c] = fisher[c] * decay + squares * weight;
                sum += fisher[c];
            }

            if (_floor is not null)
            {
                using var scalars = new ScalarScope();
                using var view = _floor.Segments[s].narrow(0, parameter.Offset, parameter.Count);
                view.fill_(scalars[sum / parameter.Count * _floorFraction]);
            }
        }
    }

    /// <summary>
    /// D's state for the managed kernel over columns starting at <paramref name="offset"/> of segment
    /// <paramref name="segment"/>, as of the last <see cref="Update"/>; the floor is the one of the parameter tensor
    /// holding that column (see <see cref="ConstantFloorRanges"/>).
    /// </summary>
    internal WindowKernel.Whitenings ManagedState(int segment, long offset) => new()
    {
        Fisher = _fisher is null ? null : WindowKernel.Address<double>(_fisher.Segments[segment]),
        Floor = _floor is null ? 0 : WindowKernel.Address<double>(_floor.Segments[segment])[offset],
        BiasCorrection = _biasCorrection,
        Theta = _theta is null ? null : WindowKernel.Address<float>(_theta.Segments[segment]),
        Eta = (float)_eta,
    };

    /// <summary>Columns [start, start + count) of a segment cut where the Fisher floor changes (at parameter tensors' edges).</summary>
    internal IEnumerable<(long Start, long Count)> ConstantFloorRanges(int segment, long start, long count)
    {
        if (_floor is null)
        {
            yield return (start, count);
            yield break;
        }

        foreach (var parameter in _window.Parameters)
        {
            if (parameter.Segment != segment) continue;
            long from = Math.Max(start, parameter.Offset), to = Math.Min(start + count, parameter.Offset + parameter.Count);
            if (to > from) yield return (from, to - from);
        }
    }

    /// <summary>F &lt;- decay F + (1 - decay) mean_i g_i^2, in float64, for a chunk [K, length] of gradients; F stays where that mean is not finite.</summary>
    private void Fold(Tensor g, Tensor fisher)
    {
        // to() returns the tensor itself when it is float64 already: square out of place then, never in the buffer.
        var squares = g.dtype == ScalarType.Float64 ? g.mul(g) : g.to(ScalarType.Float64);
        if (g.dtype != ScalarType.Float64) squares.mul_(squares);
        // A non-finite mean square (a NaN or infinite gradient) leaves F as it was there: it would poison F for good.
        var update = squares.mean([0]);
        using var scalars = new ScalarScope();
        var updated = fisher.mul(scalars[_decay]).add_(update.mul(scalars[1 - _decay]), Scalars.One);
        fisher.copy_(torch.where(update.isfinite(), updated, fisher));
    }

    /// <summary>
    /// D of <paramref name="geometry"/> for columns [<paramref name="offset"/>, <paramref name="offset"/> +
    /// <paramref name="length"/>) of segment <paramref name="segment"/>, as of the last <see cref="Update"/>: a new
    /// flat tensor in <paramref name="dtype"/> (the caller's dispose scope owns it), or null for the euclidean geometry.
    /// </summary>
    /// <exception cref="InvalidOperationException">The geometry was not among those this whitening was created for.</exception>
    public Tensor? Chunk(Geometry geometry, int segment, long offset, long length, ScalarType dtype)
    {
        switch (geometry)
        {
            case Geometry.Euclidean:
                return null;
            case Geometry.Fisher:
            {
                using var scalars = new ScalarScope();
                var fisher = Required(_fisher, geometry).Segments[segment].narrow(0, offset, length);
                var raised = _floor is null
                    ? fisher.mul(scalars[_biasCorrection])
                    : torch.maximum(fisher, _floor.Segments[segment].narrow(0, offset, length)).mul_(scalars[_biasCorrection]);
                return raised.rsqrt_().masked_fill_(fisher.le(Scalars.Zero), Scalars.Zero).to(dtype);
            }
            case Geometry.Adaptive:
            {
                using var scalars = new ScalarScope();
                return Required(_theta, geometry).Segments[segment].narrow(0, offset, length).to(dtype).abs().add_(scalars[_eta], Scalars.One);
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(geometry), geometry, "One geometry at a time.");
        }
    }

    /// <summary>D of <paramref name="geometry"/> for a whole segment, in its gradients' compute dtype; null for euclidean.</summary>
    public Tensor? Segment(Geometry geometry, int segment)
    {
        var s = _window.Segments[segment];
        return Chunk(geometry, segment, 0, s.Count, WindowChunks.ComputeType(s.Gradients.dtype));
    }

    private static FlatParameterBuffer Required(FlatParameterBuffer? state, Geometry geometry) =>
        state ?? throw new InvalidOperationException($"This whitening was created without the {geometry.ToName()} geometry.");

    public void Dispose()
    {
        _fisher?.Dispose();
        _floor?.Dispose();
        _theta?.Dispose();
    }
}

using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The per-coordinate whitening <c>h = D g</c> of each geometry, for one stream of windows, and the state it carries.
/// The only place D and the fold of F are defined (their formulas: Whitening.Formulas.cs): the window pass (<see cref="CoordinateSums"/>, <see cref="WindowKernel"/>) reads its
/// state block by block, the finite-radius measures and the invariant curvature of <see cref="FixedPointProbe"/> read
/// <see cref="Segment"/>.
/// <list type="bullet">
/// <item><description>euclidean: no whitening (<c>D = I</c>).</description></item>
/// <item><description>fisher: each window folds its K gradients into a running average of squares,
/// <c>F &lt;- decay F + (1 - decay) mean_i g_i^2</c> (float64), and whitens with
/// <c>D = 1 / sqrt(max(F, floor) / (1 - decay^w))</c> where <c>F &gt; 0</c>, <c>D = 0</c> where <c>F &lt;= 0</c>, w the
/// number of windows (Adam's bias correction). The floor of a parameter tensor is <c>FisherFloor x</c> the tensor's mean
/// F after the previous window (after its own fold in the first window): a floor per tensor scales with the tensor, so
/// it keeps the invariance to rescaling a whole tensor (the symmetry of ReLU networks).</description></item>
/// <item><description>adaptive: <c>D = |theta| + eta</c>, theta the window's parameters (a copy the session keeps).</description></item>
/// </list>
/// Memory: 8 bytes per watched parameter for F, a double per tensor for its floor.
/// </summary>
internal sealed unsafe partial class Whitening : IDisposable
{
    private readonly ParameterLayout _layout;
    private readonly double _decay;
    private readonly double _floorFraction;
    private readonly double _eta;
    private readonly FlatParameterBuffer? _fisher;   // running average F of squared gradients, float64
    private readonly double[] _floors;               // per parameter tensor: the floor of F the current window uses
    private readonly double[] _next;                 // and the one the next window will use, from this window's F
    private long _updates;

    /// <param name="options">Fisher decay and floor, adaptive eta.</param>
    /// <param name="geometries">The geometries whose D is asked for; only their state is allocated.</param>
    /// <param name="layout">The watched parameters; F is laid out like its segments.</param>
    /// <param name="theta">The window's parameters, for the adaptive geometry (not owned; null without it).</param>
    public Whitening(ProbeOptions options, Geometry geometries, ParameterLayout layout, FlatParameterBuffer? theta)
    {
        _layout = layout;
        _decay = options.FisherDecay;
        _floorFraction = options.FisherFloor;
        _eta = options.AdaptiveEta;
        Geometries = geometries;
        if (geometries.HasFlag(Geometry.Fisher)) _fisher = layout.CreateFlatBuffer(minimum: ScalarType.Float64);
        _floors = new double[layout.Parameters.Count];
        _next = new double[layout.Parameters.Count];
        if (geometries.HasFlag(Geometry.Adaptive))
            Theta = theta ?? throw new ArgumentNullException(nameof(theta), "The adaptive geometry needs the window's parameters.");
    }

    /// <summary>The geometries whose state this whitening keeps.</summary>
    public Geometry Geometries { get; }

    /// <summary>The window's parameters, read by the adaptive geometry; null without it.</summary>
    public FlatParameterBuffer? Theta { get; }

    /// <summary>Windows folded so far, w of the bias correction. Settable to restore a saved state.</summary>
    public long Updates
    {
        get => _updates;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _updates = value;
            Bias = value > 0 ? 1.0 / (1.0 - Math.Pow(_decay, value)) : 1;
        }
    }

    /// <summary>The bias correction <c>1 / (1 - decay^w)</c> of the window being folded.</summary>
    public double Bias { get; private set; } = 1;

    /// <summary>Whether the window about to be folded is the first with a floor: its floors come from its own squares (<see cref="SetFirstFloor"/>).</summary>
    public bool NeedsFirstFloors => _fisher is not null && _floorFraction > 0 && _updates == 0;

    /// <summary>Starts a window's fold: counts it (the bias correction) and takes up the floors the last window left.</summary>
    public void Begin()
    {
        if (_updates > 0) _next.CopyTo(_floors, 0);
        Updates = _updates + 1;
    }

    /// <summary>The first window's floor of a tensor from its K gradients' sum of squares: the mean F its fold will give.</summary>
    public void SetFirstFloor(int parameter, double sumOfSquares, int k) =>
        _floors[parameter] = _floorFraction * (1 - _decay) * sumOfSquares / (k * (double)_layout.Parameters[parameter].Count);

    /// <summary>Ends a tensor's fold: its floor for the next window from the sum of its new F.</summary>
    public void EndParameter(int parameter, double fisherSum)
    {
        if (_floorFraction > 0 && double.IsFinite(fisherSum))
            _next[parameter] = _floorFraction * fisherSum / _layout.Parameters[parameter].Count;
    }

    /// <summary>The floor of F this window uses for parameter tensor <paramref name="parameter"/> (0: none).</summary>
    public double Floor(int parameter) => _floorFraction > 0 ? _floors[parameter] : 0;

    /// <summary>The state of parameter <paramref name="parameter"/>'s columns from <paramref name="offset"/> on, for the managed kernel (CPU float32 parameters).</summary>
    public WindowKernel.State Managed(int parameter, long offset, ScalarType stored)
    {
        var p = _layout.Parameters[parameter];
        return new WindowKernel.State
        {
            Fisher = _fisher is null ? null : WindowKernel.Address<double>(_fisher.Segments[p.Segment]) + p.Offset + offset,
            Decay = _decay,
            Floor = Floor(parameter),
            Bias = Bias,
            Theta = Theta is null ? null : WindowKernel.Address<float>(Theta.Segments[p.Segment]) + p.Offset + offset,
            Eta = (float)_eta,
            StoredEpsilon = CoordinateSums.Epsilon(stored),
        };
    }

    /// <summary>The state of parameter <paramref name="parameter"/>'s columns [offset, offset + length), as views (the caller's dispose scope owns them).</summary>
    public CoordinateSums.BlockState Tensors(int parameter, long offset, long length, ScalarType stored)
    {
        var p = _layout.Parameters[parameter];
        return new CoordinateSums.BlockState(
            _fisher?.Segments[p.Segment].narrow(0, p.Offset + offset, length), _decay, Floor(parameter), Bias,
            Theta?.Segments[p.Segment].narrow(0, p.Offset + offset, length), _eta, stored);
    }

    /// <summary>Whether the managed kernel can read this whitening's state of segment <paramref name="segment"/> in place.</summary>
    public bool ManagedState(int segment) =>
        (_fisher is null || _fisher.Segments[segment].device_type == DeviceType.CPU)
        && (Theta is null || Theta.Segments[segment].device_type == DeviceType.CPU && Theta.Segments[segment].dtype == ScalarType.Float32);

    /// <summary>
    /// The state carried from window to window, to save and restore (by <c>copy_</c>) with <see cref="Updates"/> and
    /// <see cref="Floors"/>: F of each segment (float64, on the segments' devices). Empty without the fisher geometry.
    /// </summary>
    public IReadOnlyList<Tensor> StateTensors => _fisher?.Segments ?? [];

    /// <summary>The floors of F per parameter tensor, as the next window will use them (a copy; settable to restore).</summary>
    public double[] Floors
    {
        get => (double[])_next.Clone();
        set => Restore(value, _next);
    }

    /// <summary>The floors the last window used, which <see cref="Chunk"/> reads until the next (a copy; settable to restore).</summary>
    public double[] FloorsInUse
    {
        get => (double[])_floors.Clone();
        set => Restore(value, _floors);
    }

    /// <summary>Copies saved floors into <paramref name="target"/>, one per parameter tensor this session watches.</summary>
    private static void Restore(double[] saved, double[] target)
    {
        if (saved.Length != target.Length)
            throw new InvalidDataException($"The saved whitening has {saved.Length} floors; this session watches {target.Length} parameter tensors.");
        saved.CopyTo(target, 0);
    }

    /// <summary>
    /// D of <paramref name="geometry"/> for columns [<paramref name="offset"/>, <paramref name="offset"/> +
    /// <paramref name="length"/>) of segment <paramref name="segment"/>, as of the last window: a new flat tensor in
    /// <paramref name="dtype"/> (the caller's dispose scope owns it), or null for the euclidean geometry.
    /// </summary>
    /// <exception cref="InvalidOperationException">The geometry was not among those this whitening was created for.</exception>
    public Tensor? Chunk(Geometry geometry, int segment, long offset, long length, ScalarType dtype)
    {
        using var scalars = new ScalarScope();
        switch (geometry)
        {
            case Geometry.Euclidean:
                return null;
            case Geometry.Fisher:
            {
                var fisher = Required(_fisher, geometry).Segments[segment].narrow(0, offset, length);
                var raised = fisher.clone();
                for (int q = 0; q < _layout.Parameters.Count; q++)
                {
                    var p = _layout.Parameters[q];
                    long from = Math.Max(offset, p.Offset), to = Math.Min(offset + length, p.Offset + p.Count);
                    if (p.Segment != segment || to <= from || Floor(q) <= 0) continue;
                    var part = raised.narrow(0, from - offset, to - from);
                    part.copy_(part.clamp_min(scalars[Floor(q)]));
                }

                return FisherD(fisher, raised.mul_(scalars[Bias]), dtype);
            }
            case Geometry.Adaptive:
                return AdaptiveD(Required(Theta, geometry).Segments[segment].narrow(0, offset, length), _eta, dtype);
            default:
                throw new ArgumentOutOfRangeException(nameof(geometry), geometry, "One geometry at a time.");
        }
    }

    /// <summary>D of <paramref name="geometry"/> for a whole segment, in its compute dtype; null for euclidean.</summary>
    public Tensor? Segment(Geometry geometry, int segment)
    {
        var s = _layout.Segments[segment];
        return Chunk(geometry, segment, 0, s.Count, WindowChunks.ComputeType(s.DType));
    }

    private static FlatParameterBuffer Required(FlatParameterBuffer? state, Geometry geometry) =>
        state ?? throw new InvalidOperationException($"This whitening was created without the {geometry.ToName()} geometry.");

    public void Dispose() => _fisher?.Dispose();
}

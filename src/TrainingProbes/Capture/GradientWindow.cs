using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// K gradients kept on the parameters' device: a [K, Count] buffer per segment, allocated once and reused window after
/// window. A capture is one in-place copy per parameter into a preallocated view, with no new device memory and no host
/// transfer. With <see cref="WindowStorage.Sketch"/> each gradient is kept as a <see cref="GradientSketch"/> per
/// geometry instead, and no parameter-sized buffer is allocated. It holds the step family's ring of step gradients, and
/// the K micro-batch gradients of a model whose layers <see cref="MicroBatchWindow"/> cannot all tap.
/// </summary>
internal sealed unsafe class GradientWindow : IWindowSource, IDisposable
{
    private readonly List<Tensor> _owned = [];
    private readonly Tensor[] _buffers = [];      // per segment: [K, Count]
    private readonly Tensor[] _gradients = [];    // per parameter: [K, ...shape] view
    private readonly Tensor[][] _slots = [];      // per parameter: K views shaped like it
    private Func<int, Tensor?>? _gradientOf;

    /// <param name="layout">The watched parameters.</param>
    /// <param name="k">K, gradients per window.</param>
    /// <param name="storage">How the gradients are kept.</param>
    /// <param name="sketchDimension">d, with <see cref="WindowStorage.Sketch"/>.</param>
    /// <param name="sketchGeometries">The geometries sketched, with <see cref="WindowStorage.Sketch"/>.</param>
    /// <param name="eta">Adaptive eta, with <see cref="WindowStorage.Sketch"/>.</param>
    public GradientWindow(ParameterLayout layout, int k, WindowStorage storage = WindowStorage.Full,
        int sketchDimension = 0, Geometry sketchGeometries = Geometry.None, double eta = 0)
    {
        Layout = layout;
        K = k;
        Storage = storage;
        if (storage == WindowStorage.Sketch)
        {
            Sketch = new GradientSketch(this, sketchDimension,
                new[] { Geometry.Euclidean, Geometry.Adaptive }.Where(g => sketchGeometries.HasFlag(g)).ToArray(), eta);
            return;
        }

        using var scope = torch.NewDisposeScope();
        _buffers = layout.Segments.Select(segment => Own(torch.zeros([k, segment.Count],
            dtype: storage == WindowStorage.BFloat16 ? ScalarType.BFloat16 : segment.DType, device: segment.Device))).ToArray();
        _gradients = new Tensor[layout.Parameters.Count];
        _slots = new Tensor[layout.Parameters.Count][];
        for (int q = 0; q < layout.Parameters.Count; q++)
        {
            var p = layout.Parameters[q];
            var buffer = _buffers[p.Segment];
            _gradients[q] = Own(buffer.narrow(1, p.Offset, p.Count).view([k, .. p.Shape]));
            _slots[q] = new Tensor[k];
            for (int slot = 0; slot < k; slot++)
                _slots[q][slot] = Own(buffer[slot].narrow(0, p.Offset, p.Count).view(p.Shape));
        }
    }

    /// <summary>A window of <paramref name="k"/> gradients over <paramref name="layout"/>, kept as <paramref name="options"/>' Storage says.</summary>
    public static GradientWindow For(ParameterLayout layout, ProbeOptions options, int k) =>
        new(layout, k, options.Storage, options.SketchDimension, options.Geometries, options.AdaptiveEta);

    public int K { get; }

    public ParameterLayout Layout { get; }

    public WindowStorage Storage { get; }

    /// <summary>Unknown for a buffer of captured minibatch gradients: NaN.</summary>
    public double ExamplesPerGradient => double.NaN;

    public ScalarType Stored => Storage == WindowStorage.BFloat16 ? ScalarType.BFloat16
        : Layout.Segments.All(s => s.DType == ScalarType.Float64) ? ScalarType.Float64
        : Layout.Segments.Any(s => s.DType == ScalarType.BFloat16) ? ScalarType.BFloat16
        : Layout.Segments.Any(s => s.DType == ScalarType.Float16) ? ScalarType.Float16
        : ScalarType.Float32;

    /// <summary>The sketches, with <see cref="WindowStorage.Sketch"/>; null otherwise.</summary>
    public GradientSketch? Sketch { get; }

    public IReadOnlyList<CapturedParameter> Parameters => Layout.Parameters;

    public IReadOnlyList<WindowSegment> Segments => Layout.Segments;

    /// <summary>Segment <paramref name="segment"/>'s [K, Count] buffer (null with sketches).</summary>
    public Tensor SegmentGradients(int segment) => _buffers[segment];

    /// <summary>Parameter <paramref name="parameter"/>'s [K, ...shape] view of the buffer.</summary>
    public Tensor ParameterGradients(int parameter) => _gradients[parameter];

    /// <summary>
    /// Copies each parameter's current gradient into <paramref name="slot"/>. A parameter that requires a gradient but
    /// received none this step (not used by the forward pass) counts as a zero gradient. Call inside a dispose scope and
    /// with gradients disabled.
    /// </summary>
    public void Capture(int slot)
    {
        if (Sketch is not null)
        {
            Sketch.Store(slot, _gradientOf ??= q => Layout.Parameters[q].Parameter.grad);   // one delegate, not one per step
            return;
        }

        for (int q = 0; q < _slots.Length; q++)
        {
            var target = _slots[q][slot];
            var grad = Layout.Parameters[q].Parameter.grad;
            if (grad is null || grad.IsInvalid) target.zero_();
            else target.copy_(grad);
        }
    }

    /// <summary>
    /// Copies the given gradients (one per watched parameter, in layout order; null for a parameter the loss does not
    /// use, which counts as zero) into <paramref name="slot"/>.
    /// </summary>
    public void Store(int slot, IReadOnlyList<Tensor?> gradients)
    {
        if (Sketch is not null)
        {
            Sketch.Store(slot, q => gradients[q]);
            return;
        }

        for (int q = 0; q < _slots.Length; q++)
        {
            var target = _slots[q][slot];
            var grad = gradients[q];
            if (grad is null || grad.IsInvalid) target.zero_();
            else target.copy_(grad);
        }
    }

    /// <summary>Blocks of a parameter's columns: the managed kernel reads CPU float32 rows in place; others go as tensors in chunks.</summary>
    public void Read(int parameter, BlockSink sink)
    {
        if (Sketch is not null) throw new InvalidOperationException("A sketched window keeps no gradients to read.");
        var p = Layout.Parameters[parameter];
        var buffer = _buffers[p.Segment];
        if (Statistics.WindowKernel.Supports(buffer))
        {
            float* start = Statistics.WindowKernel.Address<float>(buffer) + p.Offset;
            long columns = buffer.shape[1];
            var rows = stackalloc float*[K];
            for (int i = 0; i < K; i++) rows[i] = start + i * columns;
            sink.Managed(rows, 0, p.Count);
            return;
        }

        long chunk = Statistics.WindowChunks.Columns(Layout.Segments[p.Segment].Device, K);
        for (long offset = 0; offset < p.Count; offset += chunk)
        {
            using var scope = torch.NewDisposeScope();
            long length = Math.Min(chunk, p.Count - offset);
            var block = buffer.narrow(1, p.Offset + offset, length);
            sink.Tensor(block.dtype is ScalarType.Float32 or ScalarType.Float64 ? block : block.to(ScalarType.Float32), offset);
        }
    }

    public Tensor Gradients(int parameter) =>
        Sketch is null
            ? _gradients[parameter].alias()
            : throw new InvalidOperationException(
                "This window keeps CountSketches of the gradients (ProbeOptions.Storage = Sketch), not the gradients themselves; use Storage = Full or BFloat16 for a probe that reads them.");

    private Tensor Own(Tensor tensor)
    {
        tensor.DetachFromDisposeScope();
        _owned.Add(tensor);
        return tensor;
    }

    public void Dispose()
    {
        Sketch?.Dispose();
        foreach (var tensor in _owned) tensor.Dispose();
        _owned.Clear();
    }
}

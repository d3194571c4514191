using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>One selected parameter and where its values live in the flat buffers of its segment.</summary>
internal sealed class CapturedParameter
{
    public required string Name { get; init; }
    public required Parameter Parameter { get; init; }
    public required int Segment { get; init; }
    public required long Offset { get; init; }
    public required long Count { get; init; }
    public required long[] Shape { get; init; }

    /// <summary>K views, one per slot, each shaped like the parameter, into the segment's gradient buffer.</summary>
    public Tensor[] Slots { get; set; } = [];

    /// <summary>A [K, ...shape] view of this parameter's captured gradients.</summary>
    public Tensor Gradients { get; set; } = null!;
}

/// <summary>
/// Parameters that share a device and a dtype, laid out one after the other in flat buffers,
/// so that statistics over all of them are one matrix product.
/// </summary>
internal sealed class WindowSegment
{
    public required Device Device { get; init; }
    public required ScalarType DType { get; init; }
    public required long Count { get; init; }

    /// <summary>
    /// [K, Count] buffer of the window's gradients, allocated once: in <see cref="DType"/>, or bfloat16 with
    /// <see cref="WindowStorage.BFloat16"/>. Null with <see cref="WindowStorage.Sketch"/> (see <see cref="GradientWindow.Sketch"/>).
    /// </summary>
    public Tensor Gradients { get; set; } = null!;
}

/// <summary>
/// The device-resident ring of the K gradients of the current window. Allocated once at attach time and
/// reused window after window; a capture is one in-place copy per parameter into a preallocated view,
/// with no new device memory and no host transfer. With <see cref="WindowStorage.Sketch"/> a capture is a
/// <see cref="GradientSketch"/> of each geometry instead, and no parameter-sized buffer is kept.
/// </summary>
internal sealed class GradientWindow : IDisposable
{
    private readonly List<Tensor> _owned = [];
    private Func<int, Tensor?>? _gradientOf;

    /// <param name="model">The model whose parameters are watched.</param>
    /// <param name="filter">Which parameters (by name); null: all that require a gradient.</param>
    /// <param name="k">K, gradients per window.</param>
    /// <param name="storage">How the gradients are kept.</param>
    /// <param name="sketchDimension">d, with <see cref="WindowStorage.Sketch"/>.</param>
    /// <param name="sketchGeometries">The geometries sketched, with <see cref="WindowStorage.Sketch"/>.</param>
    /// <param name="eta">Adaptive eta, with <see cref="WindowStorage.Sketch"/>.</param>
    public GradientWindow(nn.Module model, Func<string, bool>? filter, int k, WindowStorage storage = WindowStorage.Full,
        int sketchDimension = 0, Geometry sketchGeometries = Geometry.None, double eta = 0)
    {
        K = k;
        var selected = Watchable(model, filter).ToList();

        if (selected.Count == 0)
            throw new ArgumentException(
                "No parameter to watch: the model has no parameter that requires a gradient" +
                (filter is null ? "." : " and passes ParameterFilter. Check the filter against model.named_parameters() names."),
                nameof(model));

        var segments = new List<WindowSegment>();
        var counts = new List<long>();
        var parameters = new List<CapturedParameter>();
        foreach (var (name, parameter) in selected)
        {
            var device = parameter.device;
            int index = segments.FindIndex(s => s.Device.type == device.type && s.Device.index == device.index && s.DType == parameter.dtype);
            if (index < 0)
            {
                segments.Add(new WindowSegment { Device = device, DType = parameter.dtype, Count = 0 });
                counts.Add(0);
                index = segments.Count - 1;
            }

            long count = parameter.numel();
            parameters.Add(new CapturedParameter
            {
                Name = name, Parameter = parameter, Segment = index, Offset = counts[index], Count = count, Shape = parameter.shape,
            });
            counts[index] += count;
        }

        Segments = segments.Select((s, i) => new WindowSegment { Device = s.Device, DType = s.DType, Count = counts[i] }).ToArray();
        Parameters = parameters;

        if (storage == WindowStorage.Sketch)
        {
            Sketch = new GradientSketch(this, sketchDimension,
                new[] { Geometry.Euclidean, Geometry.Adaptive }.Where(g => sketchGeometries.HasFlag(g)).ToArray(), eta);
            return;
        }

        using var scope = torch.NewDisposeScope();
        foreach (var segment in Segments)
            segment.Gradients = Own(torch.zeros([k, segment.Count],
                dtype: storage == WindowStorage.BFloat16 ? ScalarType.BFloat16 : segment.DType, device: segment.Device));
        foreach (var p in Parameters)
        {
            var buffer = Segments[p.Segment].Gradients;
            p.Gradients = Own(buffer.narrow(1, p.Offset, p.Count).view([k, .. p.Shape]));
            p.Slots = new Tensor[k];
            for (int slot = 0; slot < k; slot++)
                p.Slots[slot] = Own(buffer[slot].narrow(0, p.Offset, p.Count).view(p.Shape));
        }
    }

    /// <summary>The model's parameters a window watches: those that require a gradient and pass the filter.</summary>
    private static IEnumerable<(string Name, Parameter Parameter)> Watchable(nn.Module model, Func<string, bool>? filter) =>
        model.named_parameters().Where(p => p.parameter.requires_grad && (filter is null || filter(p.name))).Select(p => (p.name, p.parameter));

    /// <summary>
    /// How the model's parameters differ from the watched ones, or null when they do not: a watched parameter that the
    /// model no longer holds under its name (replaced, or moved to another dtype or device by <c>model.to</c>), which
    /// makes the window's gradients meaningless (<paramref name="replaced"/> true); or a parameter that requires a
    /// gradient and is not watched (a module added after attach), which the window leaves out.
    /// </summary>
    public string? Mismatch(nn.Module model, Func<string, bool>? filter, out bool replaced)
    {
        replaced = false;
        var current = new Dictionary<string, Parameter>(StringComparer.Ordinal);
        foreach (var (name, parameter) in model.named_parameters()) current[name] = parameter;
        foreach (var watched in Parameters)
        {
            if (!current.TryGetValue(watched.Name, out var now))
            {
                replaced = true;
                return $"the watched parameter {watched.Name} is no longer in the model";
            }

            // A replaced parameter is a new object, and TorchSharp disposes the one it replaces (its handle is then invalid).
            if (!ReferenceEquals(now, watched.Parameter) || watched.Parameter.IsInvalid || now.dtype != Segments[watched.Segment].DType
                || now.device_type != Segments[watched.Segment].Device.type || now.device_index != Segments[watched.Segment].Device.index)
            {
                replaced = true;
                return $"{watched.Name} was replaced or moved after attach (now {now.dtype} on {now.device}; watched: {Segments[watched.Segment].DType} on {Segments[watched.Segment].Device})";
            }
        }

        if (current.Count == Parameters.Count) return null;   // every one of the model's parameters is watched
        var watchedNames = Parameters.Select(w => w.Name).ToHashSet(StringComparer.Ordinal);
        var added = Watchable(model, filter).Select(p => p.Name).Where(name => !watchedNames.Contains(name)).ToList();
        return added.Count == 0 ? null : $"{added.Count} parameter(s) that require a gradient are not watched (added or unfrozen after attach): {string.Join(", ", added.Take(5))}{(added.Count > 5 ? ", ..." : "")}";
    }

    /// <summary>A window of <paramref name="options"/>' K over <paramref name="model"/>'s watched parameters, kept as its Storage says.</summary>
    public static GradientWindow For(nn.Module model, ProbeOptions options) =>
        new(model, options.ParameterFilter, options.WindowSize, options.Storage, options.SketchDimension, options.Geometries, options.AdaptiveEta);

    public int K { get; }

    /// <summary>The sketches, with <see cref="WindowStorage.Sketch"/>; null otherwise.</summary>
    public GradientSketch? Sketch { get; }

    public IReadOnlyList<WindowSegment> Segments { get; }

    public IReadOnlyList<CapturedParameter> Parameters { get; }

    public long ParameterCount => Segments.Sum(s => s.Count);

    /// <summary>
    /// Copies each parameter's current gradient into <paramref name="slot"/>. A parameter that requires a
    /// gradient but received none this step (not used by the forward pass) counts as a zero gradient.
    /// Call inside a dispose scope and with gradients disabled.
    /// </summary>
    public void Capture(int slot)
    {
        if (Sketch is not null)
        {
            Sketch.Store(slot, _gradientOf ??= q => Parameters[q].Parameter.grad);   // one delegate, not one per step
            return;
        }

        foreach (var p in Parameters)
        {
            var target = p.Slots[slot];
            var grad = p.Parameter.grad;
            if (grad is null || grad.IsInvalid)
                target.zero_();
            else
                target.copy_(grad);
        }
    }

    /// <summary>
    /// Copies the given gradients (one per watched parameter, in <see cref="Parameters"/> order; null for a parameter
    /// the loss does not use, which counts as zero) into <paramref name="slot"/>.
    /// </summary>
    public void Store(int slot, IReadOnlyList<Tensor?> gradients)
    {
        if (Sketch is not null)
        {
            Sketch.Store(slot, q => gradients[q]);
            return;
        }

        for (int i = 0; i < Parameters.Count; i++)
        {
            var target = Parameters[i].Slots[slot];
            var grad = gradients[i];
            if (grad is null || grad.IsInvalid) target.zero_();
            else target.copy_(grad);
        }
    }

    /// <summary>Allocates a flat buffer per segment, with per-parameter views, for parameter-shaped state.</summary>
    /// <param name="minimum">Floating-point type the buffer is widened to when the parameters' dtype is narrower
    /// (for example float16 to float32); null keeps each segment's parameter dtype.</param>
    public FlatParameterBuffer CreateFlatBuffer(ScalarType? minimum = null) => new(this, minimum);

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

/// <summary>
/// Parameter-shaped state laid out like the window's segments (one flat [Count] tensor per segment),
/// allocated once and owned by whoever created it.
/// </summary>
internal sealed class FlatParameterBuffer : IDisposable
{
    private readonly GradientWindow _window;
    private readonly Tensor[] _views;

    public FlatParameterBuffer(GradientWindow window, ScalarType? minimum)
    {
        _window = window;
        using var scope = torch.NewDisposeScope();
        Segments = window.Segments
            .Select(s => torch.zeros(s.Count, dtype: Widen(s.DType, minimum), device: s.Device).DetachFromDisposeScope())
            .ToArray();
        _views = window.Parameters
            .Select(p => Segments[p.Segment].narrow(0, p.Offset, p.Count).view(p.Shape).DetachFromDisposeScope())
            .ToArray();
    }

    private static ScalarType Widen(ScalarType type, ScalarType? minimum) =>
        minimum is ScalarType.Float32 && type is not (ScalarType.Float32 or ScalarType.Float64) ? ScalarType.Float32
        : minimum is ScalarType.Float64 ? ScalarType.Float64
        : type;

    /// <summary>One flat tensor per segment of the window.</summary>
    public Tensor[] Segments { get; }

    /// <summary>Copies the current values of the watched parameters into the buffer (no host transfer).</summary>
    public void LoadParameters()
    {
        var parameters = _window.Parameters;
        for (int i = 0; i < parameters.Count; i++)
            _views[i].copy_(parameters[i].Parameter);
    }

    /// <summary>Copies the buffer back into the watched parameters, exactly (no gradient is recorded).</summary>
    public void StoreToParameters()
    {
        using var noGrad = torch.no_grad();
        var parameters = _window.Parameters;
        for (int i = 0; i < parameters.Count; i++)
            parameters[i].Parameter.copy_(_views[i]);
    }

    /// <summary>
    /// Exchanges the buffer's values with the watched parameters', exactly, through a work space of at most
    /// <see cref="SwapChunk"/> elements: one copy of theta is enough to visit another theta and come back.
    /// </summary>
    public void SwapWithParameters()
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var parameters = _window.Parameters;
        // Every work space first (one per segment: its parameters share a device and a dtype), so that nothing is
        // exchanged when one cannot be allocated.
        var segments = _window.Segments;
        var work = new Tensor[segments.Count];
        for (int s = 0; s < work.Length; s++)
            work[s] = torch.empty(Math.Min(SwapChunk, parameters.Where(p => p.Segment == s).Max(p => p.Count)), segments[s].DType, segments[s].Device);

        int done = 0;
        long reached = 0;   // elements of parameter `done` exchanged so far
        try
        {
            for (; done < parameters.Count; done++)
            {
                reached = 0;
                Swap(done, work, long.MaxValue, ref reached);
            }
        }
        catch
        {
            // Exchange back exactly what was exchanged, then report the failure.
            long ignored = 0;
            for (int i = 0; i < done; i++) Swap(i, work, long.MaxValue, ref ignored);
            if (done < parameters.Count) Swap(done, work, reached, ref ignored);
            throw;
        }
    }

    /// <summary>Exchanges the first <paramref name="limit"/> elements of parameter <paramref name="index"/> with the buffer, counting them in <paramref name="reached"/>.</summary>
    private void Swap(int index, Tensor[] work, long limit, ref long reached)
    {
        var parameter = _window.Parameters[index].Parameter;
        if (!parameter.is_contiguous())
        {
            if (limit < parameter.numel()) return;   // exchanged whole or not at all
            var saved = parameter.detach().clone();
            parameter.copy_(_views[index]);
            _views[index].copy_(saved);
            reached = parameter.numel();
            return;
        }

        var mine = _views[index].view(-1);
        var theirs = parameter.detach().view(-1);
        long n = Math.Min(theirs.numel(), limit);
        var space = work[_window.Parameters[index].Segment];
        for (long offset = 0; offset < n; offset += SwapChunk)
        {
            long length = Math.Min(SwapChunk, n - offset);
            var a = theirs.narrow(0, offset, length);
            var b = mine.narrow(0, offset, length);
            var t = space.narrow(0, 0, length).copy_(a);
            a.copy_(b);
            b.copy_(t);
            reached = offset + length;
        }
    }

    /// <summary>Elements per step of <see cref="SwapWithParameters"/>.</summary>
    public const long SwapChunk = 1 << 20;

    /// <summary>The view of parameter <paramref name="index"/> (in the window's order) in this buffer.</summary>
    public Tensor View(int index) => _views[index];

    public void Dispose()
    {
        foreach (var view in _views) view.Dispose();
        foreach (var segment in Segments) segment.Dispose();
    }
}

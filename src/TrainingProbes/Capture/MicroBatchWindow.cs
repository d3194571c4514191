using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// The default window: the K micro-batch gradients of one training step's minibatch, at the step's parameters (after
/// <c>backward()</c>, before <c>optimizer.step()</c>). The first K floor(b / K) examples of the batch are split into K
/// micro-batches of equal size; gradient k is the mean loss gradient of micro-batch k (K times its share of the batch's
/// gradient), so their mean is the gradient of the batch.
/// <para>
/// When every watched parameter belongs to a layer a <see cref="LayerTap"/> understands, the window costs one forward and
/// one backward pass of the batch: the layers' inputs and output gradients are kept, and each micro-batch's gradient is
/// made from them only when the statistics read it (on the statistics worker), block by block, so no K x P buffer exists.
/// Otherwise (other layers, a parameter shared between modules, a forward that calls its layers' <c>forward</c> instead
/// of <c>call</c>, which skips hooks) it runs K forward and backward passes, one per micro-batch, into a K x P buffer.
/// The model's buffers (BatchNorm's running statistics), mode and CPU random state are restored after either.
/// </para>
/// </summary>
internal sealed class MicroBatchWindow : IWindowSource, IDisposable
{
    private readonly ParameterLayout _layout;
    private readonly Func<GradientWindow> _createBuffer;
    private readonly LayerTap[] _taps;
    private readonly LayerTap?[] _tapOf;          // per watched parameter: the tap that makes its gradients, or null
    private GradientWindow? _buffer;              // the passes' K x P buffer, made when first needed
    private bool _lastWasPasses;

    /// <param name="layout">The watched parameters.</param>
    /// <param name="model">The model, whose layers are tapped.</param>
    /// <param name="k">K, micro-batches per window.</param>
    /// <param name="createBuffer">Makes the K x P buffer for the passes (full, bfloat16 or sketched, as the session stores).</param>
    public MicroBatchWindow(ParameterLayout layout, nn.Module model, int k, Func<GradientWindow> createBuffer)
    {
        _layout = layout;
        _createBuffer = createBuffer;
        K = k;
        // TorchSharp's modules() leaves the model itself out: a bare Linear is a model too.
        var modules = new[] { model }.Concat(model.modules()).Distinct(ReferenceEqualityComparer.Instance).Cast<nn.Module>().ToList();
        var owners = new Dictionary<Parameter, int>(ReferenceEqualityComparer.Instance);
        foreach (var module in modules)
            foreach (var parameter in module.parameters(recurse: false))
                owners[parameter] = owners.GetValueOrDefault(parameter) + 1;

        var taps = new List<LayerTap>();
        _tapOf = new LayerTap?[layout.Parameters.Count];
        var index = new Dictionary<Parameter, int>(ReferenceEqualityComparer.Instance);
        for (int q = 0; q < layout.Parameters.Count; q++) index[layout.Parameters[q].Parameter] = q;
        foreach (var module in modules)
        {
            if (LayerTap.For(module) is not { } tap) continue;
            bool used = false;
            foreach (var parameter in new[] { tap.Weight, tap.Bias })
            {
                if (parameter is null || !index.TryGetValue(parameter, out int q) || owners[parameter] != 1) continue;
                _tapOf[q] = tap;
                used = true;
            }

            if (used) taps.Add(tap);
            else tap.Dispose();
        }

        _taps = [.. taps];
        var uncovered = layout.Parameters.Where((p, q) => _tapOf[q] is null).Select(p => p.Name).ToList();
        if (uncovered.Count > 0)
            PassesReason = $"{uncovered.Count} watched parameter(s) are not in a Linear or convolution layer of their own " +
                $"({string.Join(", ", uncovered.Take(3))}{(uncovered.Count > 3 ? ", ..." : "")})";
    }

    public int K { get; }

    public ParameterLayout Layout => _layout;

    /// <summary>floor(b / K) of the last captured batch b; NaN before the first capture.</summary>
    public double ExamplesPerGradient { get; private set; } = double.NaN;

    public ScalarType Stored => _lastWasPasses && _buffer is not null ? _buffer.Stored
        : _layout.Segments.All(s => s.DType == ScalarType.Float64) ? ScalarType.Float64
        : _layout.Segments.Any(s => s.DType == ScalarType.BFloat16) ? ScalarType.BFloat16
        : _layout.Segments.Any(s => s.DType == ScalarType.Float16) ? ScalarType.Float16
        : ScalarType.Float32;

    /// <summary>Why windows take K passes instead of one, or null while one pass serves.</summary>
    public string? PassesReason { get; private set; }

    /// <summary>Whether the last window's gradients came from K passes (its buffer) rather than one pass.</summary>
    public bool UsedPasses => _lastWasPasses;

    /// <summary>The K x P buffer of the passes, if one was made (for memory accounting and tests).</summary>
    public GradientWindow? Buffer => _buffer;

    /// <summary>
    /// Takes the K micro-batch gradients of (<paramref name="input"/>, <paramref name="target"/>) at the current
    /// parameters, on the training thread. The parameters' <c>.grad</c> stays as the trainer left it (the gradients come
    /// from <c>autograd.grad</c>). Call with gradients disabled, inside a dispose scope.
    /// </summary>
    /// <exception cref="InvalidOperationException">The loss function returned something that cannot be differentiated.</exception>
    public void Capture(nn.Module model, Func<Tensor, Tensor> forward, Func<Tensor, Tensor, Tensor> loss, Tensor input, Tensor target)
    {
        long batch = input.shape[0];
        long perMicro = batch / K;
        if (perMicro < 1)
            throw new ArgumentException($"A batch of {batch} examples cannot be split into K = {K} micro-batches.", nameof(input));
        long examples = perMicro * K;
        ExamplesPerGradient = perMicro;
        var x = examples == batch ? input : input.narrow(0, 0, examples);
        var y = examples == batch ? target : target.narrow(0, 0, examples);

        using var state = new ModelStateGuard(model);
        if (PassesReason is null && OnePass(forward, loss, x, y, examples) is { } reason) PassesReason = reason;
        else if (PassesReason is null)
        {
            _lastWasPasses = false;
            return;
        }

        Passes(forward, loss, x, y, perMicro);
        _lastWasPasses = true;
    }

    /// <summary>One forward and one backward pass with the taps attached; returns why it cannot serve, or null.</summary>
    private string? OnePass(Func<Tensor, Tensor> forward, Func<Tensor, Tensor, Tensor> loss, Tensor x, Tensor y, long examples)
    {
        Tensor value;
        foreach (var tap in _taps) tap.Attach();
        try
        {
            using (torch.enable_grad()) value = loss(forward(x), y);
        }
        finally
        {
            foreach (var tap in _taps) tap.Detach();
        }

        foreach (var tap in _taps)
            if (tap.Calls == 0)
            {
                foreach (var other in _taps) other.Release();
                return $"the forward pass did not call {tap.Module.GetType().Name} layer(s) through call() (hooks run only there)";
            }

        CheckLoss(value);
        var zeros = _taps.SelectMany(t => t.Zeros).ToArray();
        IList<Tensor> gradients;
        using (torch.enable_grad())
            gradients = torch.autograd.grad([value], zeros, retain_graph: false, create_graph: false, allow_unused: true);
        int next = 0;
        foreach (var tap in _taps)
        {
            var mine = new Tensor?[tap.Calls];
            for (int c = 0; c < mine.Length; c++, next++)
                mine[c] = gradients[next] is { IsInvalid: false } g ? g : null;
            if (tap.Keep(mine, examples, K) is { } reason)
            {
                foreach (var other in _taps) other.Release();
                return $"a {tap.Module.GetType().Name} layer's {reason}";
            }
        }

        return null;
    }

    /// <summary>K forward and backward passes, one per micro-batch, into the buffer.</summary>
    private void Passes(Func<Tensor, Tensor> forward, Func<Tensor, Tensor, Tensor> loss, Tensor x, Tensor y, long perMicro)
    {
        foreach (var tap in _taps) tap.Release();
        _buffer ??= _createBuffer();
        var parameters = _layout.Parameters.Select(p => (Tensor)p.Parameter).ToArray();
        for (int i = 0; i < K; i++)
        {
            using var scope = torch.NewDisposeScope();
            Tensor value;
            using (torch.enable_grad())
                value = loss(forward(x.narrow(0, i * perMicro, perMicro)), y.narrow(0, i * perMicro, perMicro));
            _buffer.Store(i, WatchedGradients.Of(value, parameters, "The micro-batch window"));
        }
    }

    private static void CheckLoss(Tensor value)
    {
        if (value.IsInvalid) throw new InvalidOperationException("The loss function returned a disposed tensor.");
        if (value.numel() != 1)
            throw new InvalidOperationException($"The loss function returned a tensor of shape [{string.Join(", ", value.shape)}]; it must return the scalar mean loss of the batch.");
        if (!value.requires_grad)
            throw new InvalidOperationException(
                "The loss does not require a gradient, so it cannot be differentiated. Was it computed under torch.no_grad(), detached, or from a model whose parameters are all frozen?");
    }

    public void Read(int parameter, BlockSink sink)
    {
        if (_lastWasPasses) _buffer!.Read(parameter, sink);
        else _tapOf[parameter]!.Read(_layout.Parameters[parameter].Parameter, K, sink);
    }

    public Tensor Gradients(int parameter) =>
        _lastWasPasses ? _buffer!.Gradients(parameter) : _tapOf[parameter]!.Gradients(_layout.Parameters[parameter].Parameter, K);

    /// <summary>The sketched buffer of the last window's passes, or null (the statistics then read sketches).</summary>
    public GradientWindow? Sketched => _lastWasPasses && _buffer?.Sketch is not null ? _buffer : null;

    /// <summary>Frees what the last window kept (the layers' inputs and output gradients).</summary>
    public void Release()
    {
        foreach (var tap in _taps) tap.Release();
    }

    public void Dispose()
    {
        foreach (var tap in _taps) tap.Dispose();
        _buffer?.Dispose();
    }
}

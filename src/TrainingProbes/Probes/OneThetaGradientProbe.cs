using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Capture;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Probes;

/// <summary>
/// The default indicators: the first-order family (gradient agreement, regret, contrastive flatness, noise, GSNR and
/// EB, with their standard errors) of K minibatch gradients taken at one theta. The window's own K step batches are
/// kept on their device while the window is captured, and when it closes they are evaluated at the window's first
/// theta, the parameters before any of those batches was trained on. A window costs K extra forward and backward
/// passes (and one parameter copy, exchanged with the parameters for the evaluations), and no extra data. All K go through the loss function, so what the trainer does
/// to its own <c>.grad</c> (clipping, loss scaling, accumulation, extra penalty terms) does not mix into them.
/// </summary>
/// <remarks>
/// Passive step gradients come from K different parameter vectors: plain SGD overshoots across valleys, consecutive
/// step gradients anti-correlate, and their statistics measure the optimizer (they are published as
/// <c>step.*</c>). At one theta the minibatches differ only in their data, which is what generalization is about; and
/// at the first theta none of them has been fitted yet (at the last theta the optimizer has just lowered the loss of
/// each of them, which biases their agreement). The extra passes use <c>autograd.grad</c> (the parameters' <c>.grad</c>
/// stays as the trainer left it); the parameters are put back exactly, and the model's buffers, mode and CPU random
/// state are restored after them (TorchSharp cannot save a CUDA generator's state: on a GPU, dropout draws after a
/// window differ unless the model has none). Only the watched parameters (<see cref="ProbeOptions.ParameterFilter"/>)
/// are moved to the first theta; parameters the filter leaves out stay where they are. Without the step's batch and loss function
/// (<c>model.Probe(loss, optimizer, input, target, lossFunction.call)</c> or <see cref="ProbeOptions.Loss"/>) the probe
/// says once what it misses and publishes nothing.
/// </remarks>
internal sealed class OneThetaGradientProbe(ProbeOptions options) : TrainingProbe, Session.IStatefulPart
{
    private ProbeSession? _session;
    private GradientWindow? _buffer;
    private FirstOrderFamily? _family;
    private Parameter[] _parameters = [];
    private FlatParameterBuffer? _first;   // theta at the window's first step; during the evaluations, theta at its close
    private Tensor?[] _inputs = [];
    private Tensor?[] _targets = [];
    private bool[] _stored = [];
    private bool _toldMissing;

    public override string Name => "gradient";

    public override void OnSessionStart(ProbeSession session)
    {
        _session = session;
        _buffer = GradientWindow.For(session.Model, options);
        _parameters = _buffer.Parameters.Select(p => p.Parameter).ToArray();
        _family = new FirstOrderFamily(options, options.Geometries, _buffer, prefix: "", options.LayerMetrics, options.SmoothingWindows);
        _first = _buffer.CreateFlatBuffer();
        _inputs = new Tensor?[options.WindowSize];
        _targets = new Tensor?[options.WindowSize];
        _stored = new bool[options.WindowSize];
    }

    public override void OnStep(ProbeStepContext step)
    {
        int slot = step.WindowSlot;
        if (slot < 0) return;
        _stored[slot] = false;
        if (slot == 0) _first!.LoadParameters();
        if (step.Input is null || step.Target is null) return;
        _inputs[slot] = Keep(_inputs[slot], step.Input);
        _targets[slot] = Keep(_targets[slot], step.Target);
        _stored[slot] = true;
    }

    /// <summary>Copies <paramref name="value"/> into <paramref name="slot"/>, reallocating it only when its shape, dtype or device changed.</summary>
    private static Tensor Keep(Tensor? slot, Tensor value)
    {
        if (slot is null || slot.dtype != value.dtype || slot.device_type != value.device_type || slot.device_index != value.device_index
            || !slot.shape.SequenceEqual(value.shape))
        {
            slot?.Dispose();
            slot = torch.empty_like(value).DetachFromDisposeScope();
        }

        return slot.copy_(value);
    }

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        var session = _session!;
        int k = options.WindowSize;
        var loss = session.LossFunction;
        Func<Tensor, Tensor>? forward = session.Options.Forward;
        if (forward is null && session.Model is nn.Module<Tensor, Tensor> module) forward = module.call;
        string? missing = loss is null ? "a loss function"
            : forward is null ? $"a forward function ({session.Model.GetType().Name} is not a Module<Tensor, Tensor>: set ProbeOptions.Forward)"
            : _stored.Contains(false) ? "the input and target of each step of the window"
            : null;
        if (missing is not null)
        {
            TellOnce(session, missing);
            return;
        }

        var buffer = _buffer!;
        using var state = new ModelStateGuard(session.Model);
        _first!.SwapWithParameters();   // the parameters at the first theta, the buffer holding the last
        try
        {
            using (torch.enable_grad())
                for (int i = 0; i < k; i++)
                {
                    using var scope = torch.NewDisposeScope();
                    var value = loss!(forward!(_inputs[i]!), _targets[i]!);
                    // Only the watched parameters that still require a gradient (one frozen after attach gets none).
                    buffer.Store(i, WatchedGradients.Of(value, _parameters, "The one-theta gradient probe"));
                }

            _family!.Compute(window);   // while the parameters are at the first theta: the adaptive geometry reads them
        }
        finally
        {
            _first.SwapWithParameters();
        }
    }

    private void TellOnce(ProbeSession session, string missing)
    {
        if (_toldMissing) return;
        _toldMissing = true;
        string message =
            $"[probes] the generalization indicators (gradient.*, regret.*, flatness.*) need K minibatch gradients at one theta, and this session has no {missing}. " +
            "Pass them in the one line: model.Probe(loss, optimizer, input, target, lossFunction.call) (or set ProbeOptions.Loss). " +
            "Until then only the optimizer's step-to-step statistics (step.*) are published.";
        session.Options.Output?.WriteLine(message);
        session.Logger.LogWarning("{Message}", message);
    }

    public override void OnSessionEnd()
    {
        _family?.Dispose();
        _first?.Dispose();
        _buffer?.Dispose();
        foreach (var t in _inputs.Concat(_targets)) t?.Dispose();
    }

    public string StateKey => Name;

    public void Save(Session.SessionStateWriter state) => _family?.Save(state.For("family"));

    public Action Prepare(Session.SessionStateReader state) =>
        _family?.Prepare(state.For("family")) ?? throw new InvalidDataException($"The probe '{Name}' did not start, so it has no state to restore.");
}

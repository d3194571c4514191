using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Optimizers;

/// <summary>
/// TorchSharp's <see cref="SGD"/> with a <see cref="step"/> that keeps its scalars alive: a drop-in replacement for
/// <c>torch.optim.SGD</c> in trainers whose process collects garbage on other threads (a scrape endpoint, a UI, a
/// data loader).
/// </summary>
/// <remarks>
/// <para>
/// TorchSharp 0.107's optimizers pass their hyperparameters to native code as implicit <see cref="Scalar"/>
/// conversions (<c>param.add_(grad, alpha: -lr)</c>) and keep no reference to them during the call. A garbage
/// collection on another thread at that moment can finalize the scalar and free it while the native call reads it;
/// the step then throws <c>ExternalException: Expected false to be true</c> from <c>c10::Scalar::toFloat</c>, or
/// reads a recycled value. The README's "Known issues" section has the details and the reproduction.
/// </para>
/// <para>
/// This class derives from <see cref="SGD"/> and overrides only <see cref="step"/>: the same update, option by option
/// (momentum, dampening, weight decay, Nesterov, maximize), on the same state, parameter groups, learning-rate
/// schedulers and <c>state_dict</c>; unit tests compare its parameters with <see cref="SGD"/>'s after every step. Its
/// constructors take the arguments of <see cref="SGD"/>'s (the learning rate is <c>lr</c>, where the factory
/// <c>torch.optim.SGD</c> names it <c>learningRate</c>).
/// Each scalar is made explicitly, held until the step ends, and disposed. Other TorchSharp optimizers have the same
/// fault: <see cref="GcSafeAdam"/> and <see cref="GcSafeAdamW"/> replace Adam and AdamW.
/// </para>
/// </remarks>
public sealed class GcSafeSgd : SGD
{
    /// <summary>Creates the optimizer; the arguments are those of <c>torch.optim.SGD</c>.</summary>
    /// <param name="parameters">The parameters to optimize.</param>
    /// <param name="lr">Learning rate.</param>
    /// <param name="momentum">Momentum factor.</param>
    /// <param name="dampening">Dampening for momentum.</param>
    /// <param name="weight_decay">Weight decay (L2 penalty).</param>
    /// <param name="nesterov">Enables Nesterov momentum.</param>
    /// <param name="maximize">Maximize the objective instead of minimizing it.</param>
    public GcSafeSgd(IEnumerable<Parameter> parameters, double lr, double momentum = 0.0, double dampening = 0, double weight_decay = 0, bool nesterov = false, bool maximize = false)
        : base(parameters, lr, momentum, dampening, weight_decay, nesterov, maximize)
    {
    }

    /// <summary>Creates the optimizer over parameter groups (each may set its own options); the other arguments are the defaults.</summary>
    /// <param name="parameters">The parameter groups.</param>
    /// <param name="lr">Learning rate.</param>
    /// <param name="momentum">Momentum factor.</param>
    /// <param name="dampening">Dampening for momentum.</param>
    /// <param name="weight_decay">Weight decay (L2 penalty).</param>
    /// <param name="nesterov">Enables Nesterov momentum.</param>
    /// <param name="maximize">Maximize the objective instead of minimizing it.</param>
    public GcSafeSgd(IEnumerable<ParamGroup> parameters, double lr, double momentum = 0.0, double dampening = 0, double weight_decay = 0, bool nesterov = false, bool maximize = false)
        : base(parameters, lr, momentum, dampening, weight_decay, nesterov, maximize)
    {
    }

    /// <summary>Performs one optimization step, as <see cref="SGD.step"/> does, with scalars that stay alive.</summary>
    /// <param name="closure">A closure that reevaluates the model and returns the loss; optional.</param>
    /// <returns>The closure's loss, or null.</returns>
    public override Tensor step(Func<Tensor>? closure = null) => _step<ParamGroup>(Update, closure);

    private void Update(ParamGroup group)
    {
        var options = group.Options;
        double momentum = options.momentum!.Value, dampening = options.dampening!.Value, weightDecay = options.weight_decay!.Value;
        bool nesterov = options.nesterov!.Value, maximize = options.maximize!.Value;
        double lr = options.LearningRate!.Value;

        using var scalars = new ScalarScope();
        var weightDecayScalar = scalars[weightDecay];
        var momentumScalar = scalars[momentum];
        var gradientShare = scalars[1 - dampening];
        var stepScalar = scalars[maximize ? lr : -lr];
        foreach (var param in group.Parameters)
        {
            var gradient = param.grad;   // a new wrapper, owned by the dispose scope that _step opens
            if (gradient is null) continue;
            if (weightDecay != 0) gradient = gradient.add(param, weightDecayScalar);

            if (momentum != 0)
            {
                var state = (State)_state[param.Handle];
                var buffer = state.momentum_buffer;
                if (buffer is null)
                {
                    buffer = gradient.clone().detach().DetachFromDisposeScope();
                    state.momentum_buffer = buffer;
                }
                else
                {
                    buffer.mul_(momentumScalar).add_(gradient, gradientShare);
                }

                gradient = nesterov ? gradient.add(buffer, momentumScalar) : buffer;
            }

            param.add_(gradient, stepScalar);
        }
    }
}

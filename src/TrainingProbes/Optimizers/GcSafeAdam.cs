using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Optimizers;

/// <summary>
/// TorchSharp's <see cref="Adam"/> with a <see cref="step"/> that keeps its scalars alive: a drop-in replacement for
/// <c>torch.optim.Adam</c> in trainers whose process collects garbage on other threads. See <see cref="GcSafeSgd"/>
/// for the fault; it overrides only <see cref="step"/>, and a unit test compares its parameters with
/// <see cref="Adam"/>'s after every step.
/// </summary>
public sealed class GcSafeAdam : Adam
{
    /// <summary>Creates the optimizer; the arguments are those of <c>torch.optim.Adam</c>.</summary>
    /// <param name="parameters">The parameters to optimize.</param>
    /// <param name="lr">Learning rate.</param>
    /// <param name="beta1">Coefficient of the running average of the gradient.</param>
    /// <param name="beta2">Coefficient of the running average of the squared gradient.</param>
    /// <param name="eps">Added to the denominator for numerical stability.</param>
    /// <param name="weight_decay">Weight decay (L2 penalty), added to the gradient.</param>
    /// <param name="amsgrad">Uses the AMSGrad variant.</param>
    /// <param name="maximize">Maximize the objective instead of minimizing it.</param>
    public GcSafeAdam(IEnumerable<Parameter> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool amsgrad = false, bool maximize = false)
        : base(parameters, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize)
    {
    }

    /// <summary>Creates the optimizer over parameter groups (each may set its own options); the other arguments are the defaults.</summary>
    /// <param name="parameters">The parameter groups.</param>
    /// <param name="lr">Learning rate.</param>
    /// <param name="beta1">Coefficient of the running average of the gradient.</param>
    /// <param name="beta2">Coefficient of the running average of the squared gradient.</param>
    /// <param name="eps">Added to the denominator for numerical stability.</param>
    /// <param name="weight_decay">Weight decay.</param>
    /// <param name="amsgrad">Uses the AMSGrad variant.</param>
    /// <param name="maximize">Maximize the objective instead of minimizing it.</param>
    public GcSafeAdam(IEnumerable<ParamGroup> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool amsgrad = false, bool maximize = false)
        : base(parameters, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize)
    {
    }

    /// <summary>Performs one optimization step, as <see cref="Adam.step"/> does, with scalars that stay alive.</summary>
    /// <param name="closure">A closure that reevaluates the model and returns the loss; optional.</param>
    /// <returns>The closure's loss, or null.</returns>
    public override Tensor step(Func<Tensor>? closure = null) => _step<ParamGroup>(group =>
    {
        var o = group.Options;
        var hyper = new AdamStep.Hyper(o.LearningRate!.Value, o.beta1!.Value, o.beta2!.Value, o.eps!.Value, o.weight_decay!.Value, Decoupled: false, o.amsgrad!.Value, o.maximize!.Value);
        foreach (var param in group.Parameters)
        {
            var state = (State)_state[param.Handle];
            AdamStep.Apply(param, hyper, ref state.step, state.exp_avg, state.exp_avg_sq, ref state.max_exp_avg_sq);
        }
    }, closure);
}

/// <summary>
/// TorchSharp's <see cref="AdamW"/> (decoupled weight decay) with a <see cref="step"/> that keeps its scalars alive: a
/// drop-in replacement for <c>torch.optim.AdamW</c>. See <see cref="GcSafeSgd"/> for the fault; a unit test compares its
/// parameters with <see cref="AdamW"/>'s after every step.
/// </summary>
public sealed class GcSafeAdamW : AdamW
{
    /// <summary>Creates the optimizer; the arguments are those of <c>torch.optim.AdamW</c>.</summary>
    /// <param name="parameters">The parameters to optimize.</param>
    /// <param name="lr">Learning rate.</param>
    /// <param name="beta1">Coefficient of the running average of the gradient.</param>
    /// <param name="beta2">Coefficient of the running average of the squared gradient.</param>
    /// <param name="eps">Added to the denominator for numerical stability.</param>
    /// <param name="weight_decay">Decoupled weight decay: the parameters shrink by lr x weight_decay at each step.</param>
    /// <param name="amsgrad">Uses the AMSGrad variant.</param>
    /// <param name="maximize">Maximize the objective instead of minimizing it.</param>
    public GcSafeAdamW(IEnumerable<Parameter> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool amsgrad = false, bool maximize = false)
        : base(parameters, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize)
    {
    }

    /// <summary>Creates the optimizer over parameter groups (each may set its own options); the other arguments are the defaults.</summary>
    /// <param name="parameters">The parameter groups.</param>
    /// <param name="lr">Learning rate.</param>
    /// <param name="beta1">Coefficient of the running average of the gradient.</param>
    /// <param name="beta2">Coefficient of the running average of the squared gradient.</param>
    /// <param name="eps">Added to the denominator for numerical stability.</param>
    /// <param name="weight_decay">Weight decay.</param>
    /// <param name="amsgrad">Uses the AMSGrad variant.</param>
    /// <param name="maximize">Maximize the objective instead of minimizing it.</param>
    public GcSafeAdamW(IEnumerable<ParamGroup> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool amsgrad = false, bool maximize = false)
        : base(parameters, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize)
    {
    }

    /// <summary>Performs one optimization step, as <see cref="AdamW.step"/> does, with scalars that stay alive.</summary>
    /// <param name="closure">A closure that reevaluates the model and returns the loss; optional.</param>
    /// <returns>The closure's loss, or null.</returns>
    public override Tensor step(Func<Tensor>? closure = null) => _step<ParamGroup>(group =>
    {
        var o = group.Options;
        var hyper = new AdamStep.Hyper(o.LearningRate!.Value, o.beta1!.Value, o.beta2!.Value, o.eps!.Value, o.weight_decay!.Value, Decoupled: true, o.amsgrad!.Value, o.maximize!.Value);
        foreach (var param in group.Parameters)
        {
            var state = (State)_state[param.Handle];
            AdamStep.Apply(param, hyper, ref state.step, state.exp_avg, state.exp_avg_sq, ref state.max_exp_avg_sq);
        }
    }, closure);
}

/// <summary>One parameter's Adam or AdamW update, operation for operation as TorchSharp 0.107 does it, with kept scalars.</summary>
internal static class AdamStep
{
    /// <summary>A parameter group's settings for one step.</summary>
    public readonly record struct Hyper(double LearningRate, double Beta1, double Beta2, double Eps, double WeightDecay, bool Decoupled, bool AmsGrad, bool Maximize);

    /// <summary>Updates <paramref name="param"/> and its state; inside the dispose scope and no_grad of the optimizer's <c>_step</c>.</summary>
    public static void Apply(Parameter param, in Hyper h, ref long step, Tensor expAvg, Tensor expAvgSq, ref Tensor? maxExpAvgSq)
    {
        var (lr, beta1, beta2, eps, weightDecay, decoupled, amsgrad, maximize) = h;
        var gradient = param.grad;   // a new wrapper, owned by the dispose scope that _step opens
        if (gradient is null) return;
        if (maximize) gradient = gradient.neg();
        step += 1;

        using var scalars = new ScalarScope();
        if (decoupled) param.mul_(scalars[1 - lr * weightDecay]);
        double biasCorrection1 = 1 - Math.Pow(beta1, step);
        double biasCorrection2 = 1 - Math.Pow(beta2, step);
        if (!decoupled && weightDecay != 0) gradient = gradient.add(param, scalars[weightDecay]);

        expAvg.mul_(scalars[beta1]).add_(gradient, scalars[1 - beta1]);
        expAvgSq.mul_(scalars[beta2]).addcmul_(gradient, decoupled ? gradient : gradient.conj(), scalars[1 - beta2]);

        Tensor averageSquare = expAvgSq;
        if (amsgrad)
        {
            var previous = maxExpAvgSq!;
            maxExpAvgSq = torch.maximum(previous, expAvgSq).DetachFromDisposeScope();
            previous.Dispose();
            averageSquare = maxExpAvgSq;
        }

        var denominator = averageSquare.sqrt().div_(scalars[Math.Sqrt(biasCorrection2)]).add_(scalars[eps], Scalars.One);
        param.addcdiv_(expAvg, denominator, scalars[-(lr / biasCorrection1)]);
    }
}

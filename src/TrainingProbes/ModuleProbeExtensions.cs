using TrainingProbes;
using static TorchSharp.torch;

// The extension lives in the TorchSharp namespace on purpose: every TorchSharp program already has
// `using TorchSharp;`, so attaching probes to a loop is exactly one added line, with no new using directive.
namespace TorchSharp;

/// <summary>The one-line integration.</summary>
public static class ModuleProbeExtensions
{
    /// <summary>
    /// Records a training step of <paramref name="model"/>: call it after <c>loss.backward()</c> and before
    /// <c>optimizer.step()</c>. The first call creates a session with options from <see cref="ProbeOptions.FromEnvironment()"/> unless
    /// <see cref="ProbeSession.Attach"/> created one for this model before.
    /// </summary>
    /// <remarks>
    /// The generalization indicators are measured on K minibatch gradients at one theta: the session keeps the
    /// window's step batches and evaluates them at the window's first theta (before any was trained on), for which it needs each step's
    /// <paramref name="input"/> and <paramref name="target"/> and the <paramref name="lossFunction"/>:
    /// <c>model.Probe(loss, optimizer, x, y, lossFunction.call)</c>. With the loss alone, only the optimizer's
    /// step-to-step statistics (<c>step.*</c>) are published, and the session says so once.
    /// </remarks>
    /// <param name="model">The model being trained.</param>
    /// <param name="loss">The step's scalar loss; optional, published as the window's mean loss.</param>
    /// <param name="optimizer">The optimizer; optional, its learning rate is published.</param>
    /// <param name="input">The minibatch input the loss was computed on.</param>
    /// <param name="target">The minibatch target the loss was computed on.</param>
    /// <param name="lossFunction">The loss function, (output, target) -> scalar mean loss, for example <c>lossFunction.call</c>
    /// of an <c>nn.CrossEntropyLoss()</c>; needed once, the session keeps it.</param>
    /// <returns>The model's session.</returns>
    public static ProbeSession Probe(this nn.Module model, Tensor? loss = null, optim.Optimizer? optimizer = null, Tensor? input = null, Tensor? target = null,
        Func<Tensor, Tensor, Tensor>? lossFunction = null) =>
        ProbeSession.For(model, optimizer, lossFunction).Step(loss, input, target);
}


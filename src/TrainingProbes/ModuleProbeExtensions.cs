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
    /// <param name="model">The model being trained.</param>
    /// <param name="loss">The step's scalar loss; optional, published as the window's mean loss.</param>
    /// <param name="optimizer">The optimizer; optional, its learning rate is published.</param>
    /// <param name="input">The minibatch input; optional, for probes that split the current batch.</param>
    /// <param name="target">The minibatch target; optional, as <paramref name="input"/>.</param>
    /// <returns>The model's session.</returns>
    public static ProbeSession Probe(this nn.Module model, Tensor? loss = null, optim.Optimizer? optimizer = null, Tensor? input = null, Tensor? target = null) =>
        ProbeSession.For(model, optimizer).Step(loss, input, target);
}


using static TorchSharp.torch;

namespace TrainingProbes;

/// <summary>
/// A probe: code that watches a training run through the session's callbacks and reports numbers.
/// The built-in probes are written against this class too. Every callback runs on the training thread,
/// inside a dispose scope and with gradients disabled; an exception is logged and counted by the session
/// and never reaches the training loop.
/// </summary>
public abstract class TrainingProbe
{
    /// <summary>Name of the probe, dotted snake_case; used as the <c>probe</c> attribute of its metrics.</summary>
    public abstract string Name { get; }

    /// <summary>Called once, when the session is created and before the first step.</summary>
    /// <param name="session">The session the probe belongs to.</param>
    public virtual void OnSessionStart(ProbeSession session) { }

    /// <summary>
    /// Called on every step, after <c>backward()</c> and before the optimizer step. Keep it cheap: it is on
    /// the training's hot path. On steps of a window the gradients are already captured.
    /// </summary>
    /// <param name="step">The step; valid only during the call.</param>
    public virtual void OnStep(ProbeStepContext step) { }

    /// <summary>
    /// Called when a window of K captured gradients is complete. Report values through
    /// <see cref="ProbeWindowContext.Report(string, double, Geometry, string?)"/> or, without synchronizing with the
    /// device, <see cref="ProbeWindowContext.Report(string, Tensor, Geometry, string?)"/>.
    /// </summary>
    /// <param name="window">The window; valid only during the call.</param>
    public virtual void OnWindowClosed(ProbeWindowContext window) { }

    /// <summary>Called once when the session ends (it is disposed).</summary>
    public virtual void OnSessionEnd() { }
}

/// <summary>What a probe sees of one training step. The session reuses this object; do not keep it.</summary>
public sealed class ProbeStepContext
{
    internal ProbeStepContext(ProbeSession session) => Session = session;

    /// <summary>The session.</summary>
    public ProbeSession Session { get; }

    /// <summary>The model being trained.</summary>
    public nn.Module Model => Session.Model;

    /// <summary>Zero-based index of this step since the session started.</summary>
    public long Step { get; internal set; }

    /// <summary>Position of this step in the current window (0 to K-1), or -1 when the step is not captured.</summary>
    public int WindowSlot { get; internal set; }

    /// <summary>The loss passed to the step call, if any. Do not dispose it.</summary>
    public Tensor? Loss { get; internal set; }

    /// <summary>The minibatch input passed to the step call, if any. Do not dispose it.</summary>
    public Tensor? Input { get; internal set; }

    /// <summary>The minibatch target passed to the step call, if any. Do not dispose it.</summary>
    public Tensor? Target { get; internal set; }
}

using static TorchSharp.torch;

namespace TrainingProbes.Session;

/// <summary>
/// The training-thread checks of <see cref="ProbeSession.Step"/> and <see cref="ProbeSession.Flush"/>: a usable loss,
/// one thread at a time, and one call per optimizer step.
/// </summary>
internal sealed class StepGuard(string runId)
{
    private readonly WeakReference<Tensor> _lastLoss = new(null!);
    private int _entered;

    /// <summary>Throws for a loss that is disposed or not a scalar, before anything of the step happens.</summary>
    public static void CheckLoss(Tensor? loss)
    {
        if (loss is null) return;
        if (loss.IsInvalid)
            throw new ArgumentException(
                "Step(loss) got a loss tensor that was already disposed: its dispose scope ended before the step call. " +
                "Call model.Probe(loss, ...) (or session.Step) inside the scope of the step, after backward() and before the scope ends.", nameof(loss));
        if (loss.numel() != 1)
            throw new ArgumentException(
                $"Step(loss) takes the scalar loss that backward() was called on; got a tensor of shape [{string.Join(", ", loss.shape)}]. Reduce it with .mean() first.",
                nameof(loss));
    }

    /// <summary>
    /// True when <paramref name="loss"/> is the graph loss of the previous call: a second call for one optimizer step,
    /// which would count the step twice. (A loss with a graph is made anew by each forward pass; a constant loss reused
    /// on purpose, as in synthetic loops, has none.) Remembers a graph loss otherwise.
    /// </summary>
    public bool IsRepeated(Tensor? loss)
    {
        if (loss is null || !loss.requires_grad) return false;
        if (_lastLoss.TryGetTarget(out var last) && ReferenceEquals(last, loss)) return true;
        _lastLoss.SetTarget(loss);
        return false;
    }

    /// <summary>The failure <see cref="IsRepeated"/> reports.</summary>
    public static InvalidOperationException Repeated() => new(
        "Probe/Step was called twice with the same loss tensor: once per optimizer step counts each step once. The second call was ignored. " +
        "With gradient accumulation, call it once, after the last micro-batch's backward(), with the whole step's batch.");

    /// <summary>Marks a training-thread call; refuses one that overlaps another (two training loops on one session).</summary>
    public void Enter(string method)
    {
        if (Interlocked.Exchange(ref _entered, 1) == 0) return;
        throw new InvalidOperationException(
            $"ProbeSession.{method} was called while another thread was inside Step or Flush of the same session (run {runId}). A session serves one " +
            "training loop: its windows, schedule and snapshots follow one sequence of steps. Give each concurrent loop its own model and session, " +
            "or call Step from one thread at a time.");
    }

    /// <summary>Ends the call <see cref="Enter"/> marked.</summary>
    public void Exit() => Volatile.Write(ref _entered, 0);
}

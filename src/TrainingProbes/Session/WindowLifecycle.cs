using Microsoft.Extensions.Logging;
using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Probes;
using TrainingProbes.Stopping;
using static TorchSharp.torch;

namespace TrainingProbes.Session;

/// <summary>
/// A window's life on the training thread, out of <see cref="ProbeSession"/>: each step's phase in the schedule and its
/// captures, the closing step's micro-batch gradients and probes, the job that computes the statistics (inline or on
/// the worker), and the publication of the snapshot when the job is done. The session checks its arguments and owns
/// the parts; this class moves a window through them.
/// </summary>
internal sealed class WindowLifecycle(
    ProbeSession session, WindowScheduler scheduler, ProbeFailures failures, ProbeRunner runner, SnapshotPublisher publisher,
    StoppingController stopping, ProbeStepContext stepContext, StatisticsWorker worker, ILogger logger)
{
    private readonly ProbeSession _session = session;
    private readonly WindowScheduler _scheduler = scheduler;
    private readonly ProbeFailures _failures = failures;
    private readonly ProbeRunner _runner = runner;
    private readonly SnapshotPublisher _publisher = publisher;
    private readonly StoppingController _stopping = stopping;
    private readonly ProbeStepContext _stepContext = stepContext;
    private readonly StatisticsWorker _worker = worker;
    private readonly ILogger _logger = logger;

    private nn.Module Model => _session.Model;
    private ProbeOptions Options => _session.Options;
    private string RunId => _session.RunId;
    private SessionWindows Windows => _session.Windows;
    private Func<Tensor, Tensor, Tensor>? LossFunction => _session.LossFunction;

    /// <summary>One training step past the session's checks: the window's phase, captures, closing and publication.</summary>
    public void Step(Tensor? loss, Tensor? input, Tensor? target)
    {
        long started = _scheduler.Now;
        // Whether the worker ran during the trainer's work since the last step: such steps measure what it costs training.
        bool workerBusy = _pending is { Job.InBackground: true };
        if (_pending is { } pending && pending.Job.IsCompleted) Publish();
        int slot = _scheduler.BeginStep(started, out long step, workerBusy);
        if (slot == 0 && _pending is not null)
        {
            // The next window never overwrites what the worker still reads. Under the overhead budget training does not
            // wait for the worker: while it is busy the window moves to the next step (for at most MaxPostponed steps,
            // then it waits); a fixed Interval is kept, and the training thread waits.
            if (!_pending.Job.IsCompleted && Options.OverheadBudget is not null && _workerWaits < MaxPostponed)
            {
                _workerWaits++;
                _scheduler.Postpone();
                slot = -1;
            }
            else
            {
                _workerWaits = 0;
                Publish();
            }
        }

        int last = Windows.Length - 1;
        if (input is not null && target is not null) _batchSeen = true;
        // A non-finite loss reaches the rules at its own step, inside a window too (on a CPU: elsewhere reading it would
        // wait for the device every step, so it waits for the window's values).
        if (loss is not null && _stopping.MonitorsLoss && loss.device_type == DeviceType.CPU)
            _failures.Guard("stopping", static a => a.Session.CheckLoss(a.Loss), (Session: this, Loss: loss));
        // Checked at a window's first step, and at every step the step ring captures (a replaced parameter would fail
        // each capture before the window could say why).
        if (slot >= 0 && (_detached is not null || (slot == 0 || Windows.Steps is not null) && !ParametersStillWatched()))
        {
            if (slot == last) CloseDetachedWindow(started);
            _scheduler.EndStep(_scheduler.Now);
            return;
        }
        if (slot < 0 && !_runner.ObservesEveryStep)
        {
            _scheduler.EndStep(started);
            return;
        }

        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            if (slot >= 0 && Windows.Steps is { } steps) _runner.TimedCapture(static a => a.Steps.Capture(a.Slot), (Steps: steps, Slot: slot));
            _stepContext.Step = step;
            _stepContext.WindowSlot = slot;
            _stepContext.Loss = loss;
            _stepContext.Input = input;
            _stepContext.Target = target;
            _runner.Step(_stepContext);
            _stepContext.Loss = _stepContext.Input = _stepContext.Target = null;
        }

        _scheduler.AddProbeTicks(_scheduler.Now - started);
        if (slot == last)
        {
            // A parameter replaced during the window made some of its slots stale: the window is dropped, not published.
            if (!ParametersStillWatched()) CloseDetachedWindow(_scheduler.Now);
            else
            {
                var (missing, later) = Options.BuiltInProbes ? MicroBatchesMissing(input, target) : (null, false);
                // A one-step window waits for a step that passes a batch, if the trainer passes batches at all.
                if (missing is not null && later && last == 0 && _batchSeen && !_gaveUpWaiting && _postponed < MaxPostponed)
                {
                    _postponed++;
                    _scheduler.Postpone();   // a one-step window waits for a step with a minibatch to split
                }
                else
                {
                    // After MaxPostponed steps without a usable batch, windows close without waiting until one has it again.
                    _gaveUpWaiting = missing is not null;
                    _postponed = 0;
                    CloseWindow(input, target, missing, capture: Options.BuiltInProbes && missing is null);
                }
            }
        }

        _scheduler.EndStep(_scheduler.Now);
    }

    /// <summary>Steps a one-step window waits at most for a step that passes its minibatch.</summary>
    private const int MaxPostponed = 100;

    private int _postponed, _workerWaits;
    private bool _gaveUpWaiting, _batchSeen;
    private bool _microBatchesTaken;   // a window had its micro-batch gradients: the gradient series exist

    /// <summary>
    /// Why this step cannot give the window's micro-batch gradients (null when it can), and whether a later step may
    /// (the reason is this step's batch).
    /// </summary>
    private (string? Reason, bool Later) MicroBatchesMissing(Tensor? input, Tensor? target)
    {
        if (LossFunction is null) return ("no loss function", false);
        if (Forward is null) return ($"no forward function ({Model.GetType().Name} is not a Module<Tensor, Tensor>: set ProbeOptions.Forward)", false);
        if (input is null || target is null) return ("no input and target passed to this step", true);
        if (input.shape.Length == 0 || input.shape[0] < Options.WindowSize)
            return ($"a batch of {(input.shape.Length == 0 ? 0 : input.shape[0])} examples, fewer than the K = {Options.WindowSize} micro-batches to split it into", true);
        return (null, false);
    }

    /// <summary>The model's forward function for the window's passes: <see cref="ProbeOptions.Forward"/>, or the model's own <c>call</c>.</summary>
    private Func<Tensor, Tensor>? Forward => Options.Forward ?? (Model is nn.Module<Tensor, Tensor> module ? module.call : null);

    private int _nonFiniteLossWindow = -1;

    /// <summary>Why the watched parameters are no longer the model's (replaced, or moved by <c>model.to</c>), or null.</summary>
    private string? _detached;
    private bool _warnedAdded;

    /// <summary>
    /// At a window's first step: whether the watched parameters are still the model's. A replaced or moved one makes
    /// every later window's gradients meaningless: the session stops capturing (<see cref="CloseDetachedWindow"/>). A
    /// parameter added after attach is left out, with a warning once.
    /// </summary>
    private bool ParametersStillWatched()
    {
        string? mismatch;
        bool replaced;
        try
        {
            mismatch = Windows.Layout.Mismatch(Model, Options.ParameterFilter, out replaced);
        }
        catch (Exception ex) when (ex is not ProbeFailureException)
        {
            _failures.Fail("parameters", ex, "check_failed");   // counted; the window goes on as if nothing changed
            return true;
        }

        if (mismatch is null) return true;
        if (!replaced)
        {
            if (_warnedAdded) return true;
            _warnedAdded = true;
            string message = $"TrainingProbes run {RunId}: {mismatch}. Attach a new session after changing the model to watch them.";
            _logger.LogWarning("{Message}", message);
            _failures.Guard("console", static a => a.Output?.WriteLine("[probes] " + a.Message), (Output: Options.Output, Message: message));
            return true;
        }

        _detached = mismatch;
        return false;
    }

    /// <summary>
    /// Where a window would close after the parameters changed: a snapshot without values, whose failure says why, so
    /// that nothing of the model as it was is shown as current (the gauges drop the probes' series).
    /// </summary>
    private void CloseDetachedWindow(long started)
    {
        Publish();
        _scheduler.CloseWindow(started);
        _failures.Fail("parameters", new InvalidOperationException(
            $"The probes no longer watch the model: {_detached}. No indicator is published from now on. Dispose this session and attach a new one " +
            "after changing the model (or change it before attaching)."), "parameters_changed");
        _publisher.Publish(new ProbeSnapshot(RunId, _scheduler.Steps, _scheduler.Windows - 1, DateTimeOffset.UtcNow, [], failures: _failures.Take()));
    }

    /// <summary>A half-precision loss as a double (one element, on the CPU).</summary>
    private static double ReadHalf(Tensor loss)
    {
        using var wide = loss.detach().to(ScalarType.Float32);
        return wide.item<float>();
    }

    /// <summary>
    /// The step's loss, on the CPU where reading it costs no device synchronization: a non-finite one (float64, float32,
    /// float16 or bfloat16) is shown at once to the rules that monitor <see cref="Indicators.Loss"/>
    /// (<c>training.loss is not finite</c>), rather than when its window's values are published. Finite losses change
    /// nothing. On an accelerator the check would synchronize every step, so there the rules see the windows' losses.
    /// </summary>
    private void CheckLoss(Tensor loss)
    {
        double value = loss.dtype switch
        {
            ScalarType.Float32 => loss.item<float>(),
            ScalarType.Float64 => loss.item<double>(),
            ScalarType.Float16 or ScalarType.BFloat16 => ReadHalf(loss),
            _ => 0,   // an integer loss is always finite
        };
        // The first non-finite loss since the last window is shown to the rules (a diverged run would repeat it every step).
        if (double.IsFinite(value) || _nonFiniteLossWindow == _scheduler.Windows) return;
        _nonFiniteLossWindow = _scheduler.Windows;
        Publish();   // the pending window's snapshot, of an earlier step, is evaluated first: rules see steps in order
        long step = _scheduler.Steps;   // the step count, as a snapshot's Step
        _logger.LogWarning("TrainingProbes run {RunId}: the loss at step {Step} is {Value}.", RunId, step, value);
        _stopping.OnReported(Indicators.Loss, Geometry.None, value, step);
    }

    /// <summary>
    /// Takes the window's micro-batch gradients (at the closing step's parameters, before the optimizer step), runs the
    /// probes on the window (on the training thread: they take what they need from the model), copies theta, then starts
    /// the window's job (the probes' deferred statistics and the transfer; on the worker with
    /// <see cref="ProbeOptions.BackgroundStatistics"/>), and chooses the next window. The snapshot is published when the
    /// job is done (<see cref="Publish"/>).
    /// </summary>
    private void CloseWindow(Tensor? input, Tensor? target, string? missing, bool capture)
    {
        long started = _scheduler.Now;
        long? steady = null;
        var context = new ProbeWindowContext(_session, Windows.Layout, Options.WindowSize);   // one per window
        context.Begin(_scheduler.Steps, _scheduler.Windows);
        context.Input = input;
        context.Target = target;
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            if (capture)
            {
                TakeMicroBatches(context, input!, target!);
                // The first window's pass pays one-time costs (code compiled, memory allocated): a second pass measures
                // what a window costs from then on, the overhead budget's first estimate.
                if (_scheduler.Windows == 0 && context.MicroBatches is not null) steady = TakeMicroBatches(context, input!, target!);
            }
            else if (missing is not null)
            {
                TellOnce(missing);
                // Once windows had their values, one without them is a failure of the default family: its series leave
                // the gauges rather than show the previous window's values as this one's.
                if (_microBatchesTaken)
                    _failures.Fail(OneThetaGradientProbe.ProbeName, new InvalidOperationException(
                        $"The window at step {_scheduler.Steps} has {missing}: its gradient indicators are not published. " +
                        "Pass the batch and the loss function on every step: model.Probe(loss, optimizer, input, target, lossFunction.call)."), "missing_batch");
            }

            _runner.Window(context);
        }

        context.Input = context.Target = null;
        _failures.Guard("drift", static w => w.LoadTheta(), Windows);   // after the probes: the drift read the previous window's

        // A rule that keeps weights (a checkpoint, best weights to restore) copies them when it sees the window's
        // values: those must be published while the parameters are still the window's, so its windows run inline.
        bool background = Options.BackgroundStatistics && !_stopping.KeepsWeights;
        if (background) context.HoldSession(strongly: false);   // held again by Publish, on the training thread
        var job = WindowJob.Start(context, background ? _worker : null, Options.TimeProvider);
        var values = new List<(string Name, double Value)>();
        if (_session.Optimizer?.ParamGroups.FirstOrDefault() is { } group)
            _failures.Guard("session", static a => a.Values.Add((Indicators.LearningRate, a.Group.LearningRate)), (Values: values, Group: group));

        // Overhead: probe time over the training time without probes, since the previous window. An inline job is this
        // window's; a background one is charged to the next interval when it is published, except the first window's,
        // whose code ran for the first time (the second's job runs warm code, and measures what the worker costs).
        bool warmUp = _scheduler.Windows == 0;
        var (overhead, overheadTotal, interval) = _scheduler.CloseWindow(started, steady);
        values.Add((Indicators.ProbeOverhead, overhead));
        values.Add((Indicators.ProbeOverheadTotal, overheadTotal));
        values.Add((Indicators.ProbeInterval, interval));
        _pending = new PendingWindow(job, values, _runner.TakeSeconds(), warmUp);
        if (!job.InBackground) Publish();
    }

    /// <summary>The window's K micro-batch gradients, into <paramref name="context"/>; returns the ticks it took.</summary>
    private long TakeMicroBatches(ProbeWindowContext context, Tensor input, Tensor target)
    {
        long started = _scheduler.Now;
        context.MicroBatches = null;
        _failures.Guard("gradient", static a =>
        {
            var session = a.Session;
            var windows = session.Windows;
            windows.MicroBatches.Capture(session.Model, session.Forward!, session.LossFunction!, a.Input, a.Target);
            if (windows.MicroBatches.UsedPasses) session.TellPassesOnce(windows.MicroBatches.PassesReason);
            a.Context.MicroBatches = (IWindowSource?)windows.MicroBatches.Sketched ?? windows.MicroBatches;
            session._microBatchesTaken = true;
        }, (Session: this, Context: context, Input: input, Target: target));
        long ticks = _scheduler.Now - started;
        _runner.AddCaptureTicks(ticks);
        return ticks;
    }

    private bool _toldMissing, _toldPasses;

    private void TellOnce(string missing)
    {
        if (_toldMissing) return;
        _toldMissing = true;
        string message =
            $"[probes] the generalization indicators (gradient.*, regret.*, flatness.*) split the closing step's minibatch into K = {Options.WindowSize} micro-batches, and this window has {missing}. " +
            "Pass them in the one line: model.Probe(loss, optimizer, input, target, lossFunction.call) (or set ProbeOptions.Loss). " +
            "Until then those indicators are not published.";
        Options.Output?.WriteLine(message);
        _logger.LogWarning("{Message}", message);
    }

    private void TellPassesOnce(string? reason)
    {
        if (_toldPasses) return;
        _toldPasses = true;
        string message =
            $"[probes] a window takes K = {Options.WindowSize} forward and backward passes (one per micro-batch) instead of one, because {reason}. " +
            "Windows cost more and come less often under the overhead budget; the values are the same.";
        Options.Output?.WriteLine(message);
        _logger.LogInformation("{Message}", message);
    }

    /// <summary>A closed window whose job may still run: what the training thread measured, to publish with it.</summary>
    private sealed record PendingWindow(WindowJob Job, List<(string Name, double Value)> Values, Dictionary<string, double> Seconds, bool WarmUp);

    private PendingWindow? _pending;

    /// <summary>The <c>probe</c> attribute of the values the session measures itself (learning rate, overhead, interval).</summary>
    private const string SessionSource = "session";

    /// <summary>Publishes the pending window, waiting for its job if it is still running (training thread only).</summary>
    public void Publish()
    {
        if (_pending is not { } pending) return;
        _pending = null;
        long waiting = _scheduler.Now;
        pending.Job.Wait();
        foreach (var (what, exception) in pending.Job.Failures) _failures.Fail(what, exception);

        var context = pending.Job.Context;
        context.HoldSession(strongly: true);
        var seconds = pending.Seconds;
        foreach (var (name, value) in pending.Job.Seconds) seconds[name] = seconds.GetValueOrDefault(name) + value;

        // The session's own measurements join the probes' values directly, attributed to the session.
        IndicatorValue[] values = [.. context.Values, .. pending.Values.Select(v => new IndicatorValue(v.Name, Geometry.None, SessionSource, v.Value))];
        var snapshot = new ProbeSnapshot(RunId, context.Step, context.Window, DateTimeOffset.UtcNow, values, seconds, _failures.Take());
        _publisher.Publish(snapshot);
        // Charged to the next interval: the publication, and how much longer the trainer's steps took while the worker
        // ran (measured against the steps while it did not); nothing of the first window's, whose code ran for the first
        // time (its publication makes the instruments).
        _scheduler.ChargeContention(charge: !pending.WarmUp);
        if (!pending.WarmUp) _scheduler.AddProbeTicks(_scheduler.Now - waiting);
    }
}

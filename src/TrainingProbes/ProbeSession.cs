using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Checkpoints;
using TrainingProbes.Probes;
using TrainingProbes.Session;
using TrainingProbes.Stopping;
using TrainingProbes.Telemetry;
using static TorchSharp.torch;

namespace TrainingProbes;

/// <summary>
/// Watches one model while it trains. Call <see cref="Step"/> after <c>loss.backward()</c> and before
/// <c>optimizer.step()</c>; every <see cref="ProbeOptions.Interval"/> steps the session captures the gradients of
/// <see cref="ProbeOptions.WindowSize"/> consecutive steps into a buffer on the parameters' device, then runs its
/// probes on that window and publishes an immutable <see cref="ProbeSnapshot"/> to <see cref="History"/>,
/// <see cref="WindowClosed"/>, the OpenTelemetry meter <see cref="TrainingProbesMeter.Name"/> and
/// <see cref="ProbeOptions.Output"/>. A failing probe is logged and counted; training goes on.
/// </summary>
public sealed class ProbeSession : IDisposable
{
    private readonly ProbeStepContext _stepContext;
    private readonly ProbeWindowContext _windowContext;
    private readonly ILogger _logger;
    private readonly WindowScheduler _scheduler;
    private readonly ProbeFailures _failures;
    private readonly ProbeRunner _runner;
    private readonly SnapshotPublisher _publisher;
    private readonly StoppingController _stopping;
    private readonly SessionTelemetry _telemetry;
    private torch.optim.Optimizer? _optimizer;
    private bool _disposed;

    private ProbeSession(nn.Module model, ProbeOptions options, torch.optim.Optimizer? optimizer)
    {
        options.ValidateTogether();
        Model = model;
        Options = options;
        _optimizer = optimizer;
        LossFunction = options.Loss;
        RunId = options.RunId ?? $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Random.Shared.Next(0x10000):x4}";
        _logger = (ILogger?)options.LoggerFactory?.CreateLogger<ProbeSession>() ?? NullLogger.Instance;
        StoppingController.CheckMonitors(options, _logger, RunId);
        Windows = new SessionWindows(model, options, _logger);
        _scheduler = new WindowScheduler(options, options.TimeProvider, Windows.Length);
        _failures = new ProbeFailures(_logger, RunId, () => _scheduler.Steps, options.Strict);

        if (options.Storage == WindowStorage.Sketch)
        {
            string sketch = $"[probes] Storage = Sketch: a window's gradients are kept as CountSketches of {options.SketchDimension} numbers where they need a K x P buffer; the Gram indicators " +
                $"are then estimated from them in the {options.Geometries} geometries, and GSNR, EB, per-layer values, the fisher geometry and the raw gradients are not available.";
            options.Output?.WriteLine(sketch);
            _logger.LogInformation("{Message}", sketch);
        }
        try
        {
            var builtIn = !options.BuiltInProbes ? []
                : options.StepStatistics
                    ? new TrainingProbe[] { new LossProbe(), new ParameterDriftProbe(), new GradientStatisticsProbe(options), new OneThetaGradientProbe(options) }
                    : new TrainingProbe[] { new LossProbe(), new ParameterDriftProbe(), new OneThetaGradientProbe(options) };
            _runner = new ProbeRunner(builtIn, options.Probes, _failures);
        }
        catch
        {
            Windows.Dispose();
            throw;
        }

        _stepContext = new ProbeStepContext(this);
        _windowContext = new ProbeWindowContext(this, Windows.Layout, options.WindowSize);
        _publisher = new SnapshotPublisher(options.HistoryCapacity, _failures);
        _stopping = new StoppingController(model, options, _logger, RunId, _failures, () => _scheduler.Steps);
        _telemetry = new SessionTelemetry(RunId, options.Worker, _publisher, _scheduler, _failures, _stopping);
        if (options.Output is { } output)
        {
            var view = new ConsoleView(options, output, ConsoleView.IsTerminal(output), rules: _stopping.Rules);
            _publisher.Subscribe("console", snapshot => view.Show(snapshot, _publisher.History, _stopping.ShouldStop));
        }
        _publisher.Subscribe("stopping", _stopping.OnSnapshot);
        _publisher.Subscribe("WindowClosed", snapshot => WindowClosed?.Invoke(this, snapshot));
        _stopping.Fired += (rule, decision, restored, probes) =>
        {
            Record.Add(new FiredRule(rule.Name, rule.Action, decision.Step, decision.Value, decision.Reason));
            RuleFired?.Invoke(this, new StoppingEventArgs(rule, decision, restored, probes));
        };

        try
        {
            _runner.Start(this);
            _telemetry.Announce();
        }
        catch
        {
            _telemetry.Unregister();
            Windows.Dispose();
            throw;
        }

        // The window pass's code compiled on the worker now, not when the first window's statistics need it.
        if (options.BuiltInProbes && options.BackgroundStatistics)
            _worker.Run(() =>
            {
                try
                {
                    Statistics.WindowKernel.WarmUp(options.WindowSize);
                }
                catch (Exception)
                {
                    // Only a head start: a window whose pass fails reports it as the probe's failure.
                }
            });

        _logger.LogInformation(
            "TrainingProbes run {RunId}: watching {Parameters} parameters in {Tensors} tensors, K={K} micro-batches per window, {Schedule}, geometries {Geometries}.",
            RunId, Windows.Layout.ParameterCount, Windows.Layout.Parameters.Count, options.WindowSize,
            options.OverheadBudget is { } budget ? $"windows as often as a {budget:P0} overhead budget allows" : $"a window every {options.Interval} steps",
            options.Geometries);
    }

    /// <summary>
    /// Creates a session for <paramref name="model"/> and makes it the one that
    /// <see cref="ModuleProbeExtensions.Probe(nn.Module, Tensor?, optim.Optimizer?, Tensor?, Tensor?, Func{Tensor, Tensor, Tensor}?)"/> uses for that model.
    /// </summary>
    /// <param name="model">The model being trained; its parameters that require a gradient are watched.</param>
    /// <param name="options">Settings; defaults when null.</param>
    /// <param name="optimizer">The optimizer, if the learning rate should be published.</param>
    /// <exception cref="ArgumentException">Inconsistent options, or no parameter to watch.</exception>
    /// <exception cref="InvalidOperationException">The model already has a session that is not disposed.</exception>
    public static ProbeSession Attach(nn.Module model, ProbeOptions? options = null, torch.optim.Optimizer? optimizer = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        return SessionRegistry.Add(model, () => new ProbeSession(model, options ?? new ProbeOptions(), optimizer));
    }

    /// <summary>A session that is not registered as the model's session (for one-off measurements).</summary>
    internal static ProbeSession CreateUnregistered(nn.Module model, ProbeOptions options) => new(model, options, optimizer: null);

    /// <summary>The session attached to <paramref name="model"/> (by <see cref="Attach"/> or the one-line call), or null.</summary>
    /// <param name="model">The model.</param>
    public static ProbeSession? Get(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return SessionRegistry.Get(model);
    }

    /// <summary>The session attached to <paramref name="model"/>, created on first use from <see cref="ProbeOptions.FromEnvironment()"/>.</summary>
    internal static ProbeSession For(nn.Module model, torch.optim.Optimizer? optimizer, Func<Tensor, Tensor, Tensor>? lossFunction = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var session = SessionRegistry.GetOrAdd(model, () => new ProbeSession(model, ProbeOptions.FromEnvironment(), optimizer));
        session._optimizer ??= optimizer;
        session.LossFunction ??= lossFunction;
        return session;
    }

    /// <summary>The model being watched.</summary>
    public nn.Module Model { get; }

    /// <summary>The session's settings.</summary>
    public ProbeOptions Options { get; }

    /// <summary>Identifies the run in metrics and logs.</summary>
    public string RunId { get; }

    /// <summary>Number of steps seen so far.</summary>
    public long StepCount => _scheduler.Steps;

    /// <summary>Names of the watched parameters.</summary>
    public IReadOnlyList<string> ParameterNames => _windowContext.ParameterNames;

    /// <summary>Number of probe callbacks that threw; each is logged, and training goes on.</summary>
    public int FailureCount => _failures.Count;

    /// <summary>
    /// The last published snapshot, or null before the first window's is published. Safe from any thread. With
    /// <see cref="ProbeOptions.BackgroundStatistics"/> a window is published at a step after its close, when its
    /// statistics are done: call <see cref="Flush"/> after the training loop before reading the last one.
    /// </summary>
    public ProbeSnapshot? Latest => _publisher.Latest;

    /// <summary>The last <see cref="ProbeOptions.HistoryCapacity"/> published snapshots, oldest first (a copy; safe from any thread; see <see cref="Latest"/>).</summary>
    public IReadOnlyList<ProbeSnapshot> History => _publisher.History;

    /// <summary>
    /// Raised on the training thread after each window's snapshot is published: with
    /// <see cref="ProbeOptions.BackgroundStatistics"/>, during a later <see cref="Step"/> call than the window's last
    /// (the model has moved on since the window's theta), or in <see cref="Flush"/> and <see cref="Dispose"/>.
    /// </summary>
    public event EventHandler<ProbeSnapshot>? WindowClosed;

    /// <summary>
    /// True once a <see cref="RuleAction.Stop"/> rule of <see cref="ProbeOptions.Stopping"/> has fired: the trainer
    /// should leave its loop before the next optimizer step (<c>if (model.Probe(loss).ShouldStop) break;</c>).
    /// </summary>
    public bool ShouldStop => _stopping.ShouldStop;

    /// <summary>Cancelled when <see cref="ShouldStop"/> becomes true, for trainers that pass a token around.</summary>
    public CancellationToken StopToken => _stopping.StopToken;

    /// <summary>Raised on the training thread when a rule fires (stop or warn), with the rule, the value, the step and the reason.</summary>
    public event EventHandler<StoppingEventArgs>? RuleFired;

    /// <summary>The stopping rules of <see cref="ProbeOptions.Stopping"/>.</summary>
    public IReadOnlyList<StoppingRule> Rules => _stopping.Rules;

    /// <summary>
    /// The best weights a rule has kept (a CPU copy), for a rule with <see cref="EarlyStopping.RestoreBestWeights"/>
    /// or the <see cref="RuleAction.Checkpoint"/> action; null before its first improvement.
    /// </summary>
    /// <param name="rule">One of <see cref="Rules"/>.</param>
    public WeightSnapshot? BestWeights(StoppingRule rule) => _stopping.BestWeights(rule);

    /// <summary>
    /// Reports a value the probes do not compute, such as a validation loss or accuracy, at the current step: the
    /// rules that monitor it are evaluated now, and it is published as a gauge (<c>trainingprobes.&lt;name&gt;</c>,
    /// probe <c>user</c>). Call it on the training thread.
    /// </summary>
    /// <param name="name">Dotted snake_case name, for example <c>val.loss</c>.</param>
    /// <param name="value">The value.</param>
    /// <param name="geometry">Its geometry, usually <see cref="Geometry.None"/>.</param>
    public void Report(string name, double value, Geometry geometry = Geometry.None)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ProbeWindowContext.ValidateName(name);
        var reported = new IndicatorValue(name, geometry, "user", value);
        _publisher.MergeIntoCurrent([reported]);
        Record.Add(new ReportedValue(_scheduler.Steps, Options.TimeProvider.GetUtcNow(), reported));
        SessionTelemetry.OnReported(name);
        _stopping.OnReported(name, geometry, value, _scheduler.Steps);
    }

    /// <summary>The stopping rules' state (best values, counters, steps) as JSON, to save with a training checkpoint.</summary>
    public string SaveStoppingState() => _stopping.Save();

    /// <summary>
    /// Restores the rules' state saved by <see cref="SaveStoppingState"/>, matched by rule name, so that a resumed run
    /// continues the same decisions. A restored Stop rule that had fired sets <see cref="ShouldStop"/> again.
    /// </summary>
    /// <param name="json">What <see cref="SaveStoppingState"/> returned.</param>
    /// <exception cref="ArgumentException">A saved rule is not among this session's rules, or the reverse.</exception>
    public void RestoreStoppingState(string json) => _stopping.Restore(json);

    /// <summary>
    /// Saves everything the session carries from window to window, to resume it later with <see cref="RestoreState"/>:
    /// the step and window counters, the schedule and the overhead budget's ledger, the stopping rules, the Fisher
    /// averages, the smoothed means and the fixed-point probe's counters and warm start. Save it with the model's and
    /// the optimizer's checkpoint, between steps; a state saved in the middle of a window resumes at the next window.
    /// </summary>
    /// <param name="path">A <c>.safetensors</c> file (tensors, with the other values as JSON in its metadata); replaced atomically.</param>
    /// <exception cref="ArgumentException">The path does not end in <c>.safetensors</c>.</exception>
    public void SaveState(string path)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Publish();
        SessionStateFile.Save(StatefulParts(), path, StateShape);
    }

    /// <summary>
    /// Restores what <see cref="SaveState"/> wrote, all or nothing: every part checks its state before any changes, so a
    /// file that does not fit this session (another model, other options or probes) leaves the session as it was. The
    /// resumed session continues the step count, the schedule and the decisions of the one that saved.
    /// </summary>
    /// <param name="path">The file <see cref="SaveState"/> wrote.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a saved probe state, or it does not fit this session; the message says what differs.</exception>
    public void RestoreState(string path)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Publish();
        SessionStateFile.Restore(StatefulParts(), path, StateShape);
    }

    /// <summary>What a saved state must match: the watched parameters and the window size.</summary>
    private string StateShape => $"{Windows.Layout.ParameterCount} parameters in {Windows.Layout.Parameters.Count} tensors, K = {Options.WindowSize}, geometries {Options.Geometries}";

    private IEnumerable<IStatefulPart> StatefulParts() =>
        [_scheduler, _stopping, Windows, .. _runner.Probes.OfType<IStatefulPart>()];

    /// <summary>The session's window data: the layout, the window's theta, the micro-batch gradients, the step ring.</summary>
    internal SessionWindows Windows { get; }


    /// <summary>The values the trainer reported and the rules that fired.</summary>
    private RunRecord Record { get; } = new();

    /// <summary>
    /// The values reported with <see cref="Report"/>, oldest first (a copy; at most the last 100,000). They reach the
    /// gauges and the rules, not the snapshots of <see cref="History"/>; an end-of-run report (TrainingProbes.Reporting)
    /// reads them here.
    /// </summary>
    public IReadOnlyList<ReportedValue> ReportedValues => Record.Reported;

    /// <summary>The stopping rules that fired (stop or warn), oldest first (a copy).</summary>
    public IReadOnlyList<FiredRule> FiredRules => Record.Fired;

    /// <summary>The session's probes, built-in first.</summary>
    internal IReadOnlyList<TrainingProbe> RunningProbes => _runner.Probes;

    internal bool IsDisposed => _disposed;

    /// <summary>The loss function (output, target) -> scalar mean loss: <see cref="ProbeOptions.Loss"/>, or the one the one-line call passed.</summary>
    internal Func<Tensor, Tensor, Tensor>? LossFunction { get; private set; }

    internal ILogger Logger => _logger;

    /// <summary>The last value of every series published so far (safe from any thread): what the gauges report.</summary>
    internal IReadOnlyList<IndicatorValue> CurrentValues => _publisher.Current;

    /// <summary>The attributes every metric of this session carries: run id, and worker when set.</summary>
    internal KeyValuePair<string, object?>[] SessionAttributes => _telemetry.SessionAttributes;

    /// <summary>What the gauges read from this session.</summary>
    internal SessionTelemetry Telemetry => _telemetry;

    /// <summary>
    /// Records one training step: call it after <c>loss.backward()</c> and before <c>optimizer.step()</c>.
    /// On steps outside a window it only counts the step. It never throws for a probe failure.
    /// </summary>
    /// <param name="loss">The step's loss (a one-element tensor), to publish the window's mean loss; optional.</param>
    /// <param name="input">The step's minibatch input; optional, used by probes that split it (<see cref="FixedPointProbe"/>).</param>
    /// <param name="target">The step's minibatch target; optional, as <paramref name="input"/>.</param>
    /// <returns>This session, so that the call can be chained.</returns>
    /// <exception cref="ObjectDisposedException">The session was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="loss"/> has more than one element, or was disposed.</exception>
    /// <exception cref="InvalidOperationException">Another thread is inside <see cref="Step"/> or <see cref="Flush"/> of
    /// this session: a session serves one training loop.</exception>
    public ProbeSession Step(Tensor? loss = null, Tensor? input = null, Tensor? target = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (loss is not null && loss.IsInvalid)
            throw new ArgumentException(
                "Step(loss) got a loss tensor that was already disposed: its dispose scope ended before the step call. " +
                "Call model.Probe(loss, ...) (or session.Step) inside the scope of the step, after backward() and before the scope ends.", nameof(loss));
        if (loss is not null && loss.numel() != 1)
            throw new ArgumentException(
                $"Step(loss) takes the scalar loss that backward() was called on; got a tensor of shape [{string.Join(", ", loss.shape)}]. Reduce it with .mean() first.",
                nameof(loss));

        Enter(nameof(Step));
        try
        {
            // The same loss tensor again: a second call for one optimizer step, which would count the step twice and
            // measure partial windows. It is refused, counted and logged; training goes on. (A loss with a graph is made
            // anew by each forward pass; a constant loss reused on purpose, as in synthetic loops, has none.)
            bool graphLoss = loss is not null && loss.requires_grad;
            if (graphLoss && _lastLoss.TryGetTarget(out var last) && ReferenceEquals(last, loss))
            {
                _failures.Fail("session", new InvalidOperationException(
                    "Probe/Step was called twice with the same loss tensor: once per optimizer step counts each step once. The second call was ignored. " +
                    "With gradient accumulation, call it once, after the last micro-batch's backward(), with the whole step's batch."), "probed_twice");
                return this;
            }

            if (graphLoss) _lastLoss.SetTarget(loss!);
            return StepCore(loss, input, target);
        }
        finally
        {
            Exit();
        }
    }

    private readonly WeakReference<Tensor> _lastLoss = new(null!);
    private int _entered;

    /// <summary>Marks a training-thread call; refuses one that overlaps another (two training loops on one session).</summary>
    private void Enter(string method)
    {
        if (Interlocked.Exchange(ref _entered, 1) == 0) return;
        throw new InvalidOperationException(
            $"ProbeSession.{method} was called while another thread was inside Step or Flush of the same session (run {RunId}). A session serves one " +
            "training loop: its windows, schedule and snapshots follow one sequence of steps. Give each concurrent loop its own model and session, " +
            "or call Step from one thread at a time.");
    }

    private void Exit() => Volatile.Write(ref _entered, 0);

    private ProbeSession StepCore(Tensor? loss, Tensor? input, Tensor? target)
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
            return this;
        }
        if (slot < 0 && !_runner.ObservesEveryStep)
        {
            _scheduler.EndStep(started);
            return this;
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
        return this;
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
        var context = _windowContext;
        context.Begin(_scheduler.Steps, _scheduler.Windows);
        context.Input = input;
        context.Target = target;
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            if (capture)
            {
                TakeMicroBatches(input!, target!);
                // The first window's pass pays one-time costs (code compiled, memory allocated): a second pass measures
                // what a window costs from then on, the overhead budget's first estimate.
                if (_scheduler.Windows == 0 && context.MicroBatches is not null) steady = TakeMicroBatches(input!, target!);
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
        if (_optimizer?.ParamGroups.FirstOrDefault() is { } group)
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

    /// <summary>The window's K micro-batch gradients, into the context; returns the ticks it took.</summary>
    private long TakeMicroBatches(Tensor input, Tensor target)
    {
        long started = _scheduler.Now;
        _windowContext.MicroBatches = null;
        _failures.Guard("gradient", static a =>
        {
            var session = a.Session;
            var windows = session.Windows;
            windows.MicroBatches.Capture(session.Model, session.Forward!, session.LossFunction!, a.Input, a.Target);
            if (windows.MicroBatches.UsedPasses) session.TellPassesOnce(windows.MicroBatches.PassesReason);
            session._windowContext.MicroBatches = (IWindowSource?)windows.MicroBatches.Sketched ?? windows.MicroBatches;
            session._microBatchesTaken = true;
        }, (Session: this, Input: input, Target: target));
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
    private readonly StatisticsWorker _worker = new();

    /// <summary>The worker thread of background statistics (tests read its thread-local counters through it).</summary>
    internal StatisticsWorker Worker => _worker;

    /// <summary>Publishes the pending window, waiting for its job if it is still running (training thread only).</summary>
    private void Publish()
    {
        if (_pending is not { } pending) return;
        _pending = null;
        long waiting = _scheduler.Now;
        pending.Job.Wait();
        foreach (var (what, exception) in pending.Job.Failures) _failures.Fail(what, exception);

        var context = pending.Job.Context;
        context.HoldSession(strongly: true);
        context.CurrentProbe = "session";
        foreach (var (name, value) in pending.Values) context.Report(name, value);
        var seconds = pending.Seconds;
        foreach (var (name, value) in pending.Job.Seconds) seconds[name] = seconds.GetValueOrDefault(name) + value;

        var snapshot = new ProbeSnapshot(RunId, context.Step, context.Window, DateTimeOffset.UtcNow, context.Values.ToArray(), seconds, _failures.Take());
        _publisher.Publish(snapshot);
        // Charged to the next interval: the publication, and how much longer the trainer's steps took while the worker
        // ran (measured against the steps while it did not); nothing of the first window's, whose code ran for the first
        // time (its publication makes the instruments).
        _scheduler.ChargeContention(charge: !pending.WarmUp);
        if (!pending.WarmUp) _scheduler.AddProbeTicks(_scheduler.Now - waiting);
    }

    /// <summary>
    /// Waits for the window whose statistics are still being computed (with <see cref="ProbeOptions.BackgroundStatistics"/>)
    /// and publishes it: after it, <see cref="Latest"/> and <see cref="History"/> hold every window closed so far. Call it
    /// on the training thread, for example after the training loop; <see cref="Dispose"/> calls it.
    /// </summary>
    public void Flush()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Enter(nameof(Flush));
        try
        {
            Publish();
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>Ends the session: calls each probe's end callback and frees the gradient buffer.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        try
        {
            _failures.Guard("session", static s => s.Publish(), this);   // under Strict a failure throws, after the cleanup below
        }
        finally
        {
            _disposed = true;
            _worker.Dispose();
            _runner.End();
            _telemetry.Unregister();
            Windows.Dispose();
            _stopping.Dispose();
            SessionRegistry.Remove(Model, this);
        }
    }
}

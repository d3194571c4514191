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
        _lifecycle = new WindowLifecycle(this, _scheduler, _failures, _runner, _publisher, _stopping, _stepContext, _windowContext, _worker, _logger);
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
        _lifecycle.Publish();
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
        _lifecycle.Publish();
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
            _lifecycle.Step(loss, input, target);
            return this;
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

    private WindowLifecycle _lifecycle = null!;   // made in the constructor, once the parts exist

    private readonly StatisticsWorker _worker = new();

    /// <summary>The worker thread of background statistics (tests read its thread-local counters through it).</summary>
    internal StatisticsWorker Worker => _worker;

    /// <summary>The optimizer whose learning rate is published, if any.</summary>
    internal torch.optim.Optimizer? Optimizer => _optimizer;

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
            _lifecycle.Publish();
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
            _failures.Guard("session", static s => s._lifecycle.Publish(), this);   // under Strict a failure throws, after the cleanup below
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

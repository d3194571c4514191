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
/// <c>optimizer.step()</c>; at each window the session takes the gradients of <see cref="ProbeOptions.WindowSize"/>
/// micro-batches, runs its probes and publishes a <see cref="ProbeSnapshot"/> to <see cref="History"/>, <see cref="WindowClosed"/>,
/// the meter <see cref="TrainingProbesMeter.Name"/> and <see cref="ProbeOptions.Output"/>. A failing probe is logged and counted.
/// </summary>
public sealed class ProbeSession : IDisposable
{
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
        _guard = new StepGuard(RunId);
        _logger = (ILogger?)options.LoggerFactory?.CreateLogger<ProbeSession>() ?? NullLogger.Instance;
        StoppingController.CheckMonitors(options, _logger, RunId);
        Windows = new SessionWindows(model, options, _logger);
        _scheduler = new WindowScheduler(options, options.TimeProvider, Windows.Length);
        _failures = new ProbeFailures(_logger, RunId, () => _scheduler.Steps, options.Strict);

        SessionStartup.AnnounceStorage(options, _logger);
        try
        {
            _runner = new ProbeRunner(SessionStartup.BuiltInProbes(options), options.Probes, _failures);
            _publisher = new SnapshotPublisher(options.HistoryCapacity, _failures);
            _stopping = new StoppingController(model, options, _logger, RunId, _failures, () => _scheduler.Steps);
            _telemetry = new SessionTelemetry(RunId, options.Worker, _publisher, _scheduler, _failures, _stopping);
            SessionStartup.ShowOnConsole(options, _publisher, _stopping);
            _publisher.Subscribe("stopping", _stopping.OnSnapshot);
            _publisher.Subscribe("WindowClosed", snapshot => WindowClosed?.Invoke(this, snapshot));
            _lifecycle = new WindowLifecycle(this, _scheduler, _failures, _runner, _publisher, _stopping, new ProbeStepContext(this), _worker, _logger);
            _stopping.Fired += (rule, decision, restored, probes) =>
            {
                Record.Add(new FiredRule(rule.Name, rule.Action, decision.Step, decision.Value, decision.Reason));
                RuleFired?.Invoke(this, new StoppingEventArgs(rule, decision, restored, probes));
            };
            _resources.Acquire(this);   // what the options ask the session to hold while it lives (the shared scrape server)
            _runner.Start(this);
            _telemetry.Announce();
        }
        catch
        {
            _resources.Release(_failures);
            _telemetry?.Unregister();
            Windows.Dispose();
            throw;
        }

        SessionStartup.WarmUp(_worker, options);
        SessionStartup.LogStart(_logger, RunId, Windows, options);
    }

    /// <summary>Creates a session for <paramref name="model"/>, the one that <c>model.Probe(...)</c> then uses.</summary>
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

    /// <summary>The session attached to <paramref name="model"/> (by <see cref="Attach"/> or the one-line call), or null.</summary>
    /// <param name="model">The model.</param>
    public static ProbeSession? Get(nn.Module model) => SessionRegistry.Get(model ?? throw new ArgumentNullException(nameof(model)));

    /// <summary>The session attached to <paramref name="model"/>, created on first use from <see cref="ProbeOptions.FromEnvironment()"/>.</summary>
    internal static ProbeSession For(nn.Module model, torch.optim.Optimizer? optimizer, Func<Tensor, Tensor, Tensor>? lossFunction = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var session = SessionRegistry.GetOrAdd(model, () => new ProbeSession(model, ProbeOptions.FromEnvironment(), optimizer));
        (session._optimizer, session.LossFunction) = (session._optimizer ?? optimizer, session.LossFunction ?? lossFunction);
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
    public IReadOnlyList<string> ParameterNames => Windows.Layout.Names;

    /// <summary>Number of probe callbacks that threw; each is logged, and training goes on.</summary>
    public int FailureCount => _failures.Count;

    /// <summary>The last published snapshot, or null before the first (any thread). Call <see cref="Flush"/> after the loop to publish the last window.</summary>
    public ProbeSnapshot? Latest => _publisher.Latest;

    /// <summary>The last <see cref="ProbeOptions.HistoryCapacity"/> published snapshots, oldest first (a copy; safe from any thread; see <see cref="Latest"/>).</summary>
    public IReadOnlyList<ProbeSnapshot> History => _publisher.History;

    /// <summary>Raised on the training thread when a window's snapshot is published: in a later <see cref="Step"/> (background statistics), or in <see cref="Flush"/> or <see cref="Dispose"/>.</summary>
    public event EventHandler<ProbeSnapshot>? WindowClosed;

    /// <summary>True once a <see cref="RuleAction.Stop"/> rule has fired: leave the loop before the next optimizer step (<c>if (model.Probe(loss).ShouldStop) break;</c>).</summary>
    public bool ShouldStop => _stopping.ShouldStop;

    /// <summary>Cancelled when <see cref="ShouldStop"/> becomes true, for trainers that pass a token around.</summary>
    public CancellationToken StopToken => _stopping.StopToken;

    /// <summary>Raised on the training thread when a rule fires (stop or warn), with the rule, the value, the step and the reason.</summary>
    public event EventHandler<StoppingEventArgs>? RuleFired;

    /// <summary>This session's copies of the rules of <see cref="ProbeOptions.Stopping"/>, with their state (best value, counts).</summary>
    public IReadOnlyList<StoppingRule> Rules => _stopping.Rules;

    /// <summary>The best weights (a CPU copy) a rule with <see cref="EarlyStopping.RestoreBestWeights"/> or <see cref="RuleAction.Checkpoint"/> kept; null before its first improvement.</summary>
    /// <param name="rule">One of <see cref="Rules"/>, or the rule of <see cref="ProbeOptions.Stopping"/> it copies.</param>
    public WeightSnapshot? BestWeights(StoppingRule rule) => _stopping.BestWeights(rule);

    /// <summary>Reports a value the probes do not compute (a validation loss, say) at this step: its rules run now, and it becomes the gauge <c>trainingprobes.&lt;name&gt;</c>.</summary>
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

    /// <summary>Restores the rules' state from <see cref="SaveStoppingState"/>, by rule name; a fired Stop rule sets <see cref="ShouldStop"/> again.</summary>
    /// <param name="json">What <see cref="SaveStoppingState"/> returned.</param>
    /// <exception cref="ArgumentException">A saved rule is not among this session's rules, or the reverse.</exception>
    public void RestoreStoppingState(string json) => _stopping.Restore(json);

    /// <summary>
    /// Saves what the session carries from window to window (counters, schedule, rules, Fisher averages, smoothed means,
    /// stateful probes) to resume with <see cref="RestoreState"/>. Call it between steps, beside the model's checkpoint.
    /// </summary>
    /// <param name="path">A <c>.safetensors</c> file; replaced atomically.</param>
    /// <exception cref="ArgumentException">The path does not end in <c>.safetensors</c>.</exception>
    public void SaveState(string path)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _lifecycle.Publish();
        SessionStateFile.Save(StatefulParts(), path, StateShape);
    }

    /// <summary>
    /// Restores what <see cref="SaveState"/> wrote, all or nothing: a file that does not fit this session (another model,
    /// other options or probes) leaves it as it was. The session then continues the saved run's steps and decisions.
    /// </summary>
    /// <param name="path">The file <see cref="SaveState"/> wrote.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a saved probe state, or does not fit this session; the message says what differs.</exception>
    public void RestoreState(string path)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _lifecycle.Publish();
        SessionStateFile.Restore(StatefulParts(), path, StateShape);
    }

    private string StateShape => $"{Windows.Layout.ParameterCount} parameters in {Windows.Layout.Parameters.Count} tensors, K = {Options.WindowSize}, geometries {Options.Geometries}";

    private IEnumerable<IStatefulPart> StatefulParts() =>
        [_scheduler, _stopping, Windows, .. _runner.Probes.OfType<IStatefulPart>()];

    /// <summary>The session's window data: the layout, the window's theta, the micro-batch gradients, the step ring.</summary>
    internal SessionWindows Windows { get; }

    /// <summary>The values the trainer reported and the rules that fired.</summary>
    private RunRecord Record { get; } = new();

    /// <summary>The values given to <see cref="Report"/>, oldest first (a copy; the last 100,000): gauges and rules, not <see cref="History"/>.</summary>
    public IReadOnlyList<ReportedValue> ReportedValues => Record.Reported;

    /// <summary>The stopping rules that fired (stop or warn), oldest first (a copy).</summary>
    public IReadOnlyList<FiredRule> FiredRules => Record.Fired;

    // What the session's parts and probes read from it.
    internal IReadOnlyList<TrainingProbe> RunningProbes => _runner.Probes;   // built-in first
    internal bool IsDisposed => _disposed;
    internal Func<Tensor, Tensor, Tensor>? LossFunction { get; private set; }   // options.Loss, or the one-line call's
    internal ILogger Logger => _logger;
    internal IReadOnlyList<IndicatorValue> CurrentValues => _publisher.Current;   // what the gauges report
    internal KeyValuePair<string, object?>[] SessionAttributes => _telemetry.SessionAttributes;
    internal SessionTelemetry Telemetry => _telemetry;
    internal StatisticsWorker Worker => _worker;
    internal torch.optim.Optimizer? Optimizer => _optimizer;   // whose learning rate is published

    /// <summary>Records one training step, after <c>loss.backward()</c> and before <c>optimizer.step()</c>; it never throws for a probe failure.</summary>
    /// <param name="loss">The step's loss (a one-element tensor), to publish the window's mean loss; optional.</param>
    /// <param name="input">The step's minibatch input; optional, used by probes that split it (<see cref="FixedPointProbe"/>).</param>
    /// <param name="target">The step's minibatch target; optional, as <paramref name="input"/>.</param>
    /// <returns>This session, so that the call can be chained.</returns>
    /// <exception cref="ObjectDisposedException">The session was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="loss"/> has more than one element, or was disposed.</exception>
    /// <exception cref="InvalidOperationException">Another thread is inside <see cref="Step"/> or <see cref="Flush"/>: a session serves one loop.</exception>
    public ProbeSession Step(Tensor? loss = null, Tensor? input = null, Tensor? target = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        StepGuard.CheckLoss(loss);
        _guard.Enter(nameof(Step));
        try
        {
            if (_guard.IsRepeated(loss))
                _failures.Fail("session", StepGuard.Repeated(), "probed_twice");
            else
                _lifecycle.Step(loss, input, target);
            return this;
        }
        finally
        {
            _guard.Exit();
        }
    }

    private readonly StepGuard _guard;
    private readonly SessionResources _resources = new();
    private readonly WindowLifecycle _lifecycle;
    private readonly StatisticsWorker _worker = new();

    /// <summary>Waits for the window still being computed and publishes it, so that <see cref="History"/> holds every closed window (training thread; <see cref="Dispose"/> calls it).</summary>
    public void Flush()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _guard.Enter(nameof(Flush));
        try
        {
            _lifecycle.Publish();
        }
        finally
        {
            _guard.Exit();
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
            try
            {
                _runner.End();   // under Strict a probe's end failure throws, after the cleanup below
            }
            finally
            {
                _resources.Release(_failures);   // a port must not stay bound by a session that is gone
                _telemetry.Unregister();
                Windows.Dispose();
                _stopping.Dispose();
                SessionRegistry.Remove(Model, this);
            }
        }
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Checkpoints;
using TrainingProbes.Probes;
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
    private static readonly ConditionalWeakTable<nn.Module, ProbeSession> Sessions = new();

    private readonly TrainingProbe[] _probes;
    private readonly bool[] _started;
    private readonly ProbeStepContext _stepContext;
    private readonly ProbeWindowContext _windowContext;
    private readonly ProbeSnapshot?[] _history;
    private readonly ILogger _logger;
    private torch.optim.Optimizer? _optimizer;
    private readonly object _historyLock = new();
    private int _historyCount;
    private int _historyNext;
    private ProbeSnapshot? _latest;
    private IndicatorValue[] _current = [];   // the last value of every series published so far (for the gauges)
    private readonly CancellationTokenSource _stopSource = new();
    private readonly HashSet<StoppingRule> _fired = [];
    private readonly Dictionary<StoppingRule, WeightSnapshot> _best = [];
    private volatile bool _shouldStop;
    private readonly bool _userProbesObserveSteps;
    private long _step;
    private int _window;
    private long _lastStepEnded;         // timestamp at which the previous Step call returned
    private double _gapAverage;          // average training ticks per step (capped gaps), for the cap and the budget
    private long _gaps;                  // gaps measured
    private long _intervalTrainingTicks; // training time (between Step calls) since the previous window's publication
    private long _intervalProbeTicks;    // probe time since then
    private double _costAverage;         // average probe ticks per window
    private long _windowStart;           // step at which the current (or next) window's first gradient is captured
    private long _totalProbeTicks, _totalTrainingTicks;
    private readonly long[] _probeTicks;      // per probe, then capture, then transfer; reset per window
    private int _failures;
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

        Window = new GradientWindow(model, options.ParameterFilter, options.WindowSize);
        var builtIn = options.BuiltInProbes
            ? new TrainingProbe[] { new LossProbe(), new ParameterDriftProbe(), new GradientStatisticsProbe(options), new OneThetaGradientProbe(options) }
            : [];
        _probes = [.. builtIn, .. options.Probes];
        var clash = _probes.GroupBy(p => p.Name).FirstOrDefault(g => g.Count() > 1);
        if (clash is not null)
        {
            Window.Dispose();
            throw new ArgumentException($"A probe named '{clash.Key}' is already built in; give yours another Name.", nameof(options));
        }

        _started = new bool[_probes.Length];
        // Steps outside a window cost nothing unless a user probe overrides OnStep (the built-in ones only act on
        // captured steps): then every step opens a dispose scope and calls the probes.
        _userProbesObserveSteps = options.Probes.Any(p =>
            p.GetType().GetMethod(nameof(TrainingProbe.OnStep), [typeof(ProbeStepContext)])?.DeclaringType != typeof(TrainingProbe));
        _probeTicks = new long[_probes.Length + 2];
        _stepContext = new ProbeStepContext(this);
        _windowContext = new ProbeWindowContext(this, Window);
        _history = new ProbeSnapshot?[options.HistoryCapacity];
        SessionAttributes = options.Worker is null
            ? [new(TrainingProbesMeter.RunIdAttribute, RunId)]
            : [new(TrainingProbesMeter.RunIdAttribute, RunId), new(TrainingProbesMeter.WorkerAttribute, options.Worker)];

        using (var scope = torch.NewDisposeScope())
        {
            for (int i = 0; i < _probes.Length; i++)
            {
                try
                {
                    _probes[i].OnSessionStart(this);
                    _started[i] = true;
                }
                catch (ProbeConfigurationException)
                {
                    // A probe that cannot work as configured (a port in use, say) stops the attach: better now than
                    // a silent run without it. Undo what the earlier probes set up.
                    for (int j = 0; j < i; j++)
                        if (_started[j]) Guard(_probes[j], static (p, _) => p.OnSessionEnd(), 0);
                    Window.Dispose();
                    throw;
                }
                catch (Exception ex)
                {
                    Fail(_probes[i].Name, ex);
                }
            }
        }

        ProbeTelemetry.Register(this);
        ProbeTelemetry.Failures.Add(0, SessionAttributes);   // the series exists (at 0) before the first failure
        foreach (var rule in options.Stopping)
            ProbeTelemetry.RulesFired.Add(0, RuleAttributes(rule));

        _logger.LogInformation(
            "TrainingProbes run {RunId}: watching {Parameters} parameters in {Tensors} tensors, window K={K} every N={N} steps, geometries {Geometries}.",
            RunId, Window.ParameterCount, Window.Parameters.Count, options.WindowSize, options.Interval, options.Geometries);
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
        lock (Sessions)
        {
            if (Sessions.TryGetValue(model, out var existing) && !existing._disposed)
                throw new InvalidOperationException(
                    $"This model already has a probe session (run {existing.RunId}). Dispose it before attaching another, or reuse it.");
            var session = new ProbeSession(model, options ?? new ProbeOptions(), optimizer);
            Sessions.AddOrUpdate(model, session);
            return session;
        }
    }

    /// <summary>A session that is not registered as the model's session (for one-off measurements).</summary>
    internal static ProbeSession CreateUnregistered(nn.Module model, ProbeOptions options) => new(model, options, optimizer: null);

    /// <summary>The session attached to <paramref name="model"/> (by <see cref="Attach"/> or the one-line call), or null.</summary>
    /// <param name="model">The model.</param>
    public static ProbeSession? Get(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return Sessions.TryGetValue(model, out var session) && !session._disposed ? session : null;
    }

    /// <summary>The session attached to <paramref name="model"/>, created on first use from <see cref="ProbeOptions.FromEnvironment()"/>.</summary>
    internal static ProbeSession For(nn.Module model, torch.optim.Optimizer? optimizer, Func<Tensor, Tensor, Tensor>? lossFunction = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!Sessions.TryGetValue(model, out var session) || session._disposed)
        {
            lock (Sessions)
            {
                if (!Sessions.TryGetValue(model, out session) || session._disposed)
                {
                    session = new ProbeSession(model, ProbeOptions.FromEnvironment(), optimizer);
                    Sessions.AddOrUpdate(model, session);
                }
            }
        }

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
    public long StepCount => _step;

    /// <summary>Names of the watched parameters.</summary>
    public IReadOnlyList<string> ParameterNames => _windowContext.ParameterNames;

    /// <summary>Number of probe callbacks that threw; each is logged, and training goes on.</summary>
    public int FailureCount => Volatile.Read(ref _failures);

    /// <summary>The last published snapshot, or null before the first window closes. Safe from any thread.</summary>
    public ProbeSnapshot? Latest => Volatile.Read(ref _latest);

    /// <summary>The last <see cref="ProbeOptions.HistoryCapacity"/> snapshots, oldest first (a copy; safe from any thread).</summary>
    public IReadOnlyList<ProbeSnapshot> History
    {
        get
        {
            lock (_historyLock)
            {
                var result = new ProbeSnapshot[_historyCount];
                int start = (_historyNext - _historyCount + _history.Length) % _history.Length;
                for (int i = 0; i < _historyCount; i++) result[i] = _history[(start + i) % _history.Length]!;
                return result;
            }
        }
    }

    /// <summary>Raised on the training thread after each window's snapshot is published.</summary>
    public event EventHandler<ProbeSnapshot>? WindowClosed;

    /// <summary>
    /// True once a <see cref="RuleAction.Stop"/> rule of <see cref="ProbeOptions.Stopping"/> has fired: the trainer
    /// should leave its loop before the next optimizer step (<c>if (model.Probe(loss).ShouldStop) break;</c>).
    /// </summary>
    public bool ShouldStop => _shouldStop;

    /// <summary>Cancelled when <see cref="ShouldStop"/> becomes true, for trainers that pass a token around.</summary>
    public CancellationToken StopToken => _stopSource.Token;

    /// <summary>Raised on the training thread when a rule fires (stop or warn), with the rule, the value, the step and the reason.</summary>
    public event EventHandler<StoppingEventArgs>? RuleFired;

    /// <summary>The stopping rules of <see cref="ProbeOptions.Stopping"/>.</summary>
    public IReadOnlyList<StoppingRule> Rules => Options.Stopping;

    /// <summary>
    /// The best weights a rule has kept (a CPU copy), for a rule with <see cref="EarlyStopping.RestoreBestWeights"/>
    /// or the <see cref="RuleAction.Checkpoint"/> action; null before its first improvement.
    /// </summary>
    /// <param name="rule">One of <see cref="Rules"/>.</param>
    public WeightSnapshot? BestWeights(StoppingRule rule) => _best.GetValueOrDefault(rule);

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
        MergeIntoCurrent([reported]);
        ProbeTelemetry.EnsureInstrument(name);
        foreach (var rule in Options.Stopping)
            if (rule.Monitor == name && rule.Geometry == geometry)
                Act(rule, rule.Evaluate(value, _step));
    }

    /// <summary>The stopping rules' state (best values, counters, steps) as JSON, to save with a training checkpoint.</summary>
    public string SaveStoppingState() => StoppingState.ToJson(Options.Stopping.Select(r => r.SaveState()).ToArray());

    /// <summary>
    /// Restores the rules' state saved by <see cref="SaveStoppingState"/>, matched by rule name, so that a resumed run
    /// continues the same decisions. A restored Stop rule that had fired sets <see cref="ShouldStop"/> again.
    /// </summary>
    /// <param name="json">What <see cref="SaveStoppingState"/> returned.</param>
    /// <exception cref="ArgumentException">A saved rule is not among this session's rules, or the reverse.</exception>
    public void RestoreStoppingState(string json)
    {
        var states = StoppingState.FromJson(json);
        var byName = Options.Stopping.ToDictionary(r => r.Name);
        var missing = Options.Stopping.Select(r => r.Name).Except(states.Select(s => s.Name)).ToList();
        var unknown = states.Select(s => s.Name).Where(n => !byName.ContainsKey(n)).ToList();
        if (missing.Count > 0 || unknown.Count > 0)
            throw new ArgumentException(
                $"The saved stopping state does not match this session's rules: missing {string.Join(", ", missing.DefaultIfEmpty("none"))}; unknown {string.Join(", ", unknown.DefaultIfEmpty("none"))}.",
                nameof(json));
        foreach (var state in states) byName[state.Name].RestoreState(state);
        foreach (var rule in Options.Stopping)
            if (rule.Action == RuleAction.Stop && rule.Stopped && _fired.Add(rule)) SetStop();
    }

    internal GradientWindow Window { get; }

    /// <summary>The loss function (output, target) -> scalar mean loss: <see cref="ProbeOptions.Loss"/>, or the one the one-line call passed.</summary>
    internal Func<Tensor, Tensor, Tensor>? LossFunction { get; private set; }

    internal ILogger Logger => _logger;

    /// <summary>The last value of every series published so far (safe from any thread): what the gauges report.</summary>
    internal IReadOnlyList<IndicatorValue> CurrentValues => Volatile.Read(ref _current);

    /// <summary>The attributes every metric of this session carries: run id, and worker when set.</summary>
    internal KeyValuePair<string, object?>[] SessionAttributes { get; }

    /// <summary>The attributes of one published value (called on the exporter's thread).</summary>
    internal KeyValuePair<string, object?>[] Attributes(in IndicatorValue value)
    {
        var attributes = new List<KeyValuePair<string, object?>>(SessionAttributes.Length + 3);
        attributes.AddRange(SessionAttributes);
        attributes.Add(new(TrainingProbesMeter.ProbeAttribute, value.Probe));
        if (value.Geometry != Geometry.None) attributes.Add(new(TrainingProbesMeter.GeometryAttribute, value.Geometry.ToName()));
        if (value.Layer is not null) attributes.Add(new(TrainingProbesMeter.LayerAttribute, value.Layer));
        return attributes.ToArray();
    }

    /// <summary>
    /// Records one training step: call it after <c>loss.backward()</c> and before <c>optimizer.step()</c>.
    /// On steps outside a window it only counts the step. It never throws for a probe failure.
    /// </summary>
    /// <param name="loss">The step's loss (a one-element tensor), to publish the window's mean loss; optional.</param>
    /// <param name="input">The step's minibatch input; optional, used by probes that split it (<see cref="FixedPointProbe"/>).</param>
    /// <param name="target">The step's minibatch target; optional, as <paramref name="input"/>.</param>
    /// <returns>This session, so that the call can be chained.</returns>
    /// <exception cref="ObjectDisposedException">The session was disposed.</exception>
    /// <exception cref="ArgumentException"><paramref name="loss"/> has more than one element.</exception>
    public ProbeSession Step(Tensor? loss = null, Tensor? input = null, Tensor? target = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (loss is not null && loss.numel() != 1)
            throw new ArgumentException(
                $"Step(loss) takes the scalar loss that backward() was called on; got a tensor of shape [{string.Join(", ", loss.shape)}]. Reduce it with .mean() first.",
                nameof(loss));

        long step = _step++;
        long started = Stopwatch.GetTimestamp();
        MeasureTrainingGap(started);
        long phase = step - _windowStart;
        int slot = phase >= 0 && phase < Options.WindowSize ? (int)phase : -1;
        if (slot < 0 && !_userProbesObserveSteps)
        {
            _lastStepEnded = started;
            return this;
        }

        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            if (slot >= 0)
            {
                long captureStarted = Stopwatch.GetTimestamp();
                try
                {
                    Window.Capture(slot);
                }
                catch (Exception ex)
                {
                    Fail("capture", ex);
                }
                _probeTicks[_probes.Length] += Stopwatch.GetTimestamp() - captureStarted;
            }

            _stepContext.Step = step;
            _stepContext.WindowSlot = slot;
            _stepContext.Loss = loss;
            _stepContext.Input = input;
            _stepContext.Target = target;
            for (int i = 0; i < _probes.Length; i++)
            {
                if (!_started[i]) continue;
                long probeStarted = Stopwatch.GetTimestamp();
                Guard(_probes[i], static (p, c) => p.OnStep(c), _stepContext);
                _probeTicks[i] += Stopwatch.GetTimestamp() - probeStarted;
            }
            _stepContext.Loss = _stepContext.Input = _stepContext.Target = null;
        }

        _intervalProbeTicks += Stopwatch.GetTimestamp() - started;
        if (slot == Options.WindowSize - 1) CloseWindow(input, target);
        _lastStepEnded = Stopwatch.GetTimestamp();
        return this;
    }

    /// <summary>
    /// Adds the time since the previous Step call returned (the trainer's own work on one step) to the training
    /// time. A gap over ten times the average (an evaluation pass, a checkpoint, another model trained in between)
    /// counts as ten averages, so that pauses outside training do not buy the probes more time.
    /// </summary>
    private void MeasureTrainingGap(long now)
    {
        if (_lastStepEnded == 0) return;
        long gap = now - _lastStepEnded;
        if (_gaps >= 10) gap = (long)Math.Min(gap, 10 * _gapAverage);
        _gaps++;
        _gapAverage += (gap - _gapAverage) / Math.Min(_gaps, 100);
        _intervalTrainingTicks += gap;
    }

    private void CloseWindow(Tensor? input, Tensor? target)
    {
        long started = Stopwatch.GetTimestamp();
        var context = _windowContext;
        context.Begin(_step, _window);
        context.Input = input;
        context.Target = target;
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            for (int i = 0; i < _probes.Length; i++)
            {
                if (!_started[i]) continue;
                context.CurrentProbe = _probes[i].Name;
                long probeStarted = Stopwatch.GetTimestamp();
                Guard(_probes[i], static (p, c) => p.OnWindowClosed(c), context);
                _probeTicks[i] += Stopwatch.GetTimestamp() - probeStarted;
            }

            long transferStarted = Stopwatch.GetTimestamp();
            try
            {
                context.Resolve(Fail);
            }
            catch (Exception ex)
            {
                Fail("transfer", ex);
            }
            _probeTicks[_probes.Length + 1] += Stopwatch.GetTimestamp() - transferStarted;
        }

        context.CurrentProbe = "session";
        if (_optimizer is not null)
        {
            try
            {
                var group = _optimizer.ParamGroups.FirstOrDefault();
                if (group is not null) context.Report(Indicators.LearningRate, group.LearningRate);
            }
            catch (Exception ex)
            {
                Fail("session", ex);
            }
        }

        // Overhead: probe time over the training time without probes, since the previous window.
        long now = Stopwatch.GetTimestamp();
        long probeTicks = _intervalProbeTicks + (now - started);
        long trainingTicks = _intervalTrainingTicks;
        context.Report(Indicators.ProbeOverhead, trainingTicks > 0 ? (double)probeTicks / trainingTicks : double.NaN);
        // The first window pays one-time costs (JIT compilation, first allocations, loading kernels) that say nothing
        // about the windows to come: it is left out of the ledger, and the second window follows the fixed Interval.
        bool warmUp = _window == 0;
        if (!warmUp)
        {
            _totalProbeTicks += probeTicks;
            _totalTrainingTicks += trainingTicks;
            _costAverage = _window == 1 ? probeTicks : 0.7 * _costAverage + 0.3 * probeTicks;
        }

        context.Report(Indicators.ProbeOverheadTotal, _totalTrainingTicks > 0 ? (double)_totalProbeTicks / _totalTrainingTicks : double.NaN);
        long wait = warmUp ? FixedWait() : StepsUntilNextWindow();
        context.Report(Indicators.ProbeInterval, _step - _windowStart + wait);
        _windowStart = _step + wait;
        _intervalProbeTicks = 0;
        _intervalTrainingTicks = 0;

        context.Input = context.Target = null;
        var probeSeconds = new Dictionary<string, double>(_probeTicks.Length);
        for (int i = 0; i < _probes.Length; i++) probeSeconds[_probes[i].Name] = Stopwatch.GetElapsedTime(0, _probeTicks[i]).TotalSeconds;
        probeSeconds["capture"] = Stopwatch.GetElapsedTime(0, _probeTicks[_probes.Length]).TotalSeconds;
        probeSeconds["transfer"] = Stopwatch.GetElapsedTime(0, _probeTicks[_probes.Length + 1]).TotalSeconds;
        Array.Clear(_probeTicks);

        var snapshot = new ProbeSnapshot(RunId, _step, _window, DateTimeOffset.UtcNow, context.Values.ToArray(), probeSeconds);
        _window++;
        long publishing = Stopwatch.GetTimestamp();
        Publish(snapshot);
        _intervalProbeTicks += Stopwatch.GetTimestamp() - publishing;   // charged to the next interval
    }

    /// <summary>
    /// Steps from now (the end of a window) to the start of the next window. Without a budget, the fixed
    /// <see cref="ProbeOptions.Interval"/> from start to start. With one, a ledger: all probe time P and all training
    /// time T so far, and the cost C of the next window (a moving average of window costs), choose the wait S so that
    /// (P + C) / (T + (S + K) t) = budget, t the average training time per step. An expensive window (an active one)
    /// is paid back by a longer wait, a cheap stretch lets windows come sooner, and the achieved overhead stays at the
    /// budget over the run. Credit is spent at most at twice the steady rate (S at least half of C / (budget t) - K).
    /// Never below 0 (windows back to back), never above <see cref="ProbeOptions.MaxInterval"/>.
    /// </summary>
    /// <summary>Steps from now to <see cref="ProbeOptions.Interval"/> steps after this window's start.</summary>
    private long FixedWait() => Math.Max(_windowStart + Options.Interval - _step, 0);

    private long StepsUntilNextWindow()
    {
        int k = Options.WindowSize;
        if (Options.OverheadBudget is not { } budget || _gapAverage <= 0 || _totalTrainingTicks <= 0)
            return FixedWait();
        double ledger = ((_totalProbeTicks + _costAverage) / budget - _totalTrainingTicks) / _gapAverage - k;
        // Credit saved while windows were rare (say after an expensive first window) is spent at most twice as fast as
        // the steady rate, rather than in a burst of back-to-back windows.
        double steady = _costAverage / budget / _gapAverage - k;
        double wait = Math.Max(ledger, 0.5 * steady);
        return (long)Math.Clamp(Math.Ceiling(wait), 0, ProbeOptions.MaxInterval);
    }

    private void Publish(ProbeSnapshot snapshot)
    {
        lock (_historyLock)
        {
            _history[_historyNext] = snapshot;
            _historyNext = (_historyNext + 1) % _history.Length;
            _historyCount = Math.Min(_historyCount + 1, _history.Length);
        }

        Volatile.Write(ref _latest, snapshot);

        // Values that are not computed at every window (an active window's) keep their last value for the gauges.
        MergeIntoCurrent(snapshot.Values);
        try
        {
            ProbeTelemetry.EnsureInstruments(snapshot);
            ProbeTelemetry.Windows.Add(1, SessionAttributes);
            foreach (var (probe, seconds) in snapshot.ProbeSeconds)
                ProbeTelemetry.ProbeDuration.Record(seconds, [.. SessionAttributes, new(TrainingProbesMeter.ProbeAttribute, probe)]);
            if (Options.Output is { } output) output.WriteLine(ConsoleSummary.Format(snapshot, Options.Geometries));
            foreach (var rule in Options.Stopping)
                if (rule.TryEvaluate(snapshot, out var decision)) Act(rule, decision);
            WindowClosed?.Invoke(this, snapshot);
        }
        catch (Exception ex)
        {
            Fail("publish", ex);
        }

    }

    /// <summary>What a rule's decision means for the run: keep best weights, stop, warn; once per firing.</summary>
    private void Act(StoppingRule rule, RuleDecision decision)
    {
        bool keepsWeights = rule.Action == RuleAction.Checkpoint || rule is EarlyStopping { RestoreBestWeights: true };
        if (decision.Improved && keepsWeights)
        {
            if (_best.TryGetValue(rule, out var kept)) kept.CaptureInto(Model, decision.Step, decision.Value);
            else _best[rule] = WeightSnapshot.Capture(Model, decision.Step, decision.Value);
            if (rule.Action == RuleAction.Checkpoint && Options.CheckpointPath is { } path)
                CheckpointFile.Save(_best[rule], path, path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? CheckpointFormat.Safetensors : CheckpointFormat.PyTorch);
        }

        if (!decision.Fired || rule.Action == RuleAction.Checkpoint) return;
        if (rule.Action == RuleAction.Stop && !_fired.Add(rule)) return;   // a Stop rule stays fired: act once

        bool restored = false;
        if (rule.Action == RuleAction.Stop && rule is EarlyStopping { RestoreBestWeights: true } && _best.TryGetValue(rule, out var best))
        {
            best.RestoreTo(Model);
            restored = true;
        }

        ProbeTelemetry.RulesFired.Add(1, RuleAttributes(rule));
        string what = rule.Action == RuleAction.Stop ? "stop" : "warning";
        _logger.LogWarning("TrainingProbes run {RunId}: {What} at step {Step}, rule '{Rule}': {Reason}{Restored}",
            RunId, what, decision.Step, rule.Name, decision.Reason, restored ? $" Restored the best weights (step {_best[rule].Step})." : "");
        Options.Output?.WriteLine($"[probes] {what} at step {decision.Step}: {decision.Reason} (rule: {rule.Name})" +
            (restored ? $"; restored the best weights of step {_best[rule].Step}" : ""));
        if (rule.Action == RuleAction.Stop) SetStop();
        RuleFired?.Invoke(this, new StoppingEventArgs(rule, decision, restored));
    }

    private void SetStop()
    {
        _shouldStop = true;
        _stopSource.Cancel();
    }

    private KeyValuePair<string, object?>[] RuleAttributes(StoppingRule rule) =>
        [.. SessionAttributes, new("rule", rule.Name), new("action", rule.Action.ToString().ToLowerInvariant())];

    /// <summary>Replaces the last values of the given series (by name, geometry, layer and probe) for the gauges.</summary>
    private void MergeIntoCurrent(IReadOnlyList<IndicatorValue> values)
    {
        var merged = new Dictionary<(string, Geometry, string?, string), IndicatorValue>(_current.Length + values.Count);
        foreach (var value in _current) merged[(value.Name, value.Geometry, value.Layer, value.Probe)] = value;
        foreach (var value in values) merged[(value.Name, value.Geometry, value.Layer, value.Probe)] = value;
        Volatile.Write(ref _current, merged.Values.ToArray());
    }

    private bool Guard<T>(TrainingProbe probe, Action<TrainingProbe, T> callback, T argument)
    {
        try
        {
            callback(probe, argument);
            return true;
        }
        catch (Exception ex)
        {
            Fail(probe.Name, ex);
            return false;
        }
    }

    private void Fail(string probe, Exception ex)
    {
        int count = Interlocked.Increment(ref _failures);
        ProbeTelemetry.Failures.Add(1, [.. SessionAttributes, new(TrainingProbesMeter.ProbeAttribute, probe)]);
        if (count <= 10 || count % 100 == 0)
            _logger.LogWarning(ex, "TrainingProbes run {RunId}: probe '{Probe}' failed at step {Step} (failure {Count}); training goes on.",
                RunId, probe, _step, count);
    }

    /// <summary>Ends the session: calls each probe's end callback and frees the gradient buffer.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        using (var scope = torch.NewDisposeScope())
        {
            for (int i = 0; i < _probes.Length; i++)
                if (_started[i]) Guard(_probes[i], static (p, _) => p.OnSessionEnd(), 0);
        }

        ProbeTelemetry.Unregister(this);
        Window.Dispose();
        foreach (var weights in _best.Values) weights.Dispose();
        _best.Clear();
        _stopSource.Dispose();
        lock (Sessions)
        {
            if (Sessions.TryGetValue(Model, out var current) && ReferenceEquals(current, this)) Sessions.Remove(Model);
        }
    }
}

internal static class ConsoleSummary
{
    public static string Format(ProbeSnapshot s, Geometry geometries)
    {
        var culture = CultureInfo.InvariantCulture;
        var text = new System.Text.StringBuilder();
        text.Append(culture, $"[probes] step {s.Step,6}");
        Append(text, "loss", s, Indicators.Loss, Geometry.None);
        Append(text, "drift", s, Indicators.ParameterDrift, Geometry.None);
        Append(text, "gsnr", s, Indicators.Gsnr, Geometry.None);
        foreach (var g in new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive })
        {
            if (!geometries.HasFlag(g)) continue;
            text.Append(" | ").Append(g.ToName()[..3]);
            Append(text, "cos", s, Indicators.Cosine, g);
            Append(text, "regret", s, Indicators.RelativeRegret, g);
            Append(text, "kappa", s, Indicators.ContrastiveFlatness, g);
        }

        // The optimizer's step-to-step agreement: negative while the iterate oscillates across a valley.
        if (s.TryGetValue(Probes.GradientStatisticsProbe.Prefix + Indicators.Cosine, Geometry.Euclidean, out _))
        {
            text.Append(" | step");
            Append(text, "cos", s, Probes.GradientStatisticsProbe.Prefix + Indicators.Cosine, Geometry.Euclidean);
        }

        return text.ToString();
    }

    /// <summary>Appends <c>label value</c>, with <c>±stderr</c> when the value has a standard error; nothing for an undefined value.</summary>
    private static void Append(System.Text.StringBuilder text, string label, ProbeSnapshot s, string name, Geometry g)
    {
        if (!s.TryGetValue(name, g, out double v) || double.IsNaN(v)) return;
        text.Append(' ').Append(label).Append(' ').Append(v.ToString("G3", CultureInfo.InvariantCulture));
        if (s.TryGetValue(name + Indicators.StandardErrorSuffix, g, out double error) && double.IsFinite(error))
            text.Append('±').Append(error.ToString("G2", CultureInfo.InvariantCulture));
    }
}

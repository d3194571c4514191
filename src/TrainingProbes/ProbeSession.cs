using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Probes;
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
    private long _step;
    private int _window;
    private long _intervalStarted;       // timestamp of the previous window's publication (or of the first step)
    private long _intervalProbeTicks;    // probe time since then
    private long _windowStart;           // step at which the current (or next) window's first gradient is captured
    private long _intervalSteps;         // steps since the previous window's publication
    private double _costSum, _trainingSum, _stepSum, _windowWeight;   // decaying sums for the overhead budget
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
        RunId = options.RunId ?? $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Random.Shared.Next(0x10000):x4}";
        _logger = (ILogger?)options.LoggerFactory?.CreateLogger<ProbeSession>() ?? NullLogger.Instance;

        Window = new GradientWindow(model, options.ParameterFilter, options.WindowSize);
        var builtIn = options.BuiltInProbes
            ? new TrainingProbe[] { new LossProbe(), new ParameterDriftProbe(), new GradientStatisticsProbe(options) }
            : [];
        _probes = [.. builtIn, .. options.Probes];
        var clash = _probes.GroupBy(p => p.Name).FirstOrDefault(g => g.Count() > 1);
        if (clash is not null)
        {
            Window.Dispose();
            throw new ArgumentException($"A probe named '{clash.Key}' is already built in; give yours another Name.", nameof(options));
        }

        _started = new bool[_probes.Length];
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

        _logger.LogInformation(
            "TrainingProbes run {RunId}: watching {Parameters} parameters in {Tensors} tensors, window K={K} every N={N} steps, geometries {Geometries}.",
            RunId, Window.ParameterCount, Window.Parameters.Count, options.WindowSize, options.Interval, options.Geometries);
    }

    /// <summary>
    /// Creates a session for <paramref name="model"/> and makes it the one that
    /// <see cref="ModuleProbeExtensions.Probe(nn.Module, Tensor?, optim.Optimizer?, Tensor?, Tensor?)"/> uses for that model.
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
    internal static ProbeSession For(nn.Module model, torch.optim.Optimizer? optimizer)
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

    internal GradientWindow Window { get; }

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
        _intervalSteps++;
        long phase = step - _windowStart;
        int slot = phase >= 0 && phase < Options.WindowSize ? (int)phase : -1;
        if (slot < 0 && Options.Probes.Count == 0) return this;

        long started = Stopwatch.GetTimestamp();
        if (_intervalStarted == 0) _intervalStarted = started;
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
        return this;
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
        long trainingTicks = now - _intervalStarted - probeTicks;
        context.Report(Indicators.ProbeOverhead, trainingTicks > 0 ? (double)probeTicks / trainingTicks : double.NaN);
        _totalProbeTicks += probeTicks;
        _totalTrainingTicks += Math.Max(trainingTicks, 0);
        context.Report(Indicators.ProbeOverheadTotal, _totalTrainingTicks > 0 ? (double)_totalProbeTicks / _totalTrainingTicks : double.NaN);
        int next = NextInterval(probeTicks, trainingTicks);
        context.Report(Indicators.ProbeInterval, next);
        _windowStart = Math.Max(_windowStart + next, _step);
        _intervalProbeTicks = 0;
        _intervalSteps = 0;

        context.Input = context.Target = null;
        var probeSeconds = new Dictionary<string, double>(_probeTicks.Length);
        for (int i = 0; i < _probes.Length; i++) probeSeconds[_probes[i].Name] = Stopwatch.GetElapsedTime(0, _probeTicks[i]).TotalSeconds;
        probeSeconds["capture"] = Stopwatch.GetElapsedTime(0, _probeTicks[_probes.Length]).TotalSeconds;
        probeSeconds["transfer"] = Stopwatch.GetElapsedTime(0, _probeTicks[_probes.Length + 1]).TotalSeconds;
        Array.Clear(_probeTicks);

        var snapshot = new ProbeSnapshot(RunId, _step, _window, DateTimeOffset.UtcNow, context.Values.ToArray(), probeSeconds);
        _window++;
        Publish(snapshot);
    }

    /// <summary>
    /// Steps from this window's start to the next one's. Fixed (<see cref="ProbeOptions.Interval"/>) without a budget;
    /// with one, the interval at which the probes' average cost per window is the budgeted fraction of the training
    /// time of that many steps, from decaying averages (about the last 50 windows, so that an active window every few
    /// passive ones is paid for on average): N = cost per window / (budget x training seconds per step), at least K.
    /// </summary>
    private int NextInterval(long probeTicks, long trainingTicks)
    {
        if (Options.OverheadBudget is not { } budget) return Options.Interval;
        const double Decay = 0.98;
        _costSum = Decay * _costSum + probeTicks;
        _trainingSum = Decay * _trainingSum + Math.Max(trainingTicks, 0);
        _stepSum = Decay * _stepSum + _intervalSteps;
        _windowWeight = Decay * _windowWeight + 1;
        if (_trainingSum <= 0 || _stepSum <= 0) return Options.Interval;
        double costPerWindow = _costSum / _windowWeight;
        double trainingPerStep = _trainingSum / _stepSum;
        double interval = costPerWindow / (budget * trainingPerStep);
        return (int)Math.Clamp(Math.Round(interval), Options.WindowSize, ProbeOptions.MaxInterval);
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
        try
        {
            ProbeTelemetry.EnsureInstruments(snapshot);
            ProbeTelemetry.Windows.Add(1, SessionAttributes);
            foreach (var (probe, seconds) in snapshot.ProbeSeconds)
                ProbeTelemetry.ProbeDuration.Record(seconds, [.. SessionAttributes, new(TrainingProbesMeter.ProbeAttribute, probe)]);
            if (Options.Output is { } output) output.WriteLine(ConsoleSummary.Format(snapshot, Options.Geometries));
            WindowClosed?.Invoke(this, snapshot);
        }
        catch (Exception ex)
        {
            Fail("publish", ex);
        }

        _intervalStarted = Stopwatch.GetTimestamp();
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
        return text.ToString();
    }

    private static void Append(System.Text.StringBuilder text, string label, ProbeSnapshot s, string name, Geometry g)
    {
        if (s.TryGetValue(name, g, out double v))
            text.Append(' ').Append(label).Append(' ').Append(v.ToString("G3", CultureInfo.InvariantCulture));
    }
}

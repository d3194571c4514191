using Microsoft.Extensions.Logging;
using TrainingProbes.Checkpoints;
using static TorchSharp.torch;

namespace TrainingProbes.Stopping;

/// <summary>
/// The session's stopping rules at work, as Lightning's <c>EarlyStopping</c> callback is one part of a trainer: it
/// evaluates each rule on every published snapshot and every reported value, keeps the best weights a rule asks for,
/// writes checkpoints, sets <see cref="ShouldStop"/> and cancels <see cref="StopToken"/> when a stop rule fires, and
/// saves and restores the rules' state.
/// </summary>
internal sealed class StoppingController : IDisposable, IStatefulPart
{
    private readonly nn.Module _model;
    private readonly ProbeOptions _options;
    private readonly ILogger _logger;
    private readonly string _runId;
    private readonly TrainingProbes.Session.ProbeFailures _failures;
    private readonly Func<long> _steps;
    private readonly CancellationTokenSource _stopSource = new();
    private readonly HashSet<StoppingRule> _fired = [];
    private readonly Dictionary<StoppingRule, WeightSnapshot> _best = [];
    private readonly StoppingRule[] _rules;
    private readonly Dictionary<StoppingRule, StoppingRule> _copies;   // the options' rule -> this session's copy
    private volatile bool _shouldStop;

    public StoppingController(nn.Module model, ProbeOptions options, ILogger logger, string runId, TrainingProbes.Session.ProbeFailures failures, Func<long> steps)
    {
        _model = model;
        _options = options;
        _logger = logger;
        _runId = runId;
        _failures = failures;
        _steps = steps;
        // Each session works on its own copy of each rule (options may be shared); the default rule starts fresh.
        _copies = new Dictionary<StoppingRule, StoppingRule>(ReferenceEqualityComparer.Instance);
        foreach (var rule in options.Stopping)
            _copies.TryAdd(rule, rule.IsDefault ? ProbeOptions.DefaultStoppingRule() : rule.CopyForSession());
        _rules = [.. options.Stopping.Select(rule => _copies[rule])];
        MonitorsLoss = _rules.Any(rule => rule.Monitor == Indicators.Loss && rule.Geometry == Geometry.None);
    }

    private readonly HashSet<(string, Geometry)> _seen = [];
    private int _windows;
    private ProbeSnapshot? _latest;

    /// <summary>
    /// Warns about each rule whose monitor the catalogue does not know but that is a few letters away from a name it
    /// does (a likely typo), before the session allocates anything; under <see cref="ProbeOptions.Strict"/> it throws.
    /// </summary>
    /// <exception cref="ArgumentException">Strict, and a rule's monitor looks misspelt.</exception>
    public static void CheckMonitors(ProbeOptions options, ILogger logger, string runId)
    {
        foreach (var rule in options.Stopping)
        {
            if (rule.IsDefault || MonitorCheck.LikelyMeant(rule.Monitor) is not { } meant) continue;
            string message = $"The stopping rule '{rule.Name}' monitors {rule.MonitorLabel}, which no built-in probe publishes; did you mean {meant}? " +
                "(A value your trainer reports with ProbeSession.Report, or your own probe publishes, may have any name.)";
            if (options.Strict) throw new ArgumentException(message + " ProbeOptions.Strict is set.", nameof(options));
            logger.LogWarning("TrainingProbes run {RunId}: {Message}", runId, message);
            options.Output?.WriteLine("[probes] " + message);
        }
    }

    /// <summary>The rules.</summary>
    public IReadOnlyList<StoppingRule> Rules => _rules;

    /// <summary>True once a stop rule has fired.</summary>
    public bool ShouldStop => _shouldStop;

    /// <summary>Cancelled when <see cref="ShouldStop"/> becomes true.</summary>
    public CancellationToken StopToken => _stopSource.Token;

    /// <summary>Raised when a rule fires (stop or warn), on the training thread.</summary>
    public event Action<StoppingRule, RuleDecision, bool, string>? Fired;

    /// <summary>The best weights a rule has kept, or null.</summary>
    public WeightSnapshot? BestWeights(StoppingRule rule) => _best.GetValueOrDefault(_copies.GetValueOrDefault(rule) ?? rule);

    /// <summary>Evaluates every rule on a published snapshot.</summary>
    public void OnSnapshot(ProbeSnapshot snapshot)
    {
        // Each rule on its own: one that throws (or whose checkpoint cannot be written) skips no other.
        _windows++;
        _latest = snapshot;
        foreach (var rule in _rules)
        {
            if (snapshot.TryGetValue(rule.Monitor, rule.Geometry, out _)) _seen.Add((rule.Monitor, rule.Geometry));
            // Names the catalogue knows were checked at attach (some appear only every few windows: a fixed-point window's).
            // Another name may be a value the trainer reports rarely (once per epoch): a warning, never thrown.
            if (_windows == MonitorCheck.Patience && !rule.IsDefault && !_seen.Contains((rule.Monitor, rule.Geometry)) && !IndicatorCatalogue.TryFind(rule.Monitor, out _))
                _logger.LogWarning("TrainingProbes run {RunId}: {Message}", _runId, MonitorCheck.NeverSeen(rule, _windows));
            try
            {
                if (rule.TryEvaluate(snapshot, out var decision)) Act(rule, decision);
            }
            catch (Exception ex) when (ex is not ProbeFailureException)
            {
                _failures.Fail("stopping", ex, "rule_failed");
            }
        }
    }

    /// <summary>Evaluates the rules that monitor a value the trainer reported (a validation loss, say).</summary>
    /// <summary>Whether a rule copies the weights when it improves (a checkpoint action, or best weights to restore).</summary>
    public bool KeepsWeights => _rules.Any(rule => rule.Action == RuleAction.Checkpoint || rule is EarlyStopping { RestoreBestWeights: true });

    /// <summary>Whether a rule monitors the training loss (<see cref="Indicators.Loss"/>).</summary>
    public bool MonitorsLoss { get; }

    public void OnReported(string name, Geometry geometry, double value, long step)
    {
        _seen.Add((name, geometry));
        foreach (var rule in _rules)
            if (rule.Monitor == name && rule.Geometry == geometry)
                Act(rule, rule.Evaluate(value, step));
    }

    /// <summary>What a rule's decision means for the run: keep best weights, stop, warn; once per firing.</summary>
    private void Act(StoppingRule rule, RuleDecision decision)
    {
        bool keepsWeights = rule.Action == RuleAction.Checkpoint || rule is EarlyStopping { RestoreBestWeights: true };
        if (decision.Improved && keepsWeights) KeepWeights(rule, decision);

        if (!decision.Fired || rule.Action == RuleAction.Checkpoint) return;
        if (rule.Action == RuleAction.Stop && !_fired.Add(rule)) return;   // a Stop rule stays fired: act once

        bool restored = false;
        if (rule.Action == RuleAction.Stop && rule is EarlyStopping { RestoreBestWeights: true } && _best.TryGetValue(rule, out var best))
        {
            // A restore that fails (the model changed shape since the copy) still stops the run: the rule fired.
            try
            {
                best.RestoreTo(_model);
                restored = true;
            }
            catch (Exception ex) when (ex is not ProbeFailureException)
            {
                _failures.Fail("stopping", new InvalidOperationException(
                    $"Rule '{rule.Name}' fired, but its best weights (step {best.Step}) could not be restored: {ex.Message} The run stops with the current weights.", ex),
                    "restore_failed");
            }
        }

        string what = rule.Action == RuleAction.Stop ? "stop" : "warning";
        string probes = StopExplanation.Values(_latest) is { Length: > 0 } values ? $"; the probes at step {_latest!.Step} (smoothed, ± spread between windows): {values}" : "";
        _logger.LogWarning("TrainingProbes run {RunId}: {What} at step {Step}, rule '{Rule}': {Reason}{Restored}{Probes}",
            _runId, what, decision.Step, rule.Name, decision.Reason, restored ? $" Restored the best weights (step {_best[rule].Step})." : "", probes);
        _options.Output?.WriteLine($"[probes] {what} at step {decision.Step}: {decision.Reason} (rule: {rule.Name})" +
            (restored ? $"; restored the best weights of step {_best[rule].Step}" : "") + probes);
        if (rule.Action == RuleAction.Stop) SetStop();
        Fired?.Invoke(rule, decision, restored, StopExplanation.Values(_latest));
    }

    /// <summary>
    /// Copies the weights of an improvement and writes the checkpoint. A failure (a path that became a folder, a full or
    /// read-only disk) is a counted, logged failure of <c>checkpoint</c>; the rule's decision and the other rules stand.
    /// </summary>
    private void KeepWeights(StoppingRule rule, RuleDecision decision)
    {
        try
        {
            if (_best.TryGetValue(rule, out var kept)) kept.CaptureInto(_model, decision.Step, decision.Value);
            else _best[rule] = WeightSnapshot.Capture(_model, decision.Step, decision.Value);
        }
        catch (Exception ex) when (ex is not ProbeFailureException)
        {
            _failures.Fail("checkpoint", new InvalidOperationException(
                $"Rule '{rule.Name}' improved at step {decision.Step}, but the weights could not be copied: {ex.Message}", ex), "copy_failed");
            return;
        }

        if (rule.Action != RuleAction.Checkpoint || _options.CheckpointPath is not { } path) return;
        try
        {
            CheckpointFile.Save(_best[rule], path, path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? CheckpointFormat.Safetensors : CheckpointFormat.PyTorch);
        }
        catch (Exception ex) when (ex is not ProbeFailureException)
        {
            _failures.Fail("checkpoint", new IOException(
                $"The checkpoint of step {decision.Step} (rule '{rule.Name}') could not be written to {path}: {ex.Message} " +
                "The best weights are still kept in memory (ProbeSession.BestWeights); free the path or choose another CheckpointPath.", ex), "write_failed");
        }
    }

    private void SetStop()
    {
        _shouldStop = true;
        _stopSource.Cancel();
    }

    /// <summary>The rules' state as JSON.</summary>
    public string Save() => StoppingState.ToJson(_rules.Select(r => r.SaveState()).ToArray());

    /// <summary>Restores <see cref="Save()"/>'s state, matched by rule name. A restored stop rule that had fired stops again.</summary>
    public void Restore(string json)
    {
        var states = StoppingState.FromJson(json);
        var byName = _rules.ToDictionary(r => r.Name);
        var missing = _rules.Select(r => r.Name).Except(states.Select(s => s.Name)).ToList();
        var unknown = states.Select(s => s.Name).Where(n => !byName.ContainsKey(n)).ToList();
        if (missing.Count > 0 || unknown.Count > 0)
            throw new ArgumentException(
                $"The saved stopping state does not match this session's rules: missing {string.Join(", ", missing.DefaultIfEmpty("none"))}; unknown {string.Join(", ", unknown.DefaultIfEmpty("none"))}.",
                nameof(json));
        // Rules compare the steps they are evaluated at: a state from step 500 in a session at step 0 would make every
        // later evaluation throw. Refuse it now, and say how to resume.
        long saved = states.Max(s => s.LastStep ?? -1);
        if (saved > _steps())
            throw new ArgumentException(
                $"The saved stopping state was last evaluated at step {saved}, and this session is at step {_steps()}: rules are evaluated in step order. " +
                "Save and restore the whole session with ProbeSession.SaveState and RestoreState, which carry the step counter with the rules.", nameof(json));
        Apply(states);
    }

    /// <summary>
    /// Gives each rule its state, all or nothing: if one refuses its state, the ones restored before it go back to what
    /// they were. A restored stop rule that had fired stops the run again.
    /// </summary>
    private void Apply(IReadOnlyList<RuleState> states, bool keep = true)
    {
        var byName = _rules.ToDictionary(r => r.Name);
        var before = _rules.Select(r => r.SaveState()).ToArray();
        try
        {
            foreach (var state in states) byName[state.Name].RestoreState(state);
        }
        catch
        {
            for (int i = 0; i < before.Length; i++) _rules[i].RestoreState(before[i]);
            throw;
        }

        if (!keep)
        {
            for (int i = 0; i < before.Length; i++) _rules[i].RestoreState(before[i]);
            return;
        }

        foreach (var rule in _rules)
            if (rule.Action == RuleAction.Stop && rule.Stopped && _fired.Add(rule)) SetStop();
    }

    public string StateKey => "stopping";

    public void Save(SessionStateWriter state) => state.Set("rules", Save());

    public Action Prepare(SessionStateReader state)
    {
        string json = state.Get<string>("rules");
        // Check the rules match, and that each accepts its state (applied and taken back), before anything changes: the
        // commit then cannot fail after another part of the session has been restored. The scheduler's part carries the
        // step counter, so the rules' steps need no check against the session's here.
        var states = StoppingState.FromJson(json);
        var names = _rules.Select(r => r.Name).ToHashSet();
        if (!names.SetEquals(states.Select(s => s.Name)))
            throw new InvalidDataException(
                $"The saved stopping rules ({string.Join(", ", states.Select(s => s.Name))}) are not this session's ({string.Join(", ", names)}).");
        try
        {
            Apply(states, keep: false);
        }
        catch (ArgumentException ex)
        {
            throw new InvalidDataException($"The saved stopping state does not fit this session's rules: {ex.Message}", ex);
        }

        return () => Apply(states);
    }

    public void Dispose()
    {
        foreach (var weights in _best.Values) weights.Dispose();
        _best.Clear();
        _stopSource.Dispose();
    }
}

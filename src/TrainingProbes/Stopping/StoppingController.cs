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
internal sealed class StoppingController : IDisposable, TrainingProbes.Session.IStatefulPart
{
    private readonly nn.Module _model;
    private readonly ProbeOptions _options;
    private readonly ILogger _logger;
    private readonly string _runId;
    private readonly CancellationTokenSource _stopSource = new();
    private readonly HashSet<StoppingRule> _fired = [];
    private readonly Dictionary<StoppingRule, WeightSnapshot> _best = [];
    private volatile bool _shouldStop;

    public StoppingController(nn.Module model, ProbeOptions options, ILogger logger, string runId)
    {
        _model = model;
        _options = options;
        _logger = logger;
        _runId = runId;
    }

    /// <summary>The rules.</summary>
    public IReadOnlyList<StoppingRule> Rules => _options.Stopping;

    /// <summary>True once a stop rule has fired.</summary>
    public bool ShouldStop => _shouldStop;

    /// <summary>Cancelled when <see cref="ShouldStop"/> becomes true.</summary>
    public CancellationToken StopToken => _stopSource.Token;

    /// <summary>Raised when a rule fires (stop or warn), on the training thread.</summary>
    public event Action<StoppingRule, RuleDecision, bool>? Fired;

    /// <summary>The best weights a rule has kept, or null.</summary>
    public WeightSnapshot? BestWeights(StoppingRule rule) => _best.GetValueOrDefault(rule);

    /// <summary>Evaluates every rule on a published snapshot.</summary>
    public void OnSnapshot(ProbeSnapshot snapshot)
    {
        foreach (var rule in _options.Stopping)
            if (rule.TryEvaluate(snapshot, out var decision)) Act(rule, decision);
    }

    /// <summary>Evaluates the rules that monitor a value the trainer reported (a validation loss, say).</summary>
    /// <summary>Whether a rule copies the weights when it improves (a checkpoint action, or best weights to restore).</summary>
    public bool KeepsWeights => _options.Stopping.Any(rule => rule.Action == RuleAction.Checkpoint || rule is EarlyStopping { RestoreBestWeights: true });

    public void OnReported(string name, Geometry geometry, double value, long step)
    {
        foreach (var rule in _options.Stopping)
            if (rule.Monitor == name && rule.Geometry == geometry)
                Act(rule, rule.Evaluate(value, step));
    }

    /// <summary>What a rule's decision means for the run: keep best weights, stop, warn; once per firing.</summary>
    private void Act(StoppingRule rule, RuleDecision decision)
    {
        bool keepsWeights = rule.Action == RuleAction.Checkpoint || rule is EarlyStopping { RestoreBestWeights: true };
        if (decision.Improved && keepsWeights)
        {
            if (_best.TryGetValue(rule, out var kept)) kept.CaptureInto(_model, decision.Step, decision.Value);
            else _best[rule] = WeightSnapshot.Capture(_model, decision.Step, decision.Value);
            if (rule.Action == RuleAction.Checkpoint && _options.CheckpointPath is { } path)
                CheckpointFile.Save(_best[rule], path, path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? CheckpointFormat.Safetensors : CheckpointFormat.PyTorch);
        }

        if (!decision.Fired || rule.Action == RuleAction.Checkpoint) return;
        if (rule.Action == RuleAction.Stop && !_fired.Add(rule)) return;   // a Stop rule stays fired: act once

        bool restored = false;
        if (rule.Action == RuleAction.Stop && rule is EarlyStopping { RestoreBestWeights: true } && _best.TryGetValue(rule, out var best))
        {
            best.RestoreTo(_model);
            restored = true;
        }

        string what = rule.Action == RuleAction.Stop ? "stop" : "warning";
        _logger.LogWarning("TrainingProbes run {RunId}: {What} at step {Step}, rule '{Rule}': {Reason}{Restored}",
            _runId, what, decision.Step, rule.Name, decision.Reason, restored ? $" Restored the best weights (step {_best[rule].Step})." : "");
        _options.Output?.WriteLine($"[probes] {what} at step {decision.Step}: {decision.Reason} (rule: {rule.Name})" +
            (restored ? $"; restored the best weights of step {_best[rule].Step}" : ""));
        if (rule.Action == RuleAction.Stop) SetStop();
        Fired?.Invoke(rule, decision, restored);
    }

    private void SetStop()
    {
        _shouldStop = true;
        _stopSource.Cancel();
    }

    /// <summary>The rules' state as JSON.</summary>
    public string Save() => StoppingState.ToJson(_options.Stopping.Select(r => r.SaveState()).ToArray());

    /// <summary>Restores <see cref="Save()"/>'s state, matched by rule name. A restored stop rule that had fired stops again.</summary>
    public void Restore(string json)
    {
        var states = StoppingState.FromJson(json);
        var byName = _options.Stopping.ToDictionary(r => r.Name);
        var missing = _options.Stopping.Select(r => r.Name).Except(states.Select(s => s.Name)).ToList();
        var unknown = states.Select(s => s.Name).Where(n => !byName.ContainsKey(n)).ToList();
        if (missing.Count > 0 || unknown.Count > 0)
            throw new ArgumentException(
                $"The saved stopping state does not match this session's rules: missing {string.Join(", ", missing.DefaultIfEmpty("none"))}; unknown {string.Join(", ", unknown.DefaultIfEmpty("none"))}.",
                nameof(json));
        foreach (var state in states) byName[state.Name].RestoreState(state);
        foreach (var rule in _options.Stopping)
            if (rule.Action == RuleAction.Stop && rule.Stopped && _fired.Add(rule)) SetStop();
    }

    public string StateKey => "stopping";

    public void Save(TrainingProbes.Session.SessionStateWriter state) => state.Set("rules", Save());

    public Action Prepare(TrainingProbes.Session.SessionStateReader state)
    {
        string json = state.Get<string>("rules");
        // Check the rules match before anything changes; the restore itself only assigns parsed values.
        var states = StoppingState.FromJson(json);
        var names = _options.Stopping.Select(r => r.Name).ToHashSet();
        if (!names.SetEquals(states.Select(s => s.Name)))
            throw new InvalidDataException(
                $"The saved stopping rules ({string.Join(", ", states.Select(s => s.Name))}) are not this session's ({string.Join(", ", names)}).");
        return () => Restore(json);
    }

    public void Dispose()
    {
        foreach (var weights in _best.Values) weights.Dispose();
        _best.Clear();
        _stopSource.Dispose();
    }
}

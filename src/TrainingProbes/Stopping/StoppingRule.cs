using System.Globalization;
using System.Text.RegularExpressions;

namespace TrainingProbes.Stopping;

/// <summary>
/// A rule over one monitored value (an indicator the probes publish, or a value the trainer reports such as
/// <c>val.loss</c>) that decides, evaluation by evaluation, whether training should stop, be warned about, or have its
/// weights kept. Write one in code (<see cref="EarlyStopping"/>, <see cref="ThresholdRule"/>) or as text
/// (<see cref="Parse"/>).
/// </summary>
/// <remarks>
/// <para>
/// <see cref="Evaluate"/> is called once per evaluation of the monitored value, in step order. The rule keeps a
/// small state (best value, counters) that <see cref="SaveState"/> and <see cref="RestoreState"/> carry across a
/// checkpoint, so that a resumed run decides exactly as an uninterrupted one.
/// </para>
/// <para>
/// A rule whose <see cref="Action"/> is <see cref="RuleAction.Stop"/> is latched: once it has fired, every later
/// <see cref="Evaluate"/> returns <see cref="RuleDecision.Fired"/> with the reason it first fired for (and the value
/// and step of that call), and changes no state but <see cref="Evaluations"/> and <see cref="LastStep"/>. Rules of
/// the other actions are not latched; each type documents when it fires again.
/// </para>
/// <para>A rule is not thread-safe: evaluate it from one thread at a time.</para>
/// </remarks>
public abstract partial class StoppingRule
{
    private string? _monitor;
    private Geometry _geometry;
    private RuleAction _action;
    private string? _name;

    private protected StoppingRule()
    {
    }

    /// <summary>
    /// The monitored value's name in dotted snake_case, for example <c>regret.relative</c> (see
    /// <see cref="Indicators"/>) or a value the trainer reports, such as <c>val.loss</c>. Its geometry is set apart,
    /// in <see cref="Geometry"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The name is not dotted snake_case.</exception>
    public required string Monitor
    {
        get => _monitor ?? throw new InvalidOperationException("The rule has no Monitor; set it, for example Monitor = \"val.loss\".");
        init
        {
            _monitor = ValidateMonitor(value);
            OnMonitorSet();
        }
    }

    /// <summary>
    /// The geometry of the monitored value: <see cref="Geometry.Euclidean"/>, <see cref="Geometry.Fisher"/> or
    /// <see cref="Geometry.Adaptive"/> for values computed per geometry, <see cref="Geometry.None"/> (the default)
    /// for geometry-free ones such as a loss.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not None or a single geometry.</exception>
    public Geometry Geometry
    {
        get => _geometry;
        init => _geometry = value is Geometry.None or Geometry.Euclidean or Geometry.Fisher or Geometry.Adaptive
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Geometry), value,
                "Geometry of a rule is one geometry (Euclidean, Fisher or Adaptive) or None for a geometry-free value; write one rule per geometry.");
    }

    /// <summary>What the session does when the rule fires or the value improves (default <see cref="RuleAction.Stop"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a defined action.</exception>
    public RuleAction Action
    {
        get => _action;
        init => _action = Enum.IsDefined(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Action), value, "Action must be Stop, Warn or Checkpoint.");
    }

    /// <summary>
    /// Names the rule in reports and saved states. Defaults to the rule's canonical text (what <see cref="ToString"/>
    /// returns), which <see cref="Parse"/> reads back into an equivalent rule.
    /// </summary>
    /// <exception cref="ArgumentException">Empty or white space.</exception>
    public string Name
    {
        get => _name ?? ToString();
        init => _name = !string.IsNullOrWhiteSpace(value)
            ? value
            : throw new ArgumentException("Name must not be empty or white space; leave it unset to use the rule's text.", nameof(Name));
    }

    /// <summary>
    /// Whether this is <see cref="ProbeOptions.DefaultStoppingRule"/>: each session then works on a fresh copy of it
    /// (options may be shared), and no warning says that its monitor, which only some trainers report, was never seen.
    /// </summary>
    internal bool IsDefault { get; init; }

    /// <summary>
    /// A copy of this rule, with its settings and its state as they are now, for one session: options (and the rules in
    /// them) may be shared by several sessions, and each must count and decide on its own.
    /// </summary>
    internal StoppingRule CopyForSession()
    {
        var copy = (StoppingRule)MemberwiseClone();
        copy.CopyOwnState();
        return copy;
    }

    /// <summary>Gives a fresh <see cref="CopyForSession"/> copy its own instances of any mutable state object.</summary>
    private protected virtual void CopyOwnState()
    {
    }

    /// <summary>Whether this <see cref="RuleAction.Stop"/> rule has fired (it stays fired).</summary>
    public bool Stopped { get; private protected set; }

    /// <summary>Number of evaluations the rule has counted (evaluations during a warm-up are not counted).</summary>
    public long Evaluations { get; private protected set; }

    /// <summary>The step of the last counted evaluation, or null before the first.</summary>
    public long? LastStep { get; private protected set; }

    /// <summary>The monitored name with its geometry, as reasons show it: <c>regret.relative[fisher]</c>.</summary>
    public string MonitorLabel => Geometry == Geometry.None ? Monitor : $"{Monitor}[{Geometry.ToName()}]";

    /// <summary>
    /// Evaluates the rule on one value of the monitored quantity. Call it once per evaluation, in step order.
    /// </summary>
    /// <param name="value">The monitored value; NaN and infinities are allowed (each rule says how it treats them).</param>
    /// <param name="step">The training step the value belongs to; not before the previous call's step.</param>
    /// <returns>Whether the rule fired, whether the value is a new best, and why.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The step is before the previous evaluation's step.</exception>
    public abstract RuleDecision Evaluate(double value, long step);

    /// <summary>
    /// Evaluates the rule on a window's snapshot, when the snapshot has the monitored value (in the rule's geometry).
    /// </summary>
    /// <param name="snapshot">The window's values; its <see cref="ProbeSnapshot.Step"/> is the step evaluated.</param>
    /// <param name="decision">The decision, when the snapshot has the value.</param>
    /// <returns>Whether the snapshot had the value (when not, the rule is left untouched).</returns>
    public bool TryEvaluate(ProbeSnapshot snapshot, out RuleDecision decision)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        if (snapshot.TryGetValue(Monitor, Geometry, out double value))
        {
            decision = Evaluate(value, snapshot.Step);
            return true;
        }
        decision = default;
        return false;
    }

    /// <summary>Captures what the rule needs to resume: save it with the model's checkpoint.</summary>
    public abstract RuleState SaveState();

    /// <summary>Resumes from a state saved by <see cref="SaveState"/> of a rule of the same kind and monitor.</summary>
    /// <param name="state">The saved state.</param>
    /// <exception cref="ArgumentException">The state belongs to another kind of rule, another monitor or geometry,
    /// or holds values no rule could have saved.</exception>
    public abstract void RestoreState(RuleState state);

    /// <summary>
    /// The rule's canonical text, which <see cref="Parse"/> reads back into an equivalent rule, for example
    /// <c>regret.relative[fisher] &gt; 0.8 for 5 -&gt; warn</c> or
    /// <c>early_stopping(monitor=val.loss, mode=min, patience=5, min_delta=0.001)</c>.
    /// </summary>
    public abstract override string ToString();

    /// <summary>
    /// Reads a rule written as text. Two forms:
    /// <list type="bullet">
    /// <item><c>metric comparator number [for N] [-&gt; action]</c> or <c>metric is [not] finite [for N] [-&gt; action]</c>
    /// give a <see cref="ThresholdRule"/>; metric is dotted snake_case with an optional geometry suffix
    /// (<c>[euclidean]</c>, <c>[fisher]</c>, <c>[adaptive]</c>), comparator one of <c>&gt; &gt;= &lt; &lt;=</c>, number a
    /// C# double literal (sign, exponent, digit separators, <c>d</c> suffix), N a positive integer (default 1), action
    /// <c>stop</c>, <c>warn</c> or <c>checkpoint</c> (default stop).</item>
    /// <item><c>early_stopping(monitor=val.loss, mode=min, patience=5, min_delta=0.001, baseline=0.5,
    /// stopping_threshold=0.01, divergence_threshold=10, check_finite=true, warmup_steps=1000,
    /// restore_best_weights=true) [-&gt; action]</c> gives an <see cref="EarlyStopping"/>; only <c>monitor</c> is
    /// required, the parameters come in any order, and <c>none</c> leaves an optional threshold unset.</item>
    /// </list>
    /// Keywords, parameter names and values are case-insensitive; metric names are lowercase.
    /// </summary>
    /// <param name="text">The rule.</param>
    /// <returns>The rule, with its <see cref="Name"/> the canonical text.</returns>
    /// <exception cref="RuleParseException">The text is not a rule; the exception gives the column and what was expected there.</exception>
    public static StoppingRule Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return new RuleParser(text).ParseRule();
    }

    /// <summary>Called after <see cref="Monitor"/> is set, to check settings that depend on it.</summary>
    private protected virtual void OnMonitorSet()
    {
    }

    /// <summary>The kind of the rule in saved states: <c>early_stopping</c> or <c>threshold</c>.</summary>
    private protected abstract string Kind { get; }

    /// <summary>Whether <see cref="Monitor"/> has been set (init order checks).</summary>
    private protected bool HasMonitor => _monitor is not null;

    [GeneratedRegex(@"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*$", RegexOptions.CultureInvariant)]
    private static partial Regex SnakeCase();

    internal static bool IsSnakeCase(string name) => SnakeCase().IsMatch(name);

    private static string ValidateMonitor(string value)
    {
        if (string.IsNullOrWhiteSpace(value))
            throw new ArgumentException("Monitor must name the monitored value, for example \"val.loss\" or \"regret.relative\".", nameof(Monitor));
        int bracket = value.IndexOf('[', StringComparison.Ordinal);
        if (bracket > 0 && value.EndsWith(']') && IsSnakeCase(value[..bracket]))
            throw new ArgumentException(
                $"Monitor '{value}' carries a geometry suffix; set Monitor = \"{value[..bracket]}\" and Geometry = Geometry.{Capitalize(value[(bracket + 1)..^1])} instead (the suffix is for rules written as text).",
                nameof(Monitor));
        return IsSnakeCase(value)
            ? value
            : throw new ArgumentException(
                $"Monitor '{value}' is not a dotted snake_case name: use lowercase letters, digits and underscores, with dots between parts, for example \"val.loss\".",
                nameof(Monitor));

        static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..];
    }

    /// <summary>Checks the step order and returns the latched decision of a fired stop rule.</summary>
    private protected bool BeginEvaluation(double value, long step, out RuleDecision latched)
    {
        if (LastStep is long last && step < last)
            throw new ArgumentOutOfRangeException(nameof(step), step,
                $"Rule '{Name}' was evaluated at step {last} and now at step {step}: call Evaluate in step order. To resume from a checkpoint, RestoreState the state saved with it.");
        if (Stopped)
        {
            Evaluations++;
            LastStep = step;
            latched = new RuleDecision(true, false, value, step, StopReason ?? $"{MonitorLabel} stopped training.");
            return true;
        }
        latched = default;
        return false;
    }

    /// <summary>The reason the stop rule fired for (null until it fires).</summary>
    private protected string? StopReason { get; set; }

    /// <summary>The step the stop rule fired at (null until it fires).</summary>
    private protected long? StoppedStep { get; set; }

    /// <summary>Counts an evaluation and, for a stop rule that fired, latches it.</summary>
    private protected RuleDecision Finish(bool fired, bool improved, double value, long step, string reason)
    {
        Evaluations++;
        LastStep = step;
        if (fired && Action == RuleAction.Stop)
        {
            Stopped = true;
            StopReason = reason;
            StoppedStep = step;
        }
        return new RuleDecision(fired, improved, value, step, reason);
    }

    /// <summary>A state with the fields every rule has.</summary>
    private protected RuleState BaseState() => new()
    {
        Kind = Kind,
        Name = Name,
        Monitor = Monitor,
        Geometry = Geometry,
        Evaluations = Evaluations,
        LastStep = LastStep,
        Stopped = Stopped,
        StoppedStep = StoppedStep,
        StopReason = StopReason,
    };

    /// <summary>Checks that a state belongs to this rule and holds values a rule could have saved.</summary>
    private protected void ValidateBaseState(RuleState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.Kind != Kind)
            throw new ArgumentException(
                $"The state of rule '{state.Name}' is a '{state.Kind}' state; rule '{Name}' is '{Kind}'. Restore each rule from the state it saved.", nameof(state));
        if (state.Monitor != Monitor || state.Geometry != Geometry)
            throw new ArgumentException(
                $"The state of rule '{state.Name}' monitors {Label(state.Monitor, state.Geometry)}; rule '{Name}' monitors {MonitorLabel}. Restore each rule from the state it saved.", nameof(state));
        if (state.Evaluations < 0 || state.Wait < 0 || state.Consecutive < 0)
            throw new ArgumentException(
                $"The state of rule '{state.Name}' has a negative counter (evaluations {state.Evaluations}, wait {state.Wait}, consecutive {state.Consecutive}); it was not saved by a rule.", nameof(state));
        if (state.BestValue is double best && !double.IsFinite(best))
            throw new ArgumentException($"The state of rule '{state.Name}' has a best value {best}; a best value is always finite.", nameof(state));
        if (state.Stopped && state.StopReason is null)
            throw new ArgumentException($"The state of rule '{state.Name}' is stopped but has no stop reason; it was not saved by a rule.", nameof(state));
        if ((state.BestValue is null) != (state.BestStep is null))
            throw new ArgumentException($"The state of rule '{state.Name}' has a best value without its step, or a step without a value.", nameof(state));
    }

    /// <summary>Restores the fields every rule has from a state checked by <see cref="ValidateBaseState"/>.</summary>
    private protected void ApplyBaseState(RuleState state)
    {
        Evaluations = state.Evaluations;
        LastStep = state.LastStep;
        Stopped = state.Stopped;
        StoppedStep = state.StoppedStep;
        StopReason = state.StopReason;
    }

    internal static string Label(string monitor, Geometry geometry) =>
        geometry == Geometry.None ? monitor : $"{monitor}[{geometry.ToName()}]";

    /// <summary>A number in a reason: six significant digits.</summary>
    internal static string Show(double value) => value.ToString("G6", CultureInfo.InvariantCulture);

    /// <summary>Two numbers in a reason, with as many digits as it takes to tell them apart.</summary>
    internal static (string, string) ShowApart(double a, double b)
    {
        string sa = Show(a), sb = Show(b);
        return sa == sb && a != b
            ? (a.ToString("R", CultureInfo.InvariantCulture), b.ToString("R", CultureInfo.InvariantCulture))
            : (sa, sb);
    }

    /// <summary>A number in canonical text: round-trippable, readable back by <see cref="Parse"/>.</summary>
    internal static string Literal(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    internal static string Plural(long count, string noun) => count == 1 ? $"1 {noun}" : $"{count} {noun}s";

    internal static string ActionSuffix(RuleAction action) => action switch
    {
        RuleAction.Stop => "",
        RuleAction.Warn => " -> warn",
        _ => " -> checkpoint",
    };
}

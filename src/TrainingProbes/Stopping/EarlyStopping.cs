using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;

namespace TrainingProbes.Stopping;

/// <summary>
/// Stops training when a monitored value has stopped improving, with the options users know from PyTorch Lightning's
/// and Keras' <c>EarlyStopping</c> callbacks.
/// </summary>
/// <remarks>
/// <para>Each call of <see cref="StoppingRule.Evaluate"/> goes through these steps, in this order (Lightning's order):</para>
/// <list type="number">
/// <item><b>Warm-up.</b> A value at a step before <see cref="WarmupSteps"/> is ignored entirely, NaN included: no
/// state changes, the decision neither fires nor improves (Keras' <c>start_from_epoch</c>, counted in steps).</item>
/// <item><b>Non-finite.</b> With <see cref="CheckFinite"/> (the default), NaN or an infinity fires at once, whatever
/// the patience (Lightning). Without it, the value goes on to the next steps, where it is never an improvement.</item>
/// <item><b>Stopping threshold.</b> Fires when the value is strictly better than <see cref="StoppingThreshold"/>
/// (Min: <c>value &lt; threshold</c>, Max: <c>value &gt; threshold</c>; equality does not fire), as Lightning compares.
/// Unlike Lightning, which stops without recording it, such a value is also checked for improvement, so that
/// the weights that reached the target are the best ones kept.</item>
/// <item><b>Divergence threshold.</b> Fires when the value is strictly worse than <see cref="DivergenceThreshold"/>
/// (Min: <c>value &gt; threshold</c>, Max: <c>value &lt; threshold</c>; equality does not fire). Never an improvement.
/// Both thresholds compare infinities as numbers (as Lightning does); NaN crosses neither.</item>
/// <item><b>Improvement.</b> Min: <c>value &lt; best - MinDelta</c>; Max: <c>value &gt; best + MinDelta</c>. A tie is
/// not an improvement, nor is a change of exactly <see cref="MinDelta"/> (Lightning and Keras agree). The first
/// counted evaluation sets the best value (it improves on nothing), unless <see cref="Baseline"/> is set: then the
/// best starts at the baseline and a value must beat it by more than MinDelta to improve (the baseline of
/// tf.keras 2; Lightning has none; Keras 3 instead tracks the best value below the baseline and only holds back the
/// reset of the wait). An improvement sets <see cref="BestValue"/>, <see cref="BestStep"/>, resets
/// <see cref="Wait"/> to 0 and returns <see cref="RuleDecision.Improved"/>.</item>
/// <item><b>Patience.</b> Otherwise <see cref="Wait"/> grows by one, and the rule fires when
/// <c>Wait &gt;= Patience</c>: patience 3 fires at the third evaluation in a row without improvement, patience 0 at
/// the first evaluation that does not improve. Patience counts evaluations of the monitored value, not steps. A
/// baseline that is never beaten therefore fires after Patience evaluations.</item>
/// </list>
/// <para>
/// A <see cref="RuleAction.Stop"/> rule is latched once it fires (see <see cref="StoppingRule"/>). A
/// <see cref="RuleAction.Warn"/> or <see cref="RuleAction.Checkpoint"/> rule is not: the non-finite and threshold
/// checks fire at every evaluation where they hold, and after firing for patience <see cref="Wait"/> restarts at 0,
/// so that the rule fires again after another Patience evaluations without improvement.
/// </para>
/// <para>
/// <see cref="RestoreBestWeights"/> asks the session to keep the weights of each evaluation that improved and to
/// restore the last of them when the rule stops (Keras). With a baseline that was never beaten there are none, and
/// the session keeps the current weights.
/// </para>
/// <para>
/// <see cref="Mode"/> and <see cref="Monitor"/> are checked together: with <see cref="StoppingMode.Auto"/> (the
/// default) the direction is looked up when <c>Monitor</c> is set, and a name of unknown direction throws there. An
/// object initializer sets properties in the order written, so write <c>Mode</c> before <c>Monitor</c>
/// (<c>new EarlyStopping { Mode = StoppingMode.Max, Monitor = "my.score" }</c>), or use the
/// <see cref="EarlyStopping(string, StoppingMode)"/> constructor.
/// </para>
/// </remarks>
public sealed class EarlyStopping : StoppingRule
{
    private StoppingMode _mode;
    private double _minDelta;
    private int _patience = DefaultPatience;
    private double? _baseline;
    private double? _stoppingThreshold;
    private double? _divergenceThreshold;
    private long _warmupSteps;

    internal const int DefaultPatience = 3;

    /// <summary>Creates a rule; set at least <see cref="StoppingRule.Monitor"/>.</summary>
    public EarlyStopping()
    {
    }

    /// <summary>Creates a rule on a monitored name and direction, checked together.</summary>
    /// <param name="monitor">The monitored name, see <see cref="StoppingRule.Monitor"/>.</param>
    /// <param name="mode">The direction; <see cref="StoppingMode.Auto"/> looks it up from the name.</param>
    /// <exception cref="ArgumentException">The name is not dotted snake_case, or Auto does not know its direction.</exception>
    [SetsRequiredMembers]
    public EarlyStopping(string monitor, StoppingMode mode = StoppingMode.Auto)
    {
        Mode = mode;
        Monitor = monitor;
    }

    /// <summary>
    /// Which direction is better (default <see cref="StoppingMode.Auto"/>: looked up from the monitored name with
    /// <see cref="TryInferMode"/>; an unknown name throws when <see cref="StoppingRule.Monitor"/> is set).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a defined mode.</exception>
    /// <exception cref="ArgumentException">Auto, with a monitored name already set whose direction is not known.</exception>
    public StoppingMode Mode
    {
        get => _mode;
        init
        {
            if (!Enum.IsDefined(value))
                throw new ArgumentOutOfRangeException(nameof(Mode), value, "Mode must be Auto, Min or Max.");
            _mode = value;
            if (HasMonitor)
                CheckDirection();
        }
    }

    /// <summary>The direction in effect: <see cref="Mode"/>, or for Auto the one looked up from the monitored name.</summary>
    public StoppingMode EffectiveMode =>
        _mode != StoppingMode.Auto ? _mode
        : TryInferMode(Monitor, out var mode) ? mode
        : throw new InvalidOperationException($"The direction of '{Monitor}' is not known; set Mode.");

    /// <summary>
    /// The smallest change that counts as an improvement, at least 0 (default 0): Min improves when
    /// <c>value &lt; best - MinDelta</c>, Max when <c>value &gt; best + MinDelta</c>; a change of exactly MinDelta does not.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Negative or not finite.</exception>
    public double MinDelta
    {
        get => _minDelta;
        init => _minDelta = value >= 0 && double.IsFinite(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(MinDelta), value,
                "MinDelta is the smallest change that counts as an improvement: a finite number >= 0, for example 0.001 (0 counts any strict improvement).");
    }

    /// <summary>
    /// Evaluations in a row without improvement after which the rule fires, at least 0 (default 3, as Lightning;
    /// Keras defaults to 0). Counted in evaluations of the monitored value, not in steps.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Negative.</exception>
    public int Patience
    {
        get => _patience;
        init => _patience = value >= 0
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Patience), value,
                "Patience is a number of evaluations without improvement: 0 or more, for example 3 (0 fires at the first evaluation that does not improve).");
    }

    /// <summary>
    /// A value the monitored quantity must beat by more than <see cref="MinDelta"/> before anything counts as an
    /// improvement (Keras); null (the default) lets the first evaluation set the best value.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not finite.</exception>
    public double? Baseline
    {
        get => _baseline;
        init => _baseline = Finite(value, nameof(Baseline), "Baseline must be a finite number, for example 0.5, or null for none.");
    }

    /// <summary>
    /// Fires as soon as the value is strictly better than this (Lightning's <c>stopping_threshold</c>: the target is
    /// reached); null (the default) for none.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not finite.</exception>
    public double? StoppingThreshold
    {
        get => _stoppingThreshold;
        init => _stoppingThreshold = Finite(value, nameof(StoppingThreshold),
            "StoppingThreshold must be a finite number, for example 0.01 for a loss, or null for none.");
    }

    /// <summary>
    /// Fires as soon as the value is strictly worse than this (Lightning's <c>divergence_threshold</c>: the run
    /// diverges); null (the default) for none.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Not finite.</exception>
    public double? DivergenceThreshold
    {
        get => _divergenceThreshold;
        init => _divergenceThreshold = Finite(value, nameof(DivergenceThreshold),
            "DivergenceThreshold must be a finite number, for example 10 for a loss, or null for none.");
    }

    /// <summary>Whether a NaN or infinite value fires at once (default true, Lightning); when false it counts as no improvement.</summary>
    public bool CheckFinite { get; init; } = true;

    /// <summary>
    /// Evaluations at steps before this one are ignored entirely (default 0: none), like Keras' <c>start_from_epoch</c>
    /// but in steps; at least 0.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Negative.</exception>
    public long WarmupSteps
    {
        get => _warmupSteps;
        init => _warmupSteps = value >= 0
            ? value
            : throw new ArgumentOutOfRangeException(nameof(WarmupSteps), value,
                "WarmupSteps is the first step whose evaluations count: 0 or more, for example 1000 (0 counts every evaluation).");
    }

    /// <summary>
    /// Whether the session keeps the weights of the best evaluation and restores them when the rule stops (Keras'
    /// <c>restore_best_weights</c>; default false). The rule only reports improvements; the session acts on this.
    /// </summary>
    public bool RestoreBestWeights { get; init; }

    /// <summary>The best counted value, or null before any improvement (a baseline is not a best value).</summary>
    public double? BestValue { get; private set; }

    /// <summary>The step of <see cref="BestValue"/>, or null before any improvement.</summary>
    public long? BestStep { get; private set; }

    /// <summary>Counted evaluations since the last improvement (or since the first, before any).</summary>
    public int Wait { get; private set; }

    /// <summary>
    /// Looks up whether lower or higher is better for a monitored name. An indicator of the
    /// <see cref="IndicatorCatalogue"/> (also with a <c>step.</c> or <c>fixed_point.</c> prefix, and smoothed) has the
    /// direction its <see cref="IndicatorDefinition.Better"/> says. Any other name: Min for a part <c>loss</c>,
    /// <c>error</c> or <c>perplexity</c>, or one ending in <c>_loss</c> or <c>_error</c>; Max for a part starting with
    /// <c>acc</c> or ending in <c>_acc</c> or <c>_accuracy</c>, or a part <c>f1</c>, <c>auc</c>, <c>precision</c>,
    /// <c>recall</c>. A name that matches both lists, or neither, and a standard error (<c>.stderr</c>), is unknown.
    /// </summary>
    /// <param name="monitor">The monitored name.</param>
    /// <param name="mode">Min or Max when known.</param>
    /// <returns>Whether the direction is known.</returns>
    public static bool TryInferMode(string monitor, out StoppingMode mode)
    {
        ArgumentNullException.ThrowIfNull(monitor);
        mode = StoppingMode.Auto;
        // The catalogue knows its indicators' direction (with a family prefix, and smoothed); a standard error has none.
        if (!monitor.EndsWith(Indicators.StandardErrorSuffix, StringComparison.Ordinal)
            && IndicatorCatalogue.TryFind(monitor, out var definition) && definition.Better != StoppingMode.Auto)
        {
            mode = definition.Better;
            return true;
        }

        string name = monitor;
        string[] parts = name.Split('.');
        bool lower = parts.Any(p => p is "loss" or "error" or "perplexity" || p.EndsWith("_loss", StringComparison.Ordinal) || p.EndsWith("_error", StringComparison.Ordinal));
        bool higher = parts.Any(p => p.StartsWith("acc", StringComparison.Ordinal) || p.EndsWith("_acc", StringComparison.Ordinal)
            || p.EndsWith("_accuracy", StringComparison.Ordinal) || p is "f1" or "auc" or "precision" or "recall");
        if (lower == higher)
            return false;
        mode = lower ? StoppingMode.Min : StoppingMode.Max;
        return true;
    }

    /// <inheritdoc />
    public override RuleDecision Evaluate(double value, long step)
    {
        if (BeginEvaluation(value, step, out var latched))
            return latched;
        string label = MonitorLabel;
        if (step < WarmupSteps)
            return new RuleDecision(false, false, value, step,
                $"{label} = {Show(value)} at step {step} is ignored: the warm-up lasts until step {WarmupSteps}.");

        bool min = EffectiveMode == StoppingMode.Min;
        if (!double.IsFinite(value) && CheckFinite)
            return Finish(true, false, value, step, $"{label} = {Show(value)} is not finite ({BestText()}).");

        if (StoppingThreshold is double target && (min ? value < target : value > target))
        {
            bool improved = TryImprove(value, step);
            var (v, t) = ShowApart(value, target);
            return Finish(true, improved, value, step,
                $"{label} = {v} {(min ? "<" : ">")} stopping_threshold {t}: the target is reached.");
        }

        if (DivergenceThreshold is double limit && (min ? value > limit : value < limit))
        {
            var (v, l) = ShowApart(value, limit);
            return Finish(true, false, value, step,
                $"{label} = {v} {(min ? ">" : "<")} divergence_threshold {l}: the run diverges ({BestText()}).");
        }

        double? previous = BestValue;
        long? previousStep = BestStep;
        if (TryImprove(value, step))
        {
            string by = MinDelta > 0 ? $" by more than min_delta {Show(MinDelta)}" : "";
            string how = previous is double p ? $"{label} = {Show(value)} improved on its best {Show(p)} (step {previousStep}){by}."
                : Baseline is double b ? $"{label} = {Show(value)} beat its baseline {Show(b)}{by}."
                : $"{label} = {Show(value)} sets the first best value.";
            return Finish(false, true, value, step, how);
        }

        Wait++;
        bool fired = Wait >= Patience;
        var reason = new StringBuilder(label);
        if (!double.IsFinite(value))
            reason.Append(" = ").Append(Show(value)).Append(" is not finite, and");
        reason.Append(BestValue is double best ? $" did not improve on its best {Show(best)} (step {BestStep})"
            : Baseline is double baseline ? $" did not beat its baseline {Show(baseline)}"
            : " has had no finite value");
        if (MinDelta > 0 && (BestValue is not null || Baseline is not null))
            reason.Append(CultureInfo.InvariantCulture, $" by more than min_delta {Show(MinDelta)}");
        reason.Append(" for ").Append(Plural(Wait, "evaluation"));
        reason.Append(fired ? "." : string.Create(CultureInfo.InvariantCulture, $" (patience {Patience})."));
        var decision = Finish(fired, false, value, step, reason.ToString());
        if (fired && Action != RuleAction.Stop)
            Wait = 0;
        return decision;
    }

    /// <inheritdoc />
    public override RuleState SaveState() => BaseState() with
    {
        BestValue = BestValue,
        BestStep = BestStep,
        Wait = Wait,
    };

    /// <inheritdoc />
    public override void RestoreState(RuleState state)
    {
        ValidateBaseState(state);
        if (state.Consecutive != 0 || state.ConsecutiveSince is not null)
            throw new ArgumentException($"The state of rule '{state.Name}' has a consecutive count, which early stopping does not keep; it was not saved by this rule.", nameof(state));
        ApplyBaseState(state);
        BestValue = state.BestValue;
        BestStep = state.BestStep;
        Wait = state.Wait;
    }

    /// <inheritdoc />
    public override string ToString()
    {
        var text = new StringBuilder("early_stopping(monitor=").Append(MonitorLabel);
        text.Append(", mode=").Append(EffectiveMode == StoppingMode.Min ? "min" : "max");
        text.Append(", patience=").Append(Patience);
        if (MinDelta != 0) text.Append(", min_delta=").Append(Literal(MinDelta));
        if (Baseline is double baseline) text.Append(", baseline=").Append(Literal(baseline));
        if (StoppingThreshold is double stopping) text.Append(", stopping_threshold=").Append(Literal(stopping));
        if (DivergenceThreshold is double divergence) text.Append(", divergence_threshold=").Append(Literal(divergence));
        if (!CheckFinite) text.Append(", check_finite=false");
        if (WarmupSteps != 0) text.Append(", warmup_steps=").Append(WarmupSteps);
        if (RestoreBestWeights) text.Append(", restore_best_weights=true");
        return text.Append(')').Append(ActionSuffix(Action)).ToString();
    }

    private protected override string Kind => "early_stopping";

    private protected override void OnMonitorSet() => CheckDirection();

    private void CheckDirection()
    {
        if (_mode == StoppingMode.Auto && !TryInferMode(Monitor, out _))
            throw new ArgumentException(
                $"Mode is Auto, but the direction of Monitor '{Monitor}' is not known (it is neither a loss, accuracy or error nor a known indicator). " +
                $"Set Mode = StoppingMode.Min or StoppingMode.Max, before Monitor in an object initializer, or use new EarlyStopping(\"{Monitor}\", StoppingMode.Min).",
                nameof(Monitor));
    }

    /// <summary>Whether a finite value improves on the best (or the baseline); records it when it does.</summary>
    private bool TryImprove(double value, long step)
    {
        if (!double.IsFinite(value))
            return false;
        double? reference = BestValue ?? Baseline;
        bool improves = reference is not double r
            || (EffectiveMode == StoppingMode.Min ? value < r - MinDelta : value > r + MinDelta);
        if (!improves)
            return false;
        BestValue = value;
        BestStep = step;
        Wait = 0;
        return true;
    }

    private string BestText() => BestValue is double best
        ? $"best so far {Show(best)} at step {BestStep}"
        : "no best value yet";

    private static double? Finite(double? value, string name, string message) =>
        value is null || double.IsFinite(value.Value) ? value : throw new ArgumentOutOfRangeException(name, value, message);
}

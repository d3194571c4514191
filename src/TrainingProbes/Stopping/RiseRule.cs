using System.Globalization;
using System.Text;

namespace TrainingProbes.Stopping;

/// <summary>
/// Fires when the monitored value has risen a fraction above its own minimum in this run, for <see cref="For"/>
/// consecutive evaluations, for example <c>gradient.noise_per_example.smoothed rises 25% above its minimum after 200</c>:
/// a rule relative to the run itself, for values whose level differs from model to model so that no absolute threshold
/// transfers.
/// </summary>
/// <remarks>
/// <para>
/// Evaluations before step <see cref="After"/> are not counted (early training moves every value). From then on the
/// rule keeps the smallest finite value seen, and an evaluation holds when the value exceeds
/// <c>(1 + Rise) * minimum</c>, the minimum taken before this value. A minimum that is not above 0 has no relative rise:
/// such evaluations do not hold. A NaN or infinite value neither holds nor moves the minimum.
/// </para>
/// <para>
/// Firing and latching are those of <see cref="ThresholdRule"/>. <see cref="RuleState.BestValue"/> and
/// <see cref="RuleState.BestStep"/> save the minimum and its step. Whether such a rule means anything for a given
/// indicator is a question for evidence: docs/EVIDENCE.md reports the one lead tested so far, which did not transfer.
/// </para>
/// </remarks>
public sealed class RiseRule : StoppingRule
{
    private double _rise = 0.25;
    private long _after;
    private int _for = 1;

    /// <summary>The rise above the minimum, as a fraction: 0.25 for 25% (default 0.25).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a finite number above 0.</exception>
    public double Rise
    {
        get => _rise;
        init => _rise = value > 0 && double.IsFinite(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Rise), value, "Rise is the fraction above the minimum, a finite number above 0: 0.25 for 25%.");
    }

    /// <summary>The first step whose evaluations count (default 0).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Negative.</exception>
    public long After
    {
        get => _after;
        init => _after = value >= 0
            ? value
            : throw new ArgumentOutOfRangeException(nameof(After), value, "After is a step, 0 or more: evaluations before it are not counted.");
    }

    /// <summary>Consecutive evaluations the rise must hold before the rule fires, at least 1 (default 1).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Less than 1.</exception>
    public int For
    {
        get => _for;
        init => _for = value >= 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(For), value, "For is the number of consecutive evaluations the rise must hold: at least 1, for example 3.");
    }

    /// <summary>The smallest finite value counted so far, or null before the first.</summary>
    public double? Minimum { get; private set; }

    /// <summary>The step of <see cref="Minimum"/>, or null.</summary>
    public long? MinimumStep { get; private set; }

    private ConsecutiveCount _held = new();

    private protected override void CopyOwnState() => _held = _held.Copy();

    /// <summary>Consecutive evaluations, up to the last one, where the rise held.</summary>
    public int Consecutive => _held.Count;

    /// <summary>The step of the first of the <see cref="Consecutive"/> evaluations, or null when the count is 0.</summary>
    public long? ConsecutiveSince => _held.Since;

    /// <inheritdoc />
    public override RuleDecision Evaluate(double value, long step)
    {
        if (step < After)
            return new RuleDecision(false, false, value, step, $"{MonitorLabel}: step {step} is before step {After}; not counted.");
        if (BeginEvaluation(value, step, out var latched))
            return latched;

        string label = MonitorLabel;
        bool holds = Minimum is > 0 and double minimum && double.IsFinite(value) && value > (1 + Rise) * minimum;
        string against = Minimum is double m ? $"its minimum {Show(m)} (step {MinimumStep})" : "no minimum yet";
        if (double.IsFinite(value) && (Minimum is not double low || value < low))
        {
            Minimum = value;
            MinimumStep = step;
        }

        if (!holds)
        {
            _held.Miss();
            return Finish(false, false, value, step, $"{label} = {Show(value)} is not {Percent(Rise)} above {against}.");
        }

        bool fired = _held.Hold(step, For, Action);
        return Finish(fired, false, value, step, $"{label} = {Show(value)} is more than {Percent(Rise)} above {against}" + _held.Describe(For, fired));
    }

    /// <inheritdoc />
    public override RuleState SaveState() => _held.Save(BaseState() with { BestValue = Minimum, BestStep = MinimumStep });

    /// <inheritdoc />
    public override void RestoreState(RuleState state)
    {
        ValidateBaseState(state);
        var held = _held.Prepare(state);
        if ((state.BestValue is null) != (state.BestStep is null))
            throw new ArgumentException($"The state of rule '{state.Name}' has a minimum without its step, or a step without a minimum.", nameof(state));
        held();
        Minimum = state.BestValue;
        MinimumStep = state.BestStep;
        ApplyBaseState(state);
    }

    /// <inheritdoc />
    public override string ToString()
    {
        var text = new StringBuilder(MonitorLabel).Append(" rises ").Append(Percent(Rise)).Append(" above its minimum");
        if (After != 0)
            text.Append(" after ").Append(After.ToString(CultureInfo.InvariantCulture));
        if (For != 1)
            text.Append(" for ").Append(For);
        return text.Append(ActionSuffix(Action)).ToString();
    }

    private protected override string Kind => "rise";

    private static string Percent(double fraction) => Literal(Math.Round(fraction * 100, 10)) + "%";
}

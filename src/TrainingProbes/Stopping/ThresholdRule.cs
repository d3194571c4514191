using System.Text;

namespace TrainingProbes.Stopping;

/// <summary>
/// Fires when a condition on the monitored value has held for <see cref="For"/> consecutive evaluations, for example
/// <c>regret.relative[fisher] &gt; 0.8 for 5</c> or <c>training.loss is not finite</c>.
/// </summary>
/// <remarks>
/// <para>
/// Each evaluation where the condition holds adds one to <see cref="Consecutive"/>; one where it does not resets it to 0.
/// The rule fires at the evaluation where <see cref="Consecutive"/> reaches <see cref="For"/>. A NaN or infinite value
/// satisfies no comparison (<c>&gt;</c>, <c>&gt;=</c>, <c>&lt;</c>, <c>&lt;=</c>), so it resets the count; it satisfies
/// <see cref="ThresholdComparison.IsNotFinite"/> and not <see cref="ThresholdComparison.IsFinite"/>.
/// </para>
/// <para>
/// A <see cref="RuleAction.Stop"/> rule is latched once it fires (see <see cref="StoppingRule"/>). A
/// <see cref="RuleAction.Warn"/> or <see cref="RuleAction.Checkpoint"/> rule fires once per run of consecutive
/// evaluations: at the one where the count reaches <see cref="For"/>, and again only after the condition has
/// stopped holding and held for <see cref="For"/> evaluations anew.
/// </para>
/// <para>
/// <see cref="RuleDecision.Improved"/> (what a <see cref="RuleAction.Checkpoint"/> rule keeps weights on) is true when
/// the condition has held for at least <see cref="For"/> evaluations and the value is strictly better than every
/// earlier value that did, where better follows the comparison: larger for <c>&gt;</c> and <c>&gt;=</c>, smaller for
/// <c>&lt;</c> and <c>&lt;=</c>. The finiteness tests have no direction and never improve.
/// </para>
/// </remarks>
public sealed class ThresholdRule : StoppingRule
{
    private ThresholdComparison _comparison;
    private double _threshold;
    private int _for = 1;

    /// <summary>The condition (default <see cref="ThresholdComparison.GreaterThan"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a defined comparison.</exception>
    public ThresholdComparison Comparison
    {
        get => _comparison;
        init => _comparison = Enum.IsDefined(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Comparison), value,
                "Comparison must be GreaterThan, GreaterThanOrEqual, LessThan, LessThanOrEqual, IsFinite or IsNotFinite.");
    }

    /// <summary>The number the value is compared with (default 0; not used by the finiteness tests).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not finite.</exception>
    public double Threshold
    {
        get => _threshold;
        init => _threshold = double.IsFinite(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Threshold), value,
                "Threshold must be a finite number, for example 0.8; to test for NaN or infinities use Comparison = IsNotFinite.");
    }

    /// <summary>Consecutive evaluations the condition must hold before the rule fires, at least 1 (default 1).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Less than 1.</exception>
    public int For
    {
        get => _for;
        init => _for = value >= 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(For), value,
                "For is the number of consecutive evaluations the condition must hold: at least 1, for example 5.");
    }

    private ConsecutiveCount _held = new();

    private protected override void CopyOwnState() => _held = _held.Copy();

    /// <summary>Consecutive evaluations, up to the last one, where the condition held.</summary>
    public int Consecutive => _held.Count;

    /// <summary>The step of the first of the <see cref="Consecutive"/> evaluations, or null when the count is 0.</summary>
    public long? ConsecutiveSince => _held.Since;

    /// <summary>The best value among evaluations where the condition had held for <see cref="For"/>, or null.</summary>
    public double? BestValue { get; private set; }

    /// <summary>The step of <see cref="BestValue"/>, or null.</summary>
    public long? BestStep { get; private set; }

    /// <summary>Whether a value satisfies the condition.</summary>
    /// <param name="value">The value.</param>
    /// <returns>True when it does; a non-finite value satisfies only <see cref="ThresholdComparison.IsNotFinite"/>.</returns>
    public bool Holds(double value) => Comparison switch
    {
        ThresholdComparison.IsFinite => double.IsFinite(value),
        ThresholdComparison.IsNotFinite => !double.IsFinite(value),
        _ when !double.IsFinite(value) => false,
        ThresholdComparison.GreaterThan => value > Threshold,
        ThresholdComparison.GreaterThanOrEqual => value >= Threshold,
        ThresholdComparison.LessThan => value < Threshold,
        _ => value <= Threshold,
    };

    /// <inheritdoc />
    public override RuleDecision Evaluate(double value, long step)
    {
        if (BeginEvaluation(value, step, out var latched))
            return latched;
        string label = MonitorLabel;
        bool finiteness = Comparison is ThresholdComparison.IsFinite or ThresholdComparison.IsNotFinite;
        var (shownValue, shownThreshold) = ShowApart(value, Threshold);
        if (!Holds(value))
        {
            _held.Miss();
            string not = finiteness ? $"{label} = {shownValue} is {(double.IsFinite(value) ? "finite" : "not finite")}."
                : double.IsFinite(value) ? $"{label} = {shownValue} is not {Symbol(Comparison)} {shownThreshold}."
                : $"{label} = {shownValue} is not finite, so not {Symbol(Comparison)} {shownThreshold}.";
            return Finish(false, false, value, step, not);
        }

        bool fired = _held.Hold(step, For, Action);
        bool improved = false;
        if (Consecutive >= For && !finiteness && (BestValue is not double best || (Comparison is ThresholdComparison.GreaterThan or ThresholdComparison.GreaterThanOrEqual ? value > best : value < best)))
        {
            BestValue = value;
            BestStep = step;
            improved = true;
        }

        var reason = new StringBuilder(label).Append(" = ").Append(shownValue);
        reason.Append(finiteness ? (double.IsFinite(value) ? " is finite" : " is not finite") : $" {Symbol(Comparison)} {shownThreshold}");
        reason.Append(_held.Describe(For, fired));
        return Finish(fired, improved, value, step, reason.ToString());
    }

    /// <inheritdoc />
    public override RuleState SaveState() => _held.Save(BaseState() with { BestValue = BestValue, BestStep = BestStep });

    /// <inheritdoc />
    public override void RestoreState(RuleState state)
    {
        ValidateBaseState(state);
        var held = _held.Prepare(state);
        held();
        ApplyBaseState(state);
        BestValue = state.BestValue;
        BestStep = state.BestStep;
    }

    /// <inheritdoc />
    public override string ToString()
    {
        var text = new StringBuilder(MonitorLabel);
        text.Append(Comparison switch
        {
            ThresholdComparison.IsFinite => " is finite",
            ThresholdComparison.IsNotFinite => " is not finite",
            _ => $" {Symbol(Comparison)} {Literal(Threshold)}",
        });
        if (For != 1)
            text.Append(" for ").Append(For);
        return text.Append(ActionSuffix(Action)).ToString();
    }

    private protected override string Kind => "threshold";

    internal static string Symbol(ThresholdComparison comparison) => comparison switch
    {
        ThresholdComparison.GreaterThan => ">",
        ThresholdComparison.GreaterThanOrEqual => ">=",
        ThresholdComparison.LessThan => "<",
        ThresholdComparison.LessThanOrEqual => "<=",
        ThresholdComparison.IsFinite => "is finite",
        _ => "is not finite",
    };
}

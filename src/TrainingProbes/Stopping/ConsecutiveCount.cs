namespace TrainingProbes.Stopping;

/// <summary>
/// The "for N evaluations" part of a condition rule (<see cref="ThresholdRule"/>, <see cref="RiseRule"/>): how many
/// evaluations in a row the condition has held and since which step, when that fires, the reason's tail, and the
/// counter's part of the saved state.
/// </summary>
internal sealed class ConsecutiveCount
{
    /// <summary>Evaluations in a row, up to the last one, where the condition held.</summary>
    public int Count { get; private set; }

    /// <summary>The step of the first of them, or null when <see cref="Count"/> is 0.</summary>
    public long? Since { get; private set; }

    /// <summary>An independent counter at the same count.</summary>
    public ConsecutiveCount Copy() => new() { Count = Count, Since = Since };

    /// <summary>The condition did not hold: the count starts again.</summary>
    public void Miss()
    {
        Count = 0;
        Since = null;
    }

    /// <summary>
    /// The condition held at <paramref name="step"/>; returns whether the rule fires: a stop rule from the N-th evaluation
    /// in a row on (it is latched), a warn or checkpoint rule at the N-th only.
    /// </summary>
    public bool Hold(long step, int required, RuleAction action)
    {
        if (Count == 0)
            Since = step;
        if (Count < int.MaxValue)
            Count++;
        return action == RuleAction.Stop ? Count >= required : Count == required;
    }

    /// <summary>" for 2 of 3 evaluations (since step 40)." and the like, for a condition that held.</summary>
    public string Describe(int required, bool fired) =>
        " for " + (Count >= required ? StoppingRule.Plural(Count, "evaluation") : $"{Count} of {required} evaluations")
        + $" (since step {Since})" + (Count > required && !fired ? "; already reported." : ".");

    /// <summary>The counter into a rule's saved state.</summary>
    public RuleState Save(RuleState state) => state with { Consecutive = Count, ConsecutiveSince = Since };

    /// <summary>Checks the counter's part of a saved state; returns what restores it.</summary>
    public Action Prepare(RuleState state)
    {
        if (state.Wait != 0)
            throw new ArgumentException($"The state of rule '{state.Name}' has a wait count, which a {state.Kind} rule does not keep; it was not saved by this rule.", nameof(state));
        if ((state.Consecutive == 0) != (state.ConsecutiveSince is null))
            throw new ArgumentException($"The state of rule '{state.Name}' has a consecutive count without its first step, or a step without a count.", nameof(state));
        return () =>
        {
            Count = state.Consecutive;
            Since = state.ConsecutiveSince;
        };
    }
}

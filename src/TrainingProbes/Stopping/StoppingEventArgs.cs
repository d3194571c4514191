namespace TrainingProbes.Stopping;

/// <summary>What the session tells its listeners when a rule fires.</summary>
public sealed class StoppingEventArgs : EventArgs
{
    internal StoppingEventArgs(StoppingRule rule, RuleDecision decision, bool restoredBestWeights)
    {
        Rule = rule;
        Decision = decision;
        RestoredBestWeights = restoredBestWeights;
    }

    /// <summary>The rule that fired.</summary>
    public StoppingRule Rule { get; }

    /// <summary>The decision: the value, the step and a human-readable reason.</summary>
    public RuleDecision Decision { get; }

    /// <summary>What the rule does: stop, warn.</summary>
    public RuleAction Action => Rule.Action;

    /// <summary>The monitored value that made the rule fire.</summary>
    public double Value => Decision.Value;

    /// <summary>The step at which it fired.</summary>
    public long Step => Decision.Step;

    /// <summary>Why, in words.</summary>
    public string Reason => Decision.Reason;

    /// <summary>Whether the model's weights were set back to the best ones the rule kept (<see cref="EarlyStopping.RestoreBestWeights"/>).</summary>
    public bool RestoredBestWeights { get; }
}

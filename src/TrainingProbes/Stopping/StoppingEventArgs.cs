namespace TrainingProbes.Stopping;

/// <summary>What the session tells its listeners when a rule fires.</summary>
public sealed class StoppingEventArgs : EventArgs
{
    internal StoppingEventArgs(StoppingRule rule, RuleDecision decision, bool restoredBestWeights, string probes = "")
    {
        Rule = rule;
        Decision = decision;
        RestoredBestWeights = restoredBestWeights;
        Probes = probes;
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

    /// <summary>
    /// What the probes read at the latest window, to describe the run at the stop (not its cause): the smoothed cosine,
    /// per-example SNR and Fisher relative regret with their spreads between windows; empty before the first window.
    /// </summary>
    public string Probes { get; }

    /// <summary>Whether the model's weights were set back to the best ones the rule kept (<see cref="EarlyStopping.RestoreBestWeights"/>).</summary>
    public bool RestoredBestWeights { get; }
}

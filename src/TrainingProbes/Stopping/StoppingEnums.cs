namespace TrainingProbes.Stopping;

/// <summary>Which direction of the monitored value is better.</summary>
public enum StoppingMode
{
    /// <summary>
    /// Inferred from the monitored name (see <see cref="EarlyStopping.TryInferMode"/>): losses, regrets, noise and
    /// curvature are minimized, accuracies, cosines, GSNR and coherence are maximized. An unknown name is an error.
    /// </summary>
    Auto = 0,

    /// <summary>Lower is better: the rule waits for the value to decrease.</summary>
    Min = 1,

    /// <summary>Higher is better: the rule waits for the value to increase.</summary>
    Max = 2,
}

/// <summary>What the session does with a rule's decisions.</summary>
public enum RuleAction
{
    /// <summary>Stop training when the rule fires. A stop rule is latched: once fired, it stays fired.</summary>
    Stop = 0,

    /// <summary>Report when the rule fires; training goes on.</summary>
    Warn = 1,

    /// <summary>Keep (write) the weights whenever the monitored value improves; training goes on.</summary>
    Checkpoint = 2,
}

/// <summary>The condition of a <see cref="ThresholdRule"/>.</summary>
public enum ThresholdComparison
{
    /// <summary><c>value &gt; threshold</c>.</summary>
    GreaterThan = 0,

    /// <summary><c>value &gt;= threshold</c>.</summary>
    GreaterThanOrEqual = 1,

    /// <summary><c>value &lt; threshold</c>.</summary>
    LessThan = 2,

    /// <summary><c>value &lt;= threshold</c>.</summary>
    LessThanOrEqual = 3,

    /// <summary>The value is a finite number (the threshold is not used).</summary>
    IsFinite = 4,

    /// <summary>The value is NaN or an infinity (the threshold is not used).</summary>
    IsNotFinite = 5,
}

/// <summary>
/// One evaluation of a <see cref="StoppingRule"/>.
/// </summary>
/// <param name="Fired">Whether the rule fired: the session stops (<see cref="RuleAction.Stop"/>) or reports
/// (<see cref="RuleAction.Warn"/>, <see cref="RuleAction.Checkpoint"/>).</param>
/// <param name="Improved">Whether the value is a new best: the session keeps the weights of this step when the rule
/// checkpoints or restores best weights.</param>
/// <param name="Value">The evaluated value.</param>
/// <param name="Step">The step it was evaluated at.</param>
/// <param name="Reason">A sentence saying why the rule fired, or where it stands when it did not.</param>
public readonly record struct RuleDecision(bool Fired, bool Improved, double Value, long Step, string Reason);

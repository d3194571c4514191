using TrainingProbes.Stopping;

namespace TrainingProbes;

/// <summary>A value the trainer reported with <see cref="ProbeSession.Report"/> (see <see cref="ProbeSession.ReportedValues"/>).</summary>
/// <param name="Step">The number of steps the session had seen when the value was reported.</param>
/// <param name="Timestamp">When it was reported, by <see cref="ProbeOptions.TimeProvider"/>.</param>
/// <param name="Value">The value, with its name, geometry and the probe <c>user</c>.</param>
public readonly record struct ReportedValue(long Step, DateTimeOffset Timestamp, IndicatorValue Value);

/// <summary>A stopping rule that fired, stop or warn (see <see cref="ProbeSession.FiredRules"/>).</summary>
/// <param name="Rule">The rule's <see cref="StoppingRule.Name"/>.</param>
/// <param name="Action">What it did.</param>
/// <param name="Step">The step of the evaluation that fired.</param>
/// <param name="Value">The monitored value then.</param>
/// <param name="Reason">Why it fired, as the log line and <see cref="StoppingEventArgs"/> say.</param>
public readonly record struct FiredRule(string Rule, RuleAction Action, long Step, double Value, string Reason);

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Counter instrument: stopping rules that fired, with attributes <c>rule</c> and <c>action</c>.</summary>
    public const string RulesFired = "stopping.fired";
}

/// <summary>
/// Stopping rules that fired, by rule and action (stop or warn).
/// </summary>
internal sealed class RulesFiredIndicator() : BuiltInIndicator(IndicatorFamily.Instrument, 41,
    new(Indicators.RulesFired, "{firing}", "Stopping rules that fired, by rule and action (stop or warn).") { IsSnapshotValue = false });

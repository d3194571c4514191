namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Counter instrument: probe callbacks that threw.</summary>
    public const string ProbeFailures = "probe.failures";
}

/// <summary>
/// Probe callbacks that threw; each is logged and training goes on.
/// </summary>
internal sealed class ProbeFailuresIndicator() : BuiltInIndicator(IndicatorFamily.Instrument, 39,
    new(Indicators.ProbeFailures, "{failure}", "Probe callbacks that threw; each is logged and training goes on.") { IsSnapshotValue = false });

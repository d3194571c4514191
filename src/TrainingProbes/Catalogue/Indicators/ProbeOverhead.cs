namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>
    /// Probe overhead: seconds the probes spent since the previous window divided by the seconds the training loop
    /// spent without them over the same steps (0.05 means training runs 5% slower because of the probes).
    /// </summary>
    public const string ProbeOverhead = "probe.overhead";
}

/// <summary>
/// Probe seconds divided by training seconds without probes, since the previous window.
/// </summary>
internal sealed class ProbeOverheadIndicator() : BuiltInIndicator(IndicatorFamily.Run, 22,
    new(Indicators.ProbeOverhead, "1", "Probe seconds divided by training seconds without probes, since the previous window."));

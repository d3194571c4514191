namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>
    /// Achieved probe overhead since the session started: all probe seconds over all training seconds without probes
    /// (the first window, which pays one-time costs such as JIT compilation, left out).
    /// </summary>
    public const string ProbeOverheadTotal = "probe.overhead_total";
}

/// <summary>
/// Probe seconds divided by training seconds without probes, since the session started.
/// </summary>
internal sealed class ProbeOverheadTotalIndicator() : BuiltInIndicator(IndicatorFamily.Run, 23,
    new(Indicators.ProbeOverheadTotal, "1", "Probe seconds divided by training seconds without probes, since the session started."));

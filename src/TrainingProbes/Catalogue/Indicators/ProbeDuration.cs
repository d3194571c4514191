namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Histogram instrument: seconds each probe spent on a window (not a snapshot value; see <see cref="ProbeSnapshot.ProbeSeconds"/>).</summary>
    public const string ProbeDuration = "probe.duration";
}

/// <summary>
/// Seconds a probe spent on one window.
/// </summary>
internal sealed class ProbeDurationIndicator() : BuiltInIndicator(IndicatorFamily.Instrument, 38,
    new(Indicators.ProbeDuration, "s", "Seconds a probe spent on one window.") { IsSnapshotValue = false });

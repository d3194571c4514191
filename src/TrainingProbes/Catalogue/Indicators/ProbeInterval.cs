namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Steps from this window's start to the next one's (adapted to <see cref="ProbeOptions.OverheadBudget"/> when set).</summary>
    public const string ProbeInterval = "probe.interval";
}

/// <summary>
/// Steps from this window's start to the next window's start.
/// </summary>
internal sealed class ProbeIntervalIndicator() : BuiltInIndicator(IndicatorFamily.Run, 24,
    new(Indicators.ProbeInterval, "{step}", "Steps from this window's start to the next window's start."));

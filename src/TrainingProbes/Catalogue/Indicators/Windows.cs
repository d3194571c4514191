namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Counter instrument: windows closed.</summary>
    public const string Windows = "probe.windows";
}

/// <summary>
/// Windows of captured gradients closed and published.
/// </summary>
internal sealed class WindowsIndicator() : BuiltInIndicator(IndicatorFamily.Instrument, 40,
    new(Indicators.Windows, "{window}", "Windows of captured gradients closed and published.") { IsSnapshotValue = false });

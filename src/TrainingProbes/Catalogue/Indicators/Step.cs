namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Gauge instrument: steps seen by the session.</summary>
    public const string Step = "training.step";
}

/// <summary>
/// Training steps the session has seen (calls of Probe/Step).
/// </summary>
internal sealed class StepIndicator() : BuiltInIndicator(IndicatorFamily.Instrument, 42,
    new(Indicators.Step, "{step}", "Training steps the session has seen (calls of Probe/Step).") { IsSnapshotValue = false });

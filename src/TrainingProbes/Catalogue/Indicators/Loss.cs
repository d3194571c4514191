using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Mean training loss over the window's captured steps (when the loss is passed to the step call).</summary>
    public const string Loss = "training.loss";
}

/// <summary>
/// Mean training loss over the window's captured steps.
/// </summary>
internal sealed class LossIndicator() : BuiltInIndicator(IndicatorFamily.Run, 20,
    new(Indicators.Loss, "1", "Mean training loss over the window's captured steps.", StoppingMode.Min));

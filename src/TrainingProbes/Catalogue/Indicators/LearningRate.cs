namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Learning rate of the first parameter group (when an optimizer is attached).</summary>
    public const string LearningRate = "training.learning_rate";
}

/// <summary>
/// Learning rate of the optimizer's first parameter group.
/// </summary>
internal sealed class LearningRateIndicator() : BuiltInIndicator(IndicatorFamily.Run, 21,
    new(Indicators.LearningRate, "1", "Learning rate of the optimizer's first parameter group."));

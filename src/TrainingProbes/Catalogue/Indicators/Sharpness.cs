using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>eps-sharpness of the pooled loss, <c>fbar(theta + eps ubar) - fbar(theta)</c> (fixed-point probe, per geometry).</summary>
    public const string Sharpness = "sharpness";
}

/// <summary>
/// fbar(theta + eps ubar) - fbar(theta), the rise of the pooled loss along its own ascent direction at radius eps.
/// Keskar et al. 2017, "On large-batch training for deep learning: generalization gap and sharp minima".
/// </summary>
internal sealed class SharpnessIndicator() : BuiltInIndicator(IndicatorFamily.FiniteRadius, 26,
    new(Indicators.Sharpness, "1", "eps-sharpness of the pooled loss: its rise along one ascent step of radius eps.", StoppingMode.Min, true));

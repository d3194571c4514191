using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Contrastive flatness at radius eps, <c>mean_i s_i / s</c> (fixed-point probe, per geometry).</summary>
    public const string FiniteContrastiveFlatness = "flatness.contrastive_eps";
}

/// <summary>
/// mean_i s_i / s, the minibatch sharpnesses over the pooled one at radius eps, at least 1 for a convex pooled loss
/// (docs/REFERENCE.md).
/// </summary>
internal sealed class FiniteContrastiveFlatnessIndicator() : BuiltInIndicator(IndicatorFamily.FiniteRadius, 27,
    new(Indicators.FiniteContrastiveFlatness, "1", "Contrastive flatness at radius eps: mean minibatch sharpness over pooled sharpness.", StoppingMode.Min, true));

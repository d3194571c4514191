namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Norm of the window's mean gradient, <c>||gbar||</c> (per geometry).</summary>
    public const string MeanGradientNorm = "gradient.mean_norm";
}

/// <summary>
/// ||gbar||, the norm of the window mean; sqrt(max(S, 0)) for micro-batches.
/// </summary>
internal sealed class MeanGradientNormIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 1,
    new(Indicators.MeanGradientNorm, "1", "Norm of the mean of the window's minibatch gradients, ||gbar||.", PerGeometry: true, FromGram: g => g.Statistics.MeanGradientNorm));

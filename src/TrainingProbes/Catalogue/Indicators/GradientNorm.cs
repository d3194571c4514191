namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Mean minibatch gradient norm, <c>mean_i ||g_i||</c> (per geometry).</summary>
    public const string GradientNorm = "gradient.norm";
}

/// <summary>
/// mean_i ||g_i|| over K minibatch gradients; sqrt(S + T/s) (the expected norm of a trainer minibatch gradient) for K
/// micro-batches of one minibatch (S, T: see FirstOrderStatistics).
/// </summary>
internal sealed class GradientNormIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 0,
    new(Indicators.GradientNorm, "1", "Mean norm of the window's minibatch gradients, mean_i ||g_i||.", PerGeometry: true, PerLayer: true, FromGram: g => g.Statistics.MeanNorm));

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Per-example gradient noise <c>tr(Sigma)</c>, the trace of one example's gradient covariance; does not depend on the batch size (per geometry).</summary>
    public const string ExampleNoise = "gradient.noise_per_example";
}

/// <summary>
/// tr(Sigma_1) = n tr(Sigma) for gradients over n examples each: independent of the batch size (McCandlish et al.
/// 2018).
/// </summary>
internal sealed class ExampleNoiseIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 10,
    new(Indicators.ExampleNoise, "1", "Per-example gradient noise tr(Sigma), the micro-batch size times the trace of a micro-batch gradient's covariance: independent of the batch size.", PerGeometry: true, FromGram: g => g.Statistics.ExampleNoise));

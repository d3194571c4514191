namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>
    /// Gradient noise scale <c>B_noise = tr(Sigma) / |m|^2</c> in examples (McCandlish et al. 2018): the per-example noise
    /// over the squared expected gradient, a form that does not depend on the trainer's batch size (per geometry).
    /// </summary>
    public const string NoiseScale = "gradient.noise_scale";
}

/// <summary>
/// B_noise = tr(Sigma_1) / |m|^2 per example, with |m|^2 estimated without bias. McCandlish, Kaplan, Amodei et al.
/// 2018, "An empirical model of large-batch training".
/// </summary>
internal sealed class NoiseScaleIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 9,
    new(Indicators.NoiseScale, "{example}", "Gradient noise scale B_noise = tr(Sigma) / |m|^2 (McCandlish et al. 2018), per example: independent of the batch size.", PerGeometry: true, FromGram: g => g.Statistics.NoiseScale));

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>
    /// Per-example signal-to-noise ratio <c>|m|^2 / tr(Sigma)</c>, the inverse of the noise scale: linear in the estimate of
    /// |m|^2, so its standard error stays meaningful where the noise scale's does not (per geometry).
    /// </summary>
    public const string ExampleSnr = "gradient.snr_per_example";
}

/// <summary>
/// |m|^2 / tr(Sigma_1), the inverse of the noise scale: linear in the estimate of |m|^2, so its jackknife error stays
/// meaningful where B_noise's does not.
/// </summary>
internal sealed class ExampleSnrIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 11,
    new(Indicators.ExampleSnr, "1", "Per-example signal-to-noise ratio |m|^2 / tr(Sigma), 1 / noise_scale: independent of the batch size, with a standard error that stays meaningful when |m|^2 is small.", PerGeometry: true, FromGram: g => g.Statistics.ExampleSnr));

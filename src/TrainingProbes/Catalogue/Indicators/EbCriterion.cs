using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Early-stopping EB criterion, <c>-K gsnr</c> with the GSNR corrected for finite K: 0 on pure noise, positive when the gradient is indistinguishable from noise (geometry free).</summary>
    public const string EbCriterion = "eb_criterion";
}

/// <summary>
/// -K gsnr with the finite-K corrected GSNR: 0 on pure noise, above 0 when the gradient cannot be told from noise.
/// Mahsereci, Balles, Lassner and Hennig 2017, "Early stopping without a validation set".
/// </summary>
internal sealed class EbCriterionIndicator() : BuiltInIndicator(IndicatorFamily.PerCoordinate, 18,
    new(Indicators.EbCriterion, "1", "EB criterion (Mahsereci et al. 2017), -K gsnr with gsnr corrected for finite K: 0 on pure noise, above 0 the gradient is indistinguishable from noise.", StoppingMode.Min) { PerCoordinate = true });

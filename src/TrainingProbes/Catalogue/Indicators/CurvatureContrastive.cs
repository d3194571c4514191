using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Contrastive curvature, <c>mean_i lambda_max(H_i) / lambda_max(Hbar)</c>, at least 1 (euclidean).</summary>
    public const string CurvatureContrastive = "curvature.contrastive";
}

/// <summary>
/// mean_i lambda_max(H_i) / lambda_max(Hbar), at least 1 for positive semi-definite Hessians (docs/REFERENCE.md).
/// </summary>
internal sealed class CurvatureContrastiveIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 31,
    new(Indicators.CurvatureContrastive, "1", "mean_i lambda_max(H_i) / lambda_max(Hbar), at least 1.", StoppingMode.Min, true));

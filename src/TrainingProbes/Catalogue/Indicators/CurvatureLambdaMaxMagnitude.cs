using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Hessian eigenvalue of largest magnitude of the pooled loss (euclidean).</summary>
    public const string CurvatureLambdaMaxMagnitude = "curvature.lambda_max_magnitude";
}

/// <summary>
/// eigenvalue of largest magnitude of the pooled loss's Hessian (euclidean), by power iteration.
/// </summary>
internal sealed class CurvatureLambdaMaxMagnitudeIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 30,
    new(Indicators.CurvatureLambdaMaxMagnitude, "1", "Hessian eigenvalue of largest magnitude of the pooled loss.", StoppingMode.Min, true));

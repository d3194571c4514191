using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Largest algebraic Hessian eigenvalue of the pooled loss (euclidean), or of <c>D H D</c> (fisher, adaptive).</summary>
    public const string CurvatureLambdaMax = "curvature.lambda_max";
}

/// <summary>
/// largest algebraic eigenvalue of the pooled loss's Hessian (of D H D in the fisher and adaptive geometries), by
/// warm-started power iteration on Hessian-vector products (Yao et al. 2020, "PyHessian").
/// </summary>
internal sealed class CurvatureLambdaMaxIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 29,
    new(Indicators.CurvatureLambdaMax, "1", "Largest Hessian eigenvalue of the pooled loss (of D H D in fisher/adaptive geometry).", StoppingMode.Min, true));

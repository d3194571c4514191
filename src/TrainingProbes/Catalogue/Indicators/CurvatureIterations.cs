namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Power iterations the published <see cref="CurvatureLambdaMax"/> (euclidean) took (warm-started from the previous window's eigenvector).</summary>
    public const string CurvatureIterations = "curvature.lambda_max.iterations";
}

/// <summary>
/// Power iterations the top Hessian eigenvalue took (warm-started from the previous window).
/// </summary>
internal sealed class CurvatureIterationsIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 33,
    new(Indicators.CurvatureIterations, "{iteration}", "Power iterations the top Hessian eigenvalue took (warm-started from the previous window).", PerGeometry: true));

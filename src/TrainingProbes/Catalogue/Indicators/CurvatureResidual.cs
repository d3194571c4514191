namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Relative residual <c>||H v - lambda v|| / |lambda|</c> of that eigenvalue.</summary>
    public const string CurvatureResidual = "curvature.lambda_max.residual";
}

/// <summary>
/// Relative residual ||H v - lambda v|| / |lambda| of the top Hessian eigenvalue.
/// </summary>
internal sealed class CurvatureResidualIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 35,
    new(Indicators.CurvatureResidual, "1", "Relative residual ||H v - lambda v|| / |lambda| of the top Hessian eigenvalue.", PerGeometry: true));

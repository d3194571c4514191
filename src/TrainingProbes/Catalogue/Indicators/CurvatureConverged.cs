namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>1 when that power iteration met its tolerance, 0 when it stopped at the iteration limit (then it is logged).</summary>
    public const string CurvatureConverged = "curvature.lambda_max.converged";
}

/// <summary>
/// 1 when the top Hessian eigenvalue's power iteration met its tolerance, else 0 (the estimate is then logged as
/// unconverged).
/// </summary>
internal sealed class CurvatureConvergedIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 34,
    new(Indicators.CurvatureConverged, "1", "1 when the top Hessian eigenvalue's power iteration met its tolerance, else 0 (the estimate is then logged as unconverged).", PerGeometry: true));

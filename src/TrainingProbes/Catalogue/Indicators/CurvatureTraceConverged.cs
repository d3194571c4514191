namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>1 when the Hutchinson estimate of <see cref="CurvatureTrace"/> met its tolerance, 0 when it stopped at its sample limit (then it is logged).</summary>
    public const string CurvatureTraceConverged = "curvature.trace.converged";
}

/// <summary>
/// 1 when the Hutchinson trace estimate met its tolerance, else 0 (then it is logged).
/// </summary>
internal sealed class CurvatureTraceConvergedIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 36,
    new(Indicators.CurvatureTraceConverged, "1", "1 when the Hutchinson trace estimate met its tolerance, else 0 (then it is logged).", PerGeometry: true));

using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Hutchinson estimate of the Hessian trace of the pooled loss (euclidean).</summary>
    public const string CurvatureTrace = "curvature.trace";
}

/// <summary>
/// Hutchinson's estimate mean_r v_r^T H v_r with Rademacher v_r (Hutchinson 1989; Yao et al. 2020).
/// </summary>
internal sealed class CurvatureTraceIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 32,
    new(Indicators.CurvatureTrace, "1", "Hutchinson estimate of the Hessian trace of the pooled loss.", StoppingMode.Min, true));

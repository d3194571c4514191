namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Half-width of the 95% confidence interval of <see cref="CurvatureTrace"/>.</summary>
    public const string CurvatureTraceHalfWidth = "curvature.trace_half_width";
}

/// <summary>
/// Half-width of the 95% confidence interval of the trace estimate.
/// </summary>
internal sealed class CurvatureTraceHalfWidthIndicator() : BuiltInIndicator(IndicatorFamily.Curvature, 37,
    new(Indicators.CurvatureTraceHalfWidth, "1", "Half-width of the 95% confidence interval of the trace estimate.", PerGeometry: true));

using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Jensen ratio, <c>mean ||g_i|| / sqrt(mean ||g_i||^2)</c>, in (0, 1] (per geometry).</summary>
    public const string JensenRatio = "flatness.jensen_ratio";
}

/// <summary>
/// mean_i ||g_i|| / sqrt(mean_i ||g_i||^2), in (0, 1] by Jensen's inequality; 1 when all norms are equal.
/// </summary>
internal sealed class JensenRatioIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 6,
    new(Indicators.JensenRatio, "1", "mean ||g_i|| / sqrt(mean ||g_i||^2), in (0, 1].", StoppingMode.Max, true, FromGram: g => g.Statistics.JensenRatio));

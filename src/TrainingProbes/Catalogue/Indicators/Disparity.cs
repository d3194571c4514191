using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Gradient disparity, mean pairwise distance <c>||g_i - g_j||</c> (per geometry).</summary>
    public const string Disparity = "gradient.disparity";
}

/// <summary>
/// mean_{i != j} ||g_i - g_j||; sqrt(2 T_b) for micro-batches. Forouzesh and Thiran 2021, "Disparity between batches
/// as a signal for early stopping".
/// </summary>
internal sealed class DisparityIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 13,
    new(Indicators.Disparity, "1", "Gradient disparity (Forouzesh and Thiran 2021), mean pairwise distance ||g_i - g_j||.", StoppingMode.Min, true, FromGram: g => g.Statistics.Disparity));

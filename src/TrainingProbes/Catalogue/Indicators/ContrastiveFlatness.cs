using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>First-order contrastive flatness, <c>mean ||g_i|| / ||gbar||</c>, at least 1 (per geometry).</summary>
    public const string ContrastiveFlatness = "flatness.contrastive";
}

/// <summary>
/// mean_i ||g_i|| / ||gbar||, at least 1; A / sqrt(S) for micro-batches (first-order form of the contrastive flatness
/// of docs/REFERENCE.md).
/// </summary>
internal sealed class ContrastiveFlatnessIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 7,
    new(Indicators.ContrastiveFlatness, "1", "First-order contrastive flatness, mean ||g_i|| / ||gbar||, at least 1.", StoppingMode.Min, true, FromGram: g => g.Statistics.ContrastiveFlatness));

using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Mean pairwise cosine between minibatch gradients (stiffness), in [-1, 1] (per geometry).</summary>
    public const string Cosine = "gradient.cosine";
}

/// <summary>
/// mean_{i != j} G_ij / (||g_i|| ||g_j||); S / A^2 for micro-batches. Stiffness: Fort et al. 2019, "Stiffness: a new
/// perspective on generalization in neural networks".
/// </summary>
internal sealed class CosineIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 2,
    new(Indicators.Cosine, "1", "Mean pairwise cosine between minibatch gradients (stiffness; Fort et al. 2019), in [-1, 1].", StoppingMode.Max, true, true, g => g.Statistics.Cosine));

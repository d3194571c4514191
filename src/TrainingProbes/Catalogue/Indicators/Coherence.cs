using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>m-coherence, <c>K ||gbar||^2 / mean ||g_i||^2</c>, in [0, K] (per geometry).</summary>
    public const string Coherence = "gradient.coherence";
}

/// <summary>
/// K ||gbar||^2 / mean_i ||g_i||^2, in [0, K]. Chatterjee 2020, "Coherent gradients: an approach to understanding
/// generalization in gradient descent-based optimization".
/// </summary>
internal sealed class CoherenceIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 12,
    new(Indicators.Coherence, "1", "m-coherence (Chatterjee 2020), K ||gbar||^2 / mean ||g_i||^2, in [0, K].", StoppingMode.Max, true, FromGram: g => g.Statistics.Coherence));

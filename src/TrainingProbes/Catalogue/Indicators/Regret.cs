using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Mean first-order regret per unit radius, <c>||g_j|| - g_i.g_j/||g_i||</c> over ordered pairs (per geometry).</summary>
    public const string Regret = "regret";
}

/// <summary>
/// mean_{i != j} ||g_j|| - G_ij / ||g_i||, the first-order regret per unit radius of stepping along g_i when g_j is
/// the truth; T_b / A for micro-batches (docs/REFERENCE.md, "The indicators").
/// </summary>
internal sealed class RegretIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 3,
    new(Indicators.Regret, "1", "Mean first-order regret per unit radius between minibatches, ||g_j|| - g_i.g_j/||g_i||.", StoppingMode.Min, true, FromGram: g => g.Statistics.Regret));

using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Upper quantile (<see cref="ProbeOptions.RegretQuantile"/>) of the pairwise regret per unit radius (per geometry).</summary>
    public const string RegretUpper = "regret.upper";
}

/// <summary>
/// the ProbeOptions.RegretQuantile quantile of the pairwise regrets ||g_j|| - G_ij / ||g_i|| (linear interpolation
/// between order statistics).
/// </summary>
internal sealed class RegretUpperIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 4,
    new(Indicators.RegretUpper, "1", "Upper quantile (ProbeOptions.RegretQuantile) of the pairwise regret per unit radius.", StoppingMode.Min, true, FromGram: g => g.Statistics.RegretUpper));

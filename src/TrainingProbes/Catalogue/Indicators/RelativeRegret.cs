using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Relative regret, <c>sum r_ij / sum ||g_j||</c>, in [0, 2]; scale free (per geometry).</summary>
    public const string RelativeRegret = "regret.relative";
}

/// <summary>
/// sum_{i != j} r_ij / sum_{i != j} ||g_j||, in [0, 2]; T_b / A^2 for micro-batches.
/// </summary>
internal sealed class RelativeRegretIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 5,
    new(Indicators.RelativeRegret, "1", "Regret relative to the gradient norms, sum r_ij / sum ||g_j||, in [0, 2].", StoppingMode.Min, true, true, g => g.Statistics.RelativeRegret));

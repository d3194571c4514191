using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Orthogonality test statistic (per geometry).</summary>
    public const string OrthogonalityTest = "test.orthogonality";
}

/// <summary>
/// sqrt(sum_i ||g_i - &lt;g_i, gbar&gt; gbar / ||gbar||^2||^2 / ((K - 1) K ||gbar||^2)). Bollapragada, Byrd and Nocedal
/// 2018.
/// </summary>
internal sealed class OrthogonalityTestIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 16,
    new(Indicators.OrthogonalityTest, "1", "Orthogonality test statistic (Bollapragada et al. 2018).", StoppingMode.Min, true, FromGram: g => g.Statistics.OrthogonalityTest));

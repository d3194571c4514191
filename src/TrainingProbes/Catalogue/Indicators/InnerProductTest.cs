using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Inner-product test statistic (per geometry).</summary>
    public const string InnerProductTest = "test.inner_product";
}

/// <summary>
/// sqrt(Var_i &lt;g_i, gbar&gt; / (K ||gbar||^4)), the smallest tolerance at which the inner-product test passes.
/// Bollapragada, Byrd and Nocedal 2018, "Adaptive sampling strategies for stochastic optimization".
/// </summary>
internal sealed class InnerProductTestIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 15,
    new(Indicators.InnerProductTest, "1", "Inner-product test statistic (Bollapragada et al. 2018).", StoppingMode.Min, true, FromGram: g => g.Statistics.InnerProductTest));

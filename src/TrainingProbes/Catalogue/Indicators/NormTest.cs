using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Norm test statistic: relative error of the mean gradient (per geometry).</summary>
    public const string NormTest = "test.norm";
}

/// <summary>
/// sqrt(tr(Sigma) / (K ||gbar||^2)), the smallest tolerance at which the norm test passes. Byrd, Chin, Nocedal and Wu
/// 2012, "Sample size selection in optimization methods for machine learning".
/// </summary>
internal sealed class NormTestIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 14,
    new(Indicators.NormTest, "1", "Norm test (Byrd et al. 2012): relative error of the mean gradient.", StoppingMode.Min, true, FromGram: g => g.Statistics.NormTest));

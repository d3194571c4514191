using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Mean gradient signal-to-noise ratio over coordinates (geometry free).</summary>
    public const string Gsnr = "gradient.gsnr";
}

/// <summary>
/// mean over coordinates of mean_i(g_ic)^2 / var_i(g_ic), corrected for finite K (GsnrStatistics). Liu et al. 2020,
/// "Understanding why neural networks generalize well through GSNR of parameters".
/// </summary>
internal sealed class GsnrIndicator() : BuiltInIndicator(IndicatorFamily.PerCoordinate, 17,
    new(Indicators.Gsnr, "1", "Mean signal-to-noise ratio of the minibatch gradient over all coordinates (Liu et al. 2020), corrected for finite K.", StoppingMode.Max, PerLayer: true) { PerCoordinate = true });

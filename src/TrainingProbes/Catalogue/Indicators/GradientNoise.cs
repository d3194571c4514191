using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Gradient noise, the trace of the minibatch gradient covariance (per geometry).</summary>
    public const string GradientNoise = "gradient.noise";
}

/// <summary>
/// tr(Sigma) of a minibatch gradient: (sum_i ||g_i||^2 - K ||gbar||^2) / (K - 1); T_b for micro-batches.
/// </summary>
internal sealed class GradientNoiseIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 8,
    new(Indicators.GradientNoise, "1", "Trace of the covariance of minibatch gradients.", StoppingMode.Min, true, FromGram: g => g.Statistics.Noise));

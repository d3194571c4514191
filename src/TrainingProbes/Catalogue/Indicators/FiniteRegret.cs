using TrainingProbes.Stopping;

namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Finite-radius regret per unit radius at one theta, <c>mean R_ij / eps</c> (fixed-point probe, per geometry).</summary>
    public const string FiniteRegret = "regret.finite";
}

/// <summary>
/// mean_{i != j} R_ij / eps, R_ij the rise of minibatch j's loss along minibatch i's normalized step of radius eps,
/// at one theta (FixedPointProbe).
/// </summary>
internal sealed class FiniteRegretIndicator() : BuiltInIndicator(IndicatorFamily.FiniteRadius, 25,
    new(Indicators.FiniteRegret, "1", "Finite-radius regret per unit radius between minibatches at one theta.", StoppingMode.Min, true));

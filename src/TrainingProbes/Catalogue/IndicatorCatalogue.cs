using TrainingProbes.Probes;
using TrainingProbes.Stopping;
using static TrainingProbes.Indicators;

namespace TrainingProbes;

/// <summary>
/// Every indicator the library knows: one <see cref="IndicatorDefinition"/> each. The first-order family is computed
/// from these definitions, the meter declares its instruments from them, the stopping rules look up their direction
/// here, and a test checks the instrument tables of docs/REFERENCE.md against them. Adding an indicator of the first-order family is one
/// <see cref="Register"/> call (or one entry below) with its <see cref="IndicatorDefinition.FromGram"/>.
/// Formulas and references: the section "The indicators" of docs/REFERENCE.md.
/// </summary>
public static class IndicatorCatalogue
{
    private const string One = "1";

    /// <summary>The built-in indicators.</summary>
    public static IReadOnlyList<IndicatorDefinition> BuiltIn { get; } =
    [
        // The first-order family: O(K^2) formulas on the Gram matrix of the window's K minibatch gradients, per geometry.
        new(GradientNorm, One, "Mean norm of the window's minibatch gradients, mean_i ||g_i||.", PerGeometry: true, PerLayer: true, FromGram: g => g.Statistics.MeanNorm),
        new(MeanGradientNorm, One, "Norm of the mean of the window's minibatch gradients, ||gbar||.", PerGeometry: true, FromGram: g => g.Statistics.MeanGradientNorm),
        new(Cosine, One, "Mean pairwise cosine between minibatch gradients (stiffness; Fort et al. 2019), in [-1, 1].", StoppingMode.Max, true, true, g => g.Statistics.Cosine),
        new(Regret, One, "Mean first-order regret per unit radius between minibatches, ||g_j|| - g_i.g_j/||g_i||.", StoppingMode.Min, true, FromGram: g => g.Statistics.Regret),
        new(RegretUpper, One, "Upper quantile (ProbeOptions.RegretQuantile) of the pairwise regret per unit radius.", StoppingMode.Min, true, FromGram: g => g.Statistics.RegretUpper),
        new(RelativeRegret, One, "Regret relative to the gradient norms, sum r_ij / sum ||g_j||, in [0, 2].", StoppingMode.Min, true, true, g => g.Statistics.RelativeRegret),
        new(JensenRatio, One, "mean ||g_i|| / sqrt(mean ||g_i||^2), in (0, 1].", StoppingMode.Max, true, FromGram: g => g.Statistics.JensenRatio),
        new(ContrastiveFlatness, One, "First-order contrastive flatness, mean ||g_i|| / ||gbar||, at least 1.", StoppingMode.Min, true, FromGram: g => g.Statistics.ContrastiveFlatness),
        new(GradientNoise, One, "Trace of the covariance of minibatch gradients.", StoppingMode.Min, true, FromGram: g => g.Statistics.Noise),
        new(NoiseScale, "{example}", "Gradient noise scale B_noise = tr(Sigma) / |m|^2 (McCandlish et al. 2018), per example: independent of the batch size.", PerGeometry: true, FromGram: g => g.Statistics.NoiseScale),
        new(ExampleNoise, One, "Per-example gradient noise tr(Sigma), the micro-batch size times the trace of a micro-batch gradient's covariance: independent of the batch size.", PerGeometry: true, FromGram: g => g.Statistics.ExampleNoise),
        new(ExampleSnr, One, "Per-example signal-to-noise ratio |m|^2 / tr(Sigma), 1 / noise_scale: independent of the batch size, with a standard error that stays meaningful when |m|^2 is small.", PerGeometry: true, FromGram: g => g.Statistics.ExampleSnr),
        new(Coherence, One, "m-coherence (Chatterjee 2020), K ||gbar||^2 / mean ||g_i||^2, in [0, K].", StoppingMode.Max, true, FromGram: g => g.Statistics.Coherence),
        new(Disparity, One, "Gradient disparity (Forouzesh and Thiran 2021), mean pairwise distance ||g_i - g_j||.", StoppingMode.Min, true, FromGram: g => g.Statistics.Disparity),
        new(NormTest, One, "Norm test (Byrd et al. 2012): relative error of the mean gradient.", StoppingMode.Min, true, FromGram: g => g.Statistics.NormTest),
        new(InnerProductTest, One, "Inner-product test statistic (Bollapragada et al. 2018).", StoppingMode.Min, true, FromGram: g => g.Statistics.InnerProductTest),
        new(OrthogonalityTest, One, "Orthogonality test statistic (Bollapragada et al. 2018).", StoppingMode.Min, true, FromGram: g => g.Statistics.OrthogonalityTest),

        // Per coordinate, geometry free (GsnrStatistics).
        new(Gsnr, One, "Mean signal-to-noise ratio of the minibatch gradient over all coordinates (Liu et al. 2020), corrected for finite K.", StoppingMode.Max, PerLayer: true),
        new(EbCriterion, One, "EB criterion (Mahsereci et al. 2017), -K gsnr with gsnr corrected for finite K: 0 on pure noise, above 0 the gradient is indistinguishable from noise.", StoppingMode.Min),

        // The run.
        new(ParameterDrift, One, "Relative parameter change over the window's captured steps."),
        new(Loss, One, "Mean training loss over the window's captured steps.", StoppingMode.Min),
        new(LearningRate, One, "Learning rate of the optimizer's first parameter group."),
        new(ProbeOverhead, One, "Probe seconds divided by training seconds without probes, since the previous window."),
        new(ProbeOverheadTotal, One, "Probe seconds divided by training seconds without probes, since the session started."),
        new(ProbeInterval, "{step}", "Steps from this window's start to the next window's start."),

        // At one theta, finite radius (FixedPointProbe).
        new(FiniteRegret, One, "Finite-radius regret per unit radius between minibatches at one theta.", StoppingMode.Min, true),
        new(Sharpness, One, "eps-sharpness of the pooled loss: its rise along one ascent step of radius eps.", StoppingMode.Min, true),
        new(FiniteContrastiveFlatness, One, "Contrastive flatness at radius eps: mean minibatch sharpness over pooled sharpness.", StoppingMode.Min, true),
        new(Radius, One, "Radius eps of the finite-radius measures.", PerGeometry: true),

        // Curvature (FixedPointProbe).
        new(CurvatureLambdaMax, One, "Largest Hessian eigenvalue of the pooled loss (of D H D in fisher/adaptive geometry).", StoppingMode.Min, true),
        new(CurvatureLambdaMaxMagnitude, One, "Hessian eigenvalue of largest magnitude of the pooled loss.", StoppingMode.Min, true),
        new(CurvatureContrastive, One, "mean_i lambda_max(H_i) / lambda_max(Hbar), at least 1.", StoppingMode.Min, true),
        new(CurvatureTrace, One, "Hutchinson estimate of the Hessian trace of the pooled loss.", StoppingMode.Min, true),
        new(CurvatureIterations, "{iteration}", "Power iterations the top Hessian eigenvalue took (warm-started from the previous window).", PerGeometry: true),
        new(CurvatureConverged, One, "1 when the top Hessian eigenvalue's power iteration met its tolerance, else 0 (the estimate is then logged as unconverged).", PerGeometry: true),
        new(CurvatureResidual, One, "Relative residual ||H v - lambda v|| / |lambda| of the top Hessian eigenvalue.", PerGeometry: true),
        new(CurvatureTraceConverged, One, "1 when the Hutchinson trace estimate met its tolerance, else 0 (then it is logged).", PerGeometry: true),
        new(CurvatureTraceHalfWidth, One, "Half-width of the 95% confidence interval of the trace estimate.", PerGeometry: true),

        // Instruments that are not snapshot values.
        new(ProbeDuration, "s", "Seconds a probe spent on one window.") { IsSnapshotValue = false },
        new(ProbeFailures, "{failure}", "Probe callbacks that threw; each is logged and training goes on.") { IsSnapshotValue = false },
        new(Windows, "{window}", "Windows of captured gradients closed and published.") { IsSnapshotValue = false },
        new(RulesFired, "{firing}", "Stopping rules that fired, by rule and action (stop or warn).") { IsSnapshotValue = false },
        new(Step, "{step}", "Training steps the session has seen (calls of Probe/Step).") { IsSnapshotValue = false },
    ];

    private static readonly object Gate = new();
    private static IndicatorDefinition[] _all = [.. BuiltIn];
    private static Dictionary<string, IndicatorDefinition> _byName = BuiltIn.ToDictionary(d => d.Name);

    /// <summary>The built-in indicators and the registered ones.</summary>
    public static IReadOnlyList<IndicatorDefinition> All => Volatile.Read(ref _all);

    /// <summary>
    /// Adds an indicator. One with <see cref="IndicatorDefinition.FromGram"/> is computed by every session attached after
    /// this call, in both first-order families, with its standard error and smoothed mean; its instrument and its
    /// direction for the stopping rules come from the definition. Names are process-wide, as instrument names are.
    /// </summary>
    /// <param name="definition">The definition.</param>
    /// <exception cref="ArgumentException">The name is not dotted snake_case, or another definition has it.</exception>
    public static void Register(IndicatorDefinition definition)
    {
        ArgumentNullException.ThrowIfNull(definition);
        ProbeWindowContext.ValidateName(definition.Name);
        lock (Gate)
        {
            if (_byName.TryGetValue(definition.Name, out var existing))
            {
                if (existing == definition) return;
                throw new ArgumentException($"An indicator named '{definition.Name}' is already in the catalogue; choose another name.", nameof(definition));
            }

            var byName = new Dictionary<string, IndicatorDefinition>(_byName) { [definition.Name] = definition };
            Volatile.Write(ref _byName, byName);
            Volatile.Write(ref _all, [.. _all, definition]);
        }

        if (definition.IsSnapshotValue) Telemetry.ProbeMetrics.EnsureInstrument(definition.Name);
    }

    /// <summary>Removes a registered (not built-in) indicator; sessions attached before keep computing it. For tests.</summary>
    internal static void Unregister(string name)
    {
        lock (Gate)
        {
            if (BuiltIn.Any(d => d.Name == name) || !_byName.ContainsKey(name)) return;
            var byName = new Dictionary<string, IndicatorDefinition>(_byName);
            byName.Remove(name);
            Volatile.Write(ref _byName, byName);
            Volatile.Write(ref _all, _all.Where(d => d.Name != name).ToArray());
        }
    }

    /// <summary>The first-order indicators (those with <see cref="IndicatorDefinition.FromGram"/>), in catalogue order.</summary>
    internal static IndicatorDefinition[] FirstOrder() => All.Where(d => d.FromGram is not null).ToArray();

    /// <summary>
    /// The definition a published name comes from: the name itself, or with a family prefix (<c>step.</c>,
    /// <c>fixed_point.</c>) and a suffix (<c>.smoothed</c>, <c>.stderr</c>, <c>.spread</c>) taken off.
    /// </summary>
    /// <param name="name">A published name.</param>
    /// <param name="definition">The definition when found.</param>
    public static bool TryFind(string name, out IndicatorDefinition definition)
    {
        ArgumentNullException.ThrowIfNull(name);
        return Volatile.Read(ref _byName).TryGetValue(Base(name), out definition!);
    }

    /// <summary>The name without its family prefix and its suffixes.</summary>
    private static string Base(string name)
    {
        foreach (var prefix in new[] { GradientStatisticsProbe.Prefix, FixedPointProbe.Prefix })
            if (name.StartsWith(prefix, StringComparison.Ordinal)) name = name[prefix.Length..];
        if (name.EndsWith(SpreadSuffix, StringComparison.Ordinal)) name = name[..^SpreadSuffix.Length];
        if (name.EndsWith(StandardErrorSuffix, StringComparison.Ordinal)) name = name[..^StandardErrorSuffix.Length];
        if (name.EndsWith(SmoothedSuffix, StringComparison.Ordinal)) name = name[..^SmoothedSuffix.Length];
        return name;
    }

    /// <summary>The UCUM unit of a published name's instrument (<c>1</c> for names not in the catalogue).</summary>
    internal static string UnitOf(string name) => TryFind(name, out var d) ? d.Unit : One;

    /// <summary>The instrument description of a published name.</summary>
    internal static string DescriptionOf(string name)
    {
        if (name.EndsWith(SpreadSuffix, StringComparison.Ordinal))
            return "Between-window spread (successive differences over the last ProbeOptions.SmoothingWindows windows; value +- 1.96 spread is the run-level interval) of: " + DescriptionOf(name[..^SpreadSuffix.Length]);
        if (name.EndsWith(SmoothedSuffix, StringComparison.Ordinal))
            return "Mean over the last windows (ProbeOptions.SmoothingWindows) of: " + DescriptionOf(name[..^SmoothedSuffix.Length]);
        if (name.EndsWith(StandardErrorSuffix, StringComparison.Ordinal))
            return "Standard error (jackknife over the window's K minibatches) of: " + DescriptionOf(name[..^StandardErrorSuffix.Length]);
        if (!TryFind(name, out var definition)) return $"Value '{name}' reported by a probe.";
        if (name.StartsWith(FixedPointProbe.Prefix, StringComparison.Ordinal))
            return definition.Description + " (active window: K minibatches at one theta)";
        if (name.StartsWith(GradientStatisticsProbe.Prefix, StringComparison.Ordinal))
            return definition.Description + " (the optimizer's step gradients, each at its own theta: a trajectory statistic)";
        return definition.Description;
    }
}

namespace TrainingProbes;

/// <summary>
/// Names of the indicators the built-in probes publish. Each name is dotted snake_case; the
/// OpenTelemetry instrument is the name prefixed with <see cref="TrainingProbesMeter.InstrumentPrefix"/>.
/// Values that depend on a geometry are published once per enabled <see cref="Geometry"/>.
/// </summary>
public static class Indicators
{
    /// <summary>Mean minibatch gradient norm, <c>mean_i ||g_i||</c> (per geometry).</summary>
    public const string GradientNorm = "gradient.norm";

    /// <summary>Norm of the window's mean gradient, <c>||gbar||</c> (per geometry).</summary>
    public const string MeanGradientNorm = "gradient.mean_norm";

    /// <summary>Mean pairwise cosine between minibatch gradients (stiffness), in [-1, 1] (per geometry).</summary>
    public const string Cosine = "gradient.cosine";

    /// <summary>Mean first-order regret per unit radius, <c>||g_j|| - g_i.g_j/||g_i||</c> over ordered pairs (per geometry).</summary>
    public const string Regret = "regret";

    /// <summary>Upper quantile (<see cref="ProbeOptions.RegretQuantile"/>) of the pairwise regret per unit radius (per geometry).</summary>
    public const string RegretUpper = "regret.upper";

    /// <summary>Relative regret, <c>sum r_ij / sum ||g_j||</c>, in [0, 2]; scale free (per geometry).</summary>
    public const string RelativeRegret = "regret.relative";

    /// <summary>Jensen ratio, <c>mean ||g_i|| / sqrt(mean ||g_i||^2)</c>, in (0, 1] (per geometry).</summary>
    public const string JensenRatio = "flatness.jensen_ratio";

    /// <summary>First-order contrastive flatness, <c>mean ||g_i|| / ||gbar||</c>, at least 1 (per geometry).</summary>
    public const string ContrastiveFlatness = "flatness.contrastive";

    /// <summary>Gradient noise, the trace of the minibatch gradient covariance (per geometry).</summary>
    public const string GradientNoise = "gradient.noise";

    /// <summary>
    /// Gradient noise scale <c>B_noise = tr(Sigma) / |m|^2</c> in examples (McCandlish et al. 2018): the per-example noise
    /// over the squared expected gradient, a form that does not depend on the trainer's batch size (per geometry).
    /// </summary>
    public const string NoiseScale = "gradient.noise_scale";

    /// <summary>Per-example gradient noise <c>tr(Sigma)</c>, the trace of one example's gradient covariance; does not depend on the batch size (per geometry).</summary>
    public const string ExampleNoise = "gradient.noise_per_example";

    /// <summary>
    /// Per-example signal-to-noise ratio <c>|m|^2 / tr(Sigma)</c>, the inverse of the noise scale: linear in the estimate of
    /// |m|^2, so its standard error stays meaningful where the noise scale's does not (per geometry).
    /// </summary>
    public const string ExampleSnr = "gradient.snr_per_example";

    /// <summary>m-coherence, <c>K ||gbar||^2 / mean ||g_i||^2</c>, in [0, K] (per geometry).</summary>
    public const string Coherence = "gradient.coherence";

    /// <summary>Gradient disparity, mean pairwise distance <c>||g_i - g_j||</c> (per geometry).</summary>
    public const string Disparity = "gradient.disparity";

    /// <summary>Norm test statistic: relative error of the mean gradient (per geometry).</summary>
    public const string NormTest = "test.norm";

    /// <summary>Inner-product test statistic (per geometry).</summary>
    public const string InnerProductTest = "test.inner_product";

    /// <summary>Orthogonality test statistic (per geometry).</summary>
    public const string OrthogonalityTest = "test.orthogonality";

    /// <summary>Mean gradient signal-to-noise ratio over coordinates (geometry free).</summary>
    public const string Gsnr = "gradient.gsnr";

    /// <summary>Early-stopping EB criterion, <c>-K gsnr</c> with the GSNR corrected for finite K: 0 on pure noise, positive when the gradient is indistinguishable from noise (geometry free).</summary>
    public const string EbCriterion = "eb_criterion";

    /// <summary>Relative parameter drift over the window, <c>||theta_last - theta_first|| / ||theta_first||</c>.</summary>
    public const string ParameterDrift = "parameter.drift";

    /// <summary>Mean training loss over the window's captured steps (when the loss is passed to the step call).</summary>
    public const string Loss = "training.loss";

    /// <summary>Learning rate of the first parameter group (when an optimizer is attached).</summary>
    public const string LearningRate = "training.learning_rate";

    /// <summary>
    /// Probe overhead: seconds the probes spent since the previous window divided by the seconds the training loop
    /// spent without them over the same steps (0.05 means training runs 5% slower because of the probes).
    /// </summary>
    public const string ProbeOverhead = "probe.overhead";

    /// <summary>
    /// Achieved probe overhead since the session started: all probe seconds over all training seconds without probes
    /// (the first window, which pays one-time costs such as JIT compilation, left out).
    /// </summary>
    public const string ProbeOverheadTotal = "probe.overhead_total";

    /// <summary>Steps from this window's start to the next one's (adapted to <see cref="ProbeOptions.OverheadBudget"/> when set).</summary>
    public const string ProbeInterval = "probe.interval";

    /// <summary>Histogram instrument: seconds each probe spent on a window (not a snapshot value; see <see cref="ProbeSnapshot.ProbeSeconds"/>).</summary>
    public const string ProbeDuration = "probe.duration";

    /// <summary>Counter instrument: probe callbacks that threw.</summary>
    public const string ProbeFailures = "probe.failures";

    /// <summary>Counter instrument: windows closed.</summary>
    public const string Windows = "probe.windows";

    /// <summary>Counter instrument: stopping rules that fired, with attributes <c>rule</c> and <c>action</c>.</summary>
    public const string RulesFired = "stopping.fired";

    /// <summary>Gauge instrument: steps seen by the session.</summary>
    public const string Step = "training.step";

    /// <summary>Finite-radius regret per unit radius at one theta, <c>mean R_ij / eps</c> (fixed-point probe, per geometry).</summary>
    public const string FiniteRegret = "regret.finite";

    /// <summary>eps-sharpness of the pooled loss, <c>fbar(theta + eps ubar) - fbar(theta)</c> (fixed-point probe, per geometry).</summary>
    public const string Sharpness = "sharpness";

    /// <summary>Contrastive flatness at radius eps, <c>mean_i s_i / s</c> (fixed-point probe, per geometry).</summary>
    public const string FiniteContrastiveFlatness = "flatness.contrastive_eps";

    /// <summary>The radius eps used (fixed-point probe, per geometry).</summary>
    public const string Radius = "radius";

    /// <summary>Largest algebraic Hessian eigenvalue of the pooled loss (euclidean), or of <c>D H D</c> (fisher, adaptive).</summary>
    public const string CurvatureLambdaMax = "curvature.lambda_max";

    /// <summary>Hessian eigenvalue of largest magnitude of the pooled loss (euclidean).</summary>
    public const string CurvatureLambdaMaxMagnitude = "curvature.lambda_max_magnitude";

    /// <summary>Contrastive curvature, <c>mean_i lambda_max(H_i) / lambda_max(Hbar)</c>, at least 1 (euclidean).</summary>
    public const string CurvatureContrastive = "curvature.contrastive";

    /// <summary>Hutchinson estimate of the Hessian trace of the pooled loss (euclidean).</summary>
    public const string CurvatureTrace = "curvature.trace";

    /// <summary>Power iterations the published <see cref="CurvatureLambdaMax"/> (euclidean) took (warm-started from the previous window's eigenvector).</summary>
    public const string CurvatureIterations = "curvature.lambda_max.iterations";

    /// <summary>1 when that power iteration met its tolerance, 0 when it stopped at the iteration limit (then it is logged).</summary>
    public const string CurvatureConverged = "curvature.lambda_max.converged";

    /// <summary>Relative residual <c>||H v - lambda v|| / |lambda|</c> of that eigenvalue.</summary>
    public const string CurvatureResidual = "curvature.lambda_max.residual";

    /// <summary>1 when the Hutchinson estimate of <see cref="CurvatureTrace"/> met its tolerance, 0 when it stopped at its sample limit (then it is logged).</summary>
    public const string CurvatureTraceConverged = "curvature.trace.converged";

    /// <summary>Half-width of the 95% confidence interval of <see cref="CurvatureTrace"/>.</summary>
    public const string CurvatureTraceHalfWidth = "curvature.trace_half_width";

    /// <summary>
    /// Suffix of a value's standard error: <c>gradient.cosine.stderr</c> is the jackknife standard error, over the K
    /// minibatches of the window, of <c>gradient.cosine</c>. An approximate 95% interval is the value +- 1.96 stderr.
    /// </summary>
    public const string StandardErrorSuffix = ".stderr";

    /// <summary>
    /// Suffix of a value's mean over the last <see cref="ProbeOptions.SmoothingWindows"/> windows:
    /// <c>gradient.cosine.smoothed</c>, with its standard error <c>gradient.cosine.smoothed.stderr</c>.
    /// </summary>
    public const string SmoothedSuffix = ".smoothed";

    /// <summary>
    /// Suffix of a value's between-window spread: the successive-difference estimate of how far one window's value
    /// scatters around the run's level over the smoothing windows (<c>gradient.cosine.spread</c>). Unlike the window's
    /// standard error it includes how the run moves from window to window; <c>value +- 1.96 spread</c> is the run-level interval.
    /// </summary>
    public const string SpreadSuffix = ".spread";
}

namespace TrainingProbes;

/// <summary>
/// How the K x P buffers keep their K gradients (<see cref="ProbeOptions.Storage"/>). The default window needs none when
/// its layers can be tapped (one pass: 12 bytes per watched parameter, theta and the Fisher average). A buffer exists for
/// the step family (<see cref="ProbeOptions.StepStatistics"/>) and for windows that take K micro-batch passes (layers
/// the taps do not know): K b bytes per parameter, b the bytes of a stored value, so a session with passes adds
/// 4 K + 12 bytes per parameter in <see cref="Full"/> and 2 K + 12 in <see cref="BFloat16"/>; in <see cref="Sketch"/>,
/// 4 bytes per parameter plus K x d x 4 bytes per window, geometry and segment and about 5 MiB of hash tables
/// (docs/REFERENCE.md, Memory; measured by tests/TrainingProbes.Benchmarks, <c>memory</c>).
/// </summary>
public enum WindowStorage
{
    /// <summary>Every gradient in the parameters' dtype: every indicator, exactly (the default).</summary>
    Full,

    /// <summary>
    /// Every gradient rounded to bfloat16 (8 significant bits): every indicator, from gradients with a relative rounding
    /// error of at most 0.2% each. Parameters and the whitening state stay in their own precision. The GSNR is the value
    /// most sensitive to it: a coordinate whose spread over the K minibatches is within bfloat16's rounding of its mean
    /// counts as constant (it contributes 0), where full storage would resolve it.
    /// </summary>
    BFloat16,

    /// <summary>
    /// Each gradient compressed on its device to d = <see cref="ProbeOptions.SketchDimension"/> numbers by a CountSketch,
    /// in its geometry's whitening: the Gram-matrix indicators (norms, cosine, regret, flatness, noise, coherence, the
    /// tests) and the parameter drift are estimated, unbiased, from K x d numbers. Unavailable: per-coordinate values
    /// (GSNR and the EB criterion), per-layer values, the fisher geometry (its per-coordinate average of squared
    /// gradients is what the mode saves), and the raw gradients (<see cref="ProbeWindowContext.Gradients"/>); the session
    /// refuses stopping rules on them when it is created. The adaptive geometry's D is applied when each gradient is
    /// sketched, at that step's theta: for the step-to-step values (<c>step.*</c>) that is each step's own theta, not the
    /// window's last one as in full storage, which changes their adaptive values when theta moves much within a window.
    /// The hash is fixed, so a window's sketch error recurs in the next windows: the published standard errors and
    /// smoothed means do not include it (its size is given on <see cref="ProbeOptions.SketchDimension"/>).
    /// </summary>
    Sketch,
}

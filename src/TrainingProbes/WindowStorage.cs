namespace TrainingProbes;

/// <summary>
/// How a window keeps its K gradients (<see cref="ProbeOptions.Storage"/>). Memory a session with the built-in probes
/// adds per watched float32 parameter at K = 16 and the default geometries, measured (tests/TrainingProbes.Benchmarks,
/// <c>memory</c>): 2 K b + 48 bytes, b the bytes of a stored value, so 176 in <see cref="Full"/> (measured 177.5: two
/// buffers of K gradients, four float32 copies of theta, and per family a float64 Fisher average and floor) and 112 in
/// <see cref="BFloat16"/> (measured 117.7), and in <see cref="Sketch"/> 4 bytes (the copy
/// of theta for the one-theta evaluations) plus, in all, K x d x 4 bytes per window, geometry and segment and about
/// 5 MiB of hash tables per window and segment.
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

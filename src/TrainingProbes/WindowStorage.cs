namespace TrainingProbes;

/// <summary>
/// How a window keeps its K gradients (<see cref="ProbeOptions.Storage"/>). Memory per watched parameter, besides
/// the model's own: about (2K + 3) x 4 bytes in <see cref="Full"/> float32, about half in <see cref="BFloat16"/>,
/// and 4 bytes in <see cref="Sketch"/> (one copy of theta for the one-theta evaluation) plus
/// 2 x geometries x K x d x 4 bytes in all.
/// </summary>
public enum WindowStorage
{
    /// <summary>Every gradient in the parameters' dtype: every indicator, exactly (the default).</summary>
    Full,

    /// <summary>
    /// Every gradient rounded to bfloat16 (8 significant bits): every indicator, from gradients with a relative rounding
    /// error of about 0.4% each. Parameters and the whitening state stay in their own precision.
    /// </summary>
    BFloat16,

    /// <summary>
    /// Each gradient compressed on its device to d = <see cref="ProbeOptions.SketchDimension"/> numbers by a CountSketch,
    /// in its geometry's whitening: the Gram-matrix indicators (norms, cosine, regret, flatness, noise, coherence, the
    /// tests) and the parameter drift are estimated, unbiased, from K x d numbers. Unavailable: per-coordinate values
    /// (GSNR and the EB criterion), per-layer values, the fisher geometry (its per-coordinate average of squared
    /// gradients is what the mode saves), and the raw gradients (<see cref="ProbeWindowContext.Gradients"/>).
    /// </summary>
    Sketch,
}

namespace TrainingProbes;

/// <summary>
/// The inner product in which gradients are compared. Gradients are whitened per coordinate,
/// <c>h = D g</c>, before their Gram matrix is taken.
/// </summary>
[Flags]
public enum Geometry
{
    /// <summary>No geometry: the value does not depend on one (loss, drift, GSNR).</summary>
    None = 0,

    /// <summary>Plain euclidean inner product, <c>D = I</c>. Not invariant to reparametrization.</summary>
    Euclidean = 1,

    /// <summary>
    /// Diagonal empirical Fisher, <c>D = 1/sqrt(F)</c> with <c>F</c> a running average of squared gradients.
    /// Invariant to per-coordinate rescaling of the parameters; coordinates with <c>F = 0</c> are left out.
    /// </summary>
    Fisher = 2,

    /// <summary>
    /// Adaptive (ASAM) geometry, <c>D = |theta| + eta</c>. Invariant to per-coordinate rescaling when <c>eta = 0</c>.
    /// </summary>
    Adaptive = 4,

    /// <summary>All three geometries.</summary>
    All = Euclidean | Fisher | Adaptive,
}

internal static class GeometryNames
{
    public static string ToName(this Geometry geometry) => geometry switch
    {
        Geometry.None => "none",
        Geometry.Euclidean => "euclidean",
        Geometry.Fisher => "fisher",
        Geometry.Adaptive => "adaptive",
        _ => geometry.ToString().ToLowerInvariant(),
    };
}

using TrainingProbes.Stopping;

namespace TrainingProbes;

/// <summary>
/// One indicator of the <see cref="IndicatorCatalogue"/>: its name, unit, meaning, which direction is better for early
/// stopping, whether it is published per geometry and per layer, and, for the first-order family, how it is computed
/// from a window's Gram matrix. The snapshot, the meter's instruments, the stopping rules' direction and the
/// instrument tables of docs/REFERENCE.md all read the definition.
/// </summary>
/// <param name="Name">Dotted snake_case name, for example <c>gradient.cosine</c>.</param>
/// <param name="Unit">UCUM unit of its instrument: <c>1</c> for a dimensionless value, <c>{step}</c> for a count of steps.</param>
/// <param name="Description">What it measures (the instrument's description).</param>
/// <param name="Better">Which direction is better for early stopping: <see cref="StoppingMode.Min"/>, <see cref="StoppingMode.Max"/>,
/// or <see cref="StoppingMode.Auto"/> when neither is (a rule on it must say its direction).</param>
/// <param name="PerGeometry">Published once per enabled <see cref="Geometry"/>.</param>
/// <param name="PerLayer">Also published per watched parameter when <see cref="ProbeOptions.LayerMetrics"/> is set.</param>
/// <param name="FromGram">For first-order indicators: the value from a window's Gram summary. Every session computes it, with its
/// jackknife standard error and smoothed mean, in each geometry, for the one-theta and the step families. Null for an
/// indicator a probe computes.</param>
public sealed record IndicatorDefinition(
    string Name,
    string Unit,
    string Description,
    StoppingMode Better = StoppingMode.Auto,
    bool PerGeometry = false,
    bool PerLayer = false,
    Func<GramSummary, double>? FromGram = null)
{
    /// <summary>
    /// False for the instruments that are not snapshot values (the probe-duration histogram, the failure, window and
    /// firing counters, the step gauge).
    /// </summary>
    public bool IsSnapshotValue { get; init; } = true;

    /// <summary>
    /// True for an indicator computed from per-coordinate sums over the window (GSNR, EB): a window kept as sketches
    /// (<see cref="WindowStorage.Sketch"/>) cannot give it, and a rule on it is refused there.
    /// </summary>
    public bool PerCoordinate { get; init; }
}

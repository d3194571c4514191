namespace TrainingProbes;

/// <summary>One published value: an indicator, the geometry it was computed in, and the probe that reported it.</summary>
/// <param name="Name">Dotted snake_case name, for example <see cref="Indicators.Cosine"/>.</param>
/// <param name="Geometry">The geometry, or <see cref="Geometry.None"/> for geometry-free values.</param>
/// <param name="Probe">Name of the probe that reported the value.</param>
/// <param name="Value">The value; NaN when it is undefined for the window (for example a cosine of zero gradients).</param>
/// <param name="Layer">The parameter a per-layer value belongs to (<see cref="ProbeOptions.LayerMetrics"/>), or null for the whole model.</param>
public readonly record struct IndicatorValue(string Name, Geometry Geometry, string Probe, double Value, string? Layer = null);

/// <summary>
/// The immutable result of one window: plain numbers, safe to read from any thread
/// (metrics exporters, UIs, stopping rules) without touching a tensor.
/// </summary>
public sealed class ProbeSnapshot
{
    private readonly Dictionary<(string, Geometry, string), double> _lookup;

    internal ProbeSnapshot(string runId, long step, int window, DateTimeOffset timestamp, IReadOnlyList<IndicatorValue> values,
        IReadOnlyDictionary<string, double>? probeSeconds = null, IReadOnlyList<ProbeFailure>? failures = null)
    {
        Failures = failures ?? [];
        ProbeSeconds = probeSeconds ?? new Dictionary<string, double>();
        RunId = runId;
        Step = step;
        Window = window;
        Timestamp = timestamp;
        Values = values;
        _lookup = new Dictionary<(string, Geometry, string), double>(values.Count);
        foreach (var v in values) _lookup[(v.Name, v.Geometry, v.Layer ?? "")] = v.Value;
    }

    /// <summary>The run the snapshot belongs to.</summary>
    public string RunId { get; }

    /// <summary>Number of steps the session had seen when the window closed.</summary>
    public long Step { get; }

    /// <summary>Zero-based index of the window.</summary>
    public int Window { get; }

    /// <summary>When the window's values were published.</summary>
    public DateTimeOffset Timestamp { get; }

    /// <summary>
    /// Seconds each probe spent on this window (its step and window callbacks), plus <c>capture</c> (copying the
    /// gradients) and <c>transfer</c> (the window's one device-to-host read). On an asynchronous device such as a
    /// GPU, the kernels the probes queue are waited for in <c>transfer</c>, so that is where their cost shows.
    /// </summary>
    public IReadOnlyDictionary<string, double> ProbeSeconds { get; }

    /// <summary>
    /// What failed since the previous snapshot (a probe, the capture, a checkpoint write), each also logged and counted;
    /// empty when nothing did. A value a failed probe would have computed is absent from <see cref="Values"/>, never
    /// carried over from an earlier window.
    /// </summary>
    public IReadOnlyList<ProbeFailure> Failures { get; }

    /// <summary>All values of the window.</summary>
    public IReadOnlyList<IndicatorValue> Values { get; }

    /// <summary>Looks a value up by name and geometry.</summary>
    /// <param name="name">Indicator name, for example <see cref="Indicators.Cosine"/>.</param>
    /// <param name="geometry">Its geometry (<see cref="Geometry.None"/> for geometry-free values).</param>
    /// <param name="value">The value when found.</param>
    /// <param name="layer">The parameter name of a per-layer value, or null for the whole model.</param>
    /// <returns>Whether the window has that value.</returns>
    public bool TryGetValue(string name, Geometry geometry, out double value, string? layer = null) =>
        _lookup.TryGetValue((name, geometry, layer ?? ""), out value);

    /// <summary>Gets a value by name and geometry.</summary>
    /// <param name="name">Indicator name, for example <see cref="Indicators.Cosine"/>.</param>
    /// <param name="geometry">Its geometry (<see cref="Geometry.None"/> for geometry-free values).</param>
    /// <param name="layer">The parameter name of a per-layer value, or null for the whole model.</param>
    /// <exception cref="KeyNotFoundException">The window has no such value.</exception>
    public double Get(string name, Geometry geometry = Geometry.None, string? layer = null) =>
        _lookup.TryGetValue((name, geometry, layer ?? ""), out double value)
            ? value
            : throw new KeyNotFoundException(
                $"The window has no value '{name}' in geometry {geometry}{(layer is null ? "" : $" for layer '{layer}'")}. It has: {string.Join(", ", Values.Select(v => v.Geometry == Geometry.None ? v.Name : $"{v.Name}[{v.Geometry.ToName()}]").Distinct())}.");

    /// <inheritdoc />
    public override string ToString() => $"window {Window} at step {Step}: {Values.Count} values";
}

namespace TrainingProbes;

/// <summary>Options of the metrics that <c>AddTrainingProbes</c> adds to an OpenTelemetry MeterProvider.</summary>
public sealed class TrainingProbesMetricsOptions
{
    /// <summary>
    /// Whether per-layer values (<see cref="ProbeOptions.LayerMetrics"/>, attribute <c>layer</c>) are exported
    /// (default true). Turn off to keep the series count down when many layers are watched; the snapshot still has them.
    /// </summary>
    public bool IncludeLayerValues { get; set; } = true;
}

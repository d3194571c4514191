namespace TrainingProbes.Telemetry;

/// <summary>
/// What <c>AddTrainingProbes</c> registers with a MeterProvider through <c>AddInstrumentation</c>, as
/// <c>AddRuntimeInstrumentation</c> does: it carries the options and lives as long as the provider. Disposing the
/// provider disposes it.
/// </summary>
internal sealed class TrainingProbesInstrumentation : IDisposable
{
    private static readonly object Gate = new();
    private static List<TrainingProbesInstrumentation> _active = [];
    private readonly TrainingProbesMetricsOptions _options;

    public TrainingProbesInstrumentation(TrainingProbesMetricsOptions options)
    {
        _options = options;
        lock (Gate) _active = [.. _active, this];
    }

    /// <summary>
    /// Whether per-layer values are exported: yes unless every registered instrumentation leaves them out (with none
    /// registered, a provider that added the meter by name gets everything).
    /// </summary>
    public static bool LayerValuesExported
    {
        get
        {
            var active = Volatile.Read(ref _active);
            return active.Count == 0 || active.Exists(i => i._options.IncludeLayerValues);
        }
    }

    public void Dispose()
    {
        lock (Gate) _active = _active.Where(i => !ReferenceEquals(i, this)).ToList();
    }
}

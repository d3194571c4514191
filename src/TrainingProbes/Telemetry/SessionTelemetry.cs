using System.Diagnostics.Metrics;
using TrainingProbes.Session;
using TrainingProbes.Stopping;

namespace TrainingProbes.Telemetry;

/// <summary>
/// One session's side of the metrics: its attributes, the counters it adds to, and what its gauges read. It subscribes
/// to the session's failures, publisher and stopping rules. It holds the published values, never the session or its
/// model, and <see cref="ProbeMetrics"/> holds it weakly.
/// </summary>
internal sealed class SessionTelemetry
{
    private readonly SnapshotPublisher _publisher;
    private readonly WindowScheduler _scheduler;

    public SessionTelemetry(string runId, string? worker, SnapshotPublisher publisher, WindowScheduler scheduler, ProbeFailures failures, StoppingController stopping)
    {
        _publisher = publisher;
        _scheduler = scheduler;
        SessionAttributes = worker is null
            ? [new(TrainingProbesMeter.RunIdAttribute, runId)]
            : [new(TrainingProbesMeter.RunIdAttribute, runId), new(TrainingProbesMeter.WorkerAttribute, worker)];

        _rules = stopping.Rules;
        failures.Failed += (what, reason) => ProbeMetrics.Failures.Add(1,
            [.. SessionAttributes, new(TrainingProbesMeter.ProbeAttribute, what), new(TrainingProbesMeter.ReasonAttribute, reason)]);
        stopping.Fired += (rule, _, _, _) => ProbeMetrics.RulesFired.Add(1, RuleAttributes(rule));
        publisher.Subscribe("telemetry", OnWindow);
        ProbeMetrics.Register(this);
    }

    private readonly IReadOnlyList<StoppingRule> _rules;

    /// <summary>
    /// Makes the failure and firing series exist at 0 before the first failure or firing. Called once the probes and
    /// the session's resources have started, so that a MeterProvider started with the session (the Prometheus
    /// endpoint of TRAININGPROBES_PROMETHEUS, or a probe's) sees it.
    /// </summary>
    public void Announce()
    {
        ProbeMetrics.Failures.Add(0, SessionAttributes);
        foreach (var rule in _rules) ProbeMetrics.RulesFired.Add(0, RuleAttributes(rule));
    }

    /// <summary>The attributes every metric of this session carries: run id, and worker when set.</summary>
    public KeyValuePair<string, object?>[] SessionAttributes { get; }

    /// <summary>The last value of every series (what the gauges report).</summary>
    public IReadOnlyList<IndicatorValue> CurrentValues => _publisher.Current;

    /// <summary>
    /// The measurements of <paramref name="name"/>'s gauge: one per series the registered instrumentation exports, with
    /// its attributes. They are built once per change of the current values (a window, a reported value), on the first
    /// collection after it, and shared by every collection until the next change: a collection between two windows
    /// allocates nothing here. Called on the exporters' threads.
    /// </summary>
    public Measurement<double>[] MeasurementsOf(string name)
    {
        var current = _publisher.Current;
        bool layers = TrainingProbesInstrumentation.LayerValuesExported;
        var table = Volatile.Read(ref _measurements);
        if (table is null || !ReferenceEquals(table.Source, current) || table.Layers != layers) table = Build(current, layers);
        return table.ByName.TryGetValue(name, out var measurements) ? measurements : [];
    }

    /// <summary>
    /// The table for <paramref name="current"/>. What it allocates is what a window changed: the arrays of the table, and
    /// a measurement (its copy of the attributes) per series whose value changed; a series' attributes are made once.
    /// </summary>
    private MeasurementTable Build(IReadOnlyList<IndicatorValue> current, bool layers)
    {
        lock (_tableGate)
        {
            var table = _measurements;
            if (table is not null && ReferenceEquals(table.Source, current) && table.Layers == layers) return table;   // another exporter's

            var counts = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var value in current)
                if (value.Layer is null || layers) counts[value.Name] = counts.GetValueOrDefault(value.Name) + 1;
            var byName = new Dictionary<string, Measurement<double>[]>(counts.Count, StringComparer.Ordinal);
            foreach (var (name, count) in counts) byName[name] = new Measurement<double>[count];
            foreach (var value in current)
            {
                if (value.Layer is not null && !layers) continue;
                var key = (value.Name, value.Probe, value.Geometry, value.Layer);
                if (!_lastMeasurement.TryGetValue(key, out var measurement) || BitConverter.DoubleToInt64Bits(measurement.Value) != BitConverter.DoubleToInt64Bits(value.Value))
                {
                    measurement = new Measurement<double>(value.Value, AttributesOf(value));
                    _lastMeasurement[key] = measurement;
                }

                int remaining = --counts[value.Name];
                var row = byName[value.Name];
                row[row.Length - 1 - remaining] = measurement;
            }

            table = new MeasurementTable(current, layers, byName);
            Volatile.Write(ref _measurements, table);
            return table;
        }
    }

    private readonly object _tableGate = new();
    private MeasurementTable? _measurements;
    private readonly Dictionary<(string Name, string Probe, Geometry Geometry, string? Layer), Measurement<double>> _lastMeasurement = [];
    private readonly Dictionary<(string Probe, Geometry Geometry, string? Layer), KeyValuePair<string, object?>[]> _attributes = [];

    /// <summary>The gauges' measurements, by instrument name, for one array of current values.</summary>
    private sealed record MeasurementTable(IReadOnlyList<IndicatorValue> Source, bool Layers, Dictionary<string, Measurement<double>[]> ByName);

    /// <summary>The attributes of a series (made once per probe, geometry and layer; under the table's lock).</summary>
    private KeyValuePair<string, object?>[] AttributesOf(in IndicatorValue value)
    {
        var key = (value.Probe, value.Geometry, value.Layer);
        if (!_attributes.TryGetValue(key, out var attributes)) _attributes[key] = attributes = Attributes(value);
        return attributes;
    }

    /// <summary>Steps the session has seen.</summary>
    public long Steps => _scheduler.Steps;

    /// <summary>A reported value's gauge (a user's validation loss, say) exists from its first report.</summary>
    public static void OnReported(string name) => ProbeMetrics.EnsureInstrument(name);

    /// <summary>The attributes of one published value.</summary>
    private KeyValuePair<string, object?>[] Attributes(in IndicatorValue value)
    {
        var attributes = new List<KeyValuePair<string, object?>>(SessionAttributes.Length + 3);
        attributes.AddRange(SessionAttributes);
        attributes.Add(new(TrainingProbesMeter.ProbeAttribute, value.Probe));
        if (value.Geometry != Geometry.None) attributes.Add(new(TrainingProbesMeter.GeometryAttribute, value.Geometry.ToName()));
        if (value.Layer is not null) attributes.Add(new(TrainingProbesMeter.LayerAttribute, value.Layer));
        return attributes.ToArray();
    }

    /// <summary>Stops reporting this session.</summary>
    public void Unregister() => ProbeMetrics.Unregister(this);

    private void OnWindow(ProbeSnapshot snapshot)
    {
        ProbeMetrics.EnsureInstruments(snapshot);
        ProbeMetrics.Windows.Add(1, SessionAttributes);
        foreach (var (probe, seconds) in snapshot.ProbeSeconds)
            ProbeMetrics.ProbeDuration.Record(seconds, [.. SessionAttributes, new(TrainingProbesMeter.ProbeAttribute, probe)]);
    }

    private KeyValuePair<string, object?>[] RuleAttributes(StoppingRule rule) =>
        [.. SessionAttributes, new("rule", rule.Name), new("action", rule.Action.ToString().ToLowerInvariant())];
}

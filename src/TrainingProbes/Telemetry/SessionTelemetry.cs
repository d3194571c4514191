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
        stopping.Fired += (rule, _, _) => ProbeMetrics.RulesFired.Add(1, RuleAttributes(rule));
        publisher.Subscribe("telemetry", OnWindow);
        ProbeMetrics.Register(this);
    }

    private readonly IReadOnlyList<StoppingRule> _rules;

    /// <summary>
    /// Makes the failure and firing series exist at 0 before the first failure or firing. Called once the probes have
    /// started, so that a MeterProvider a probe creates (the Prometheus endpoint's) sees it.
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
    /// collection after it, and shared by every collection until the next change: a scrape between two windows
    /// allocates nothing here. Called on the exporters' threads.
    /// </summary>
    public Measurement<double>[] MeasurementsOf(string name)
    {
        var current = _publisher.Current;
        bool layers = TrainingProbesInstrumentation.LayerValuesExported;
        var table = Volatile.Read(ref _measurements);
        if (table is null || !ReferenceEquals(table.Source, current) || table.Layers != layers)
        {
            table = new MeasurementTable(current, layers, current
                .Where(v => v.Layer is null || layers)
                .GroupBy(v => v.Name, StringComparer.Ordinal)
                .ToDictionary(g => g.Key, g => g.Select(v => new Measurement<double>(v.Value, Attributes(v))).ToArray(), StringComparer.Ordinal));
            Volatile.Write(ref _measurements, table);   // two exporters racing here build the same table; either one serves
        }

        return table.ByName.TryGetValue(name, out var measurements) ? measurements : [];
    }

    private MeasurementTable? _measurements;

    /// <summary>The gauges' measurements, by instrument name, for one array of current values.</summary>
    private sealed record MeasurementTable(IReadOnlyList<IndicatorValue> Source, bool Layers, Dictionary<string, Measurement<double>[]> ByName);

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

using System.Collections.Concurrent;
using System.Diagnostics.Metrics;

namespace TrainingProbes;

/// <summary>
/// The OpenTelemetry <see cref="Meter"/> through which sessions publish their values. Add
/// <see cref="Name"/> to a MeterProvider to export them.
/// </summary>
public static class TrainingProbesMeter
{
    /// <summary>Name of the meter (use it with <c>AddMeter</c>).</summary>
    public const string Name = "TrainingProbes";

    /// <summary>Prefix of every instrument name: <c>trainingprobes.</c> followed by an indicator name.</summary>
    public const string InstrumentPrefix = "trainingprobes.";

    /// <summary>Attribute naming the run.</summary>
    public const string RunIdAttribute = "run.id";

    /// <summary>Attribute naming the geometry (<c>euclidean</c>, <c>fisher</c>, <c>adaptive</c>); absent for geometry-free values.</summary>
    public const string GeometryAttribute = "geometry";

    /// <summary>Attribute naming the probe that computed the value.</summary>
    public const string ProbeAttribute = "probe";
}

/// <summary>
/// Per-session instruments: one observable gauge per indicator name, each reading the session's last
/// published snapshot. A collection (a scrape) only reads plain doubles: it never touches a tensor,
/// never waits for the training thread and never synchronizes with a device.
/// </summary>
internal sealed class SessionInstruments : IDisposable
{
    private readonly Meter _meter;
    private readonly Func<ProbeSnapshot?> _latest;
    private readonly string _runId;
    private readonly ConcurrentDictionary<string, ObservableGauge<double>> _gauges = new();

    public SessionInstruments(string runId, Func<ProbeSnapshot?> latest)
    {
        _runId = runId;
        _latest = latest;
        _meter = new Meter(TrainingProbesMeter.Name, typeof(TrainingProbesMeter).Assembly.GetName().Version?.ToString());
    }

    /// <summary>Creates the gauges for names seen for the first time (on the training thread, once per name).</summary>
    public void Register(ProbeSnapshot snapshot)
    {
        foreach (var value in snapshot.Values)
        {
            if (_gauges.ContainsKey(value.Name)) continue;
            string name = value.Name;
            _gauges[name] = _meter.CreateObservableGauge(
                TrainingProbesMeter.InstrumentPrefix + name,
                () => Observe(name),
                unit: name == Indicators.ProbeDuration ? "s" : "1",
                description: $"TrainingProbes indicator {name}, last closed window.");
        }
    }

    private IEnumerable<Measurement<double>> Observe(string name)
    {
        var snapshot = _latest();
        if (snapshot is null) yield break;
        foreach (var value in snapshot.Values)
        {
            if (value.Name != name) continue;
            yield return value.Geometry == Geometry.None
                ? new Measurement<double>(value.Value,
                    new KeyValuePair<string, object?>(TrainingProbesMeter.RunIdAttribute, _runId),
                    new KeyValuePair<string, object?>(TrainingProbesMeter.ProbeAttribute, value.Probe))
                : new Measurement<double>(value.Value,
                    new KeyValuePair<string, object?>(TrainingProbesMeter.RunIdAttribute, _runId),
                    new KeyValuePair<string, object?>(TrainingProbesMeter.GeometryAttribute, value.Geometry.ToName()),
                    new KeyValuePair<string, object?>(TrainingProbesMeter.ProbeAttribute, value.Probe));
        }
    }

    public void Dispose() => _meter.Dispose();
}

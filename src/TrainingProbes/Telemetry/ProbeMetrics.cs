using System.Collections.Concurrent;
using System.Diagnostics.Metrics;

namespace TrainingProbes.Telemetry;

/// <summary>
/// The library's one <see cref="Meter"/> and its instruments, as OpenTelemetry's runtime instrumentation keeps one
/// meter per process. Indicator values are observable gauges whose callbacks read the last published value of each
/// series of every live session: a collection (a Prometheus scrape, an OTLP export) reads plain doubles, never touches
/// a tensor, never waits for the training thread and never synchronizes with a device. The gauges of the catalogue's
/// indicators exist from the start with their units; a name a user probe reports gets its gauge when first published.
/// Sessions are held weakly: a session its user drops (and its model, and its buffers) can be collected.
/// </summary>
internal static class ProbeMetrics
{
    private static readonly Meter Meter = new(TrainingProbesMeter.Name, typeof(ProbeMetrics).Assembly.GetName().Version?.ToString(3));
    private static readonly ConcurrentDictionary<string, ObservableGauge<double>> Gauges = new();
    private static readonly object Gate = new();
    private static WeakReference<SessionTelemetry>[] _sessions = [];

    /// <summary>Seconds each probe spent on a window, recorded once per probe and window.</summary>
    public static readonly Histogram<double> ProbeDuration = Meter.CreateHistogram<double>(
        TrainingProbesMeter.InstrumentPrefix + Indicators.ProbeDuration, unit: "s",
        description: "Seconds a probe spent on one window (its step callbacks and its window callback); probe=capture is the gradient copy, probe=transfer the one device-to-host read.",
        tags: null, advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3, 10] });

    /// <summary>Probe callbacks that threw (each is logged; training goes on).</summary>
    public static readonly Counter<long> Failures = Meter.CreateCounter<long>(
        TrainingProbesMeter.InstrumentPrefix + Indicators.ProbeFailures, unit: "{failure}",
        description: "Probe callbacks that threw; each is logged and training goes on.");

    /// <summary>Windows closed.</summary>
    public static readonly Counter<long> Windows = Meter.CreateCounter<long>(
        TrainingProbesMeter.InstrumentPrefix + Indicators.Windows, unit: "{window}",
        description: "Windows of captured gradients closed and published.");

    /// <summary>Stopping rules that fired (stop or warn).</summary>
    public static readonly Counter<long> RulesFired = Meter.CreateCounter<long>(
        TrainingProbesMeter.InstrumentPrefix + Indicators.RulesFired, unit: "{firing}",
        description: "Stopping rules that fired, by rule and action (stop or warn).");

    static ProbeMetrics()
    {
        Meter.CreateObservableGauge(TrainingProbesMeter.InstrumentPrefix + Indicators.Step, ObserveSteps, unit: "{step}",
            description: "Training steps the session has seen (calls of Probe/Step).");
        foreach (var definition in IndicatorCatalogue.BuiltIn)
            if (definition.IsSnapshotValue) EnsureInstrument(definition.Name);
    }

    /// <summary>Adds a session (weakly) to the ones the gauges report.</summary>
    public static void Register(SessionTelemetry session)
    {
        lock (Gate)
            _sessions = [.. _sessions.Where(w => w.TryGetTarget(out _)), new WeakReference<SessionTelemetry>(session)];
    }

    /// <summary>Removes a session from the ones the gauges report.</summary>
    public static void Unregister(SessionTelemetry session)
    {
        lock (Gate)
            _sessions = _sessions.Where(w => w.TryGetTarget(out var s) && !ReferenceEquals(s, session)).ToArray();
    }

    /// <summary>Creates the gauges of names published for the first time (once per name and process).</summary>
    public static void EnsureInstruments(ProbeSnapshot snapshot)
    {
        foreach (var value in snapshot.Values) EnsureInstrument(value.Name);
    }

    /// <summary>Creates the gauge of <paramref name="name"/>, with the catalogue's unit and description, if it does not exist yet.</summary>
    public static void EnsureInstrument(string name)
    {
        if (Gauges.ContainsKey(name)) return;
        lock (Gate)
        {
            if (Gauges.ContainsKey(name)) return;
            Gauges[name] = Meter.CreateObservableGauge(
                TrainingProbesMeter.InstrumentPrefix + name, () => Observe(name),
                unit: IndicatorCatalogue.UnitOf(name), description: IndicatorCatalogue.DescriptionOf(name));
        }
    }

    /// <summary>The gauge's measurements in every live session: one session's own array when only one has any (no copy).</summary>
    private static IEnumerable<Measurement<double>> Observe(string name)
    {
        Measurement<double>[]? only = null;
        List<Measurement<double>>? several = null;
        foreach (var reference in Volatile.Read(ref _sessions))
        {
            if (!reference.TryGetTarget(out var session)) continue;
            var measurements = session.MeasurementsOf(name);
            if (measurements.Length == 0) continue;
            if (only is null && several is null)
            {
                only = measurements;
                continue;
            }

            several ??= [.. only!];
            several.AddRange(measurements);
        }

        return several ?? (IEnumerable<Measurement<double>>?)only ?? [];
    }

    private static IEnumerable<Measurement<long>> ObserveSteps()
    {
        foreach (var reference in Volatile.Read(ref _sessions))
            if (reference.TryGetTarget(out var session))
                yield return new Measurement<long>(session.Steps, session.SessionAttributes);
    }
}

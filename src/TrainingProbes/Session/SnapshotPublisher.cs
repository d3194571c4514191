namespace TrainingProbes.Session;

/// <summary>
/// Where a window's snapshot goes: the history (a ring of <see cref="ProbeOptions.HistoryCapacity"/>),
/// <see cref="Latest"/>, the current value of every series (what the gauges read), then each subscriber in the order
/// subscribed: the telemetry, the console line, the stopping rules, and the user's <see cref="ProbeSession.WindowClosed"/>.
/// A subscriber that throws is a counted failure and the others still run. Reading is safe from any thread.
/// </summary>
internal sealed class SnapshotPublisher(int capacity, ProbeFailures failures)
{
    private readonly ProbeSnapshot?[] _history = new ProbeSnapshot?[capacity];
    private readonly object _historyLock = new();
    private readonly List<(string Name, Action<ProbeSnapshot> Handler)> _subscribers = [];
    private int _count;
    private int _next;
    private ProbeSnapshot? _latest;
    private IndicatorValue[] _current = [];

    /// <summary>The last published snapshot, or null.</summary>
    public ProbeSnapshot? Latest => Volatile.Read(ref _latest);

    /// <summary>The last value of every series published so far, by name, geometry, layer and probe: what the gauges report.</summary>
    public IReadOnlyList<IndicatorValue> Current => Volatile.Read(ref _current);

    /// <summary>The history, oldest first (a copy).</summary>
    public IReadOnlyList<ProbeSnapshot> History
    {
        get
        {
            lock (_historyLock)
            {
                var result = new ProbeSnapshot[_count];
                int start = (_next - _count + _history.Length) % _history.Length;
                for (int i = 0; i < _count; i++) result[i] = _history[(start + i) % _history.Length]!;
                return result;
            }
        }
    }

    /// <summary>Adds a subscriber, called after the ones added before; <paramref name="name"/> names its failures.</summary>
    public void Subscribe(string name, Action<ProbeSnapshot> handler) => _subscribers.Add((name, handler));

    /// <summary>Publishes a window's snapshot.</summary>
    public void Publish(ProbeSnapshot snapshot)
    {
        lock (_historyLock)
        {
            _history[_next] = snapshot;
            _next = (_next + 1) % _history.Length;
            _count = Math.Min(_count + 1, _history.Length);
        }

        Volatile.Write(ref _latest, snapshot);
        // Values that are not computed at every window (a fixed-point window's) keep their last value for the gauges, unless
        // their probe failed in this window: then its series go, rather than show an old value as current. A failure of
        // the watched parameters (replaced after attach) or of the capture takes every probe's series.
        MergeIntoCurrent(snapshot.Values, snapshot.Failures.Select(f => f.Probe).ToHashSet());
        foreach (var (name, handler) in _subscribers)
            failures.Guard(name, static a => a.Handler(a.Snapshot), (Handler: handler, Snapshot: snapshot));
    }

    /// <summary>Replaces the last values of the given series (by name, geometry, layer and probe) for the gauges.</summary>
    public void MergeIntoCurrent(IReadOnlyList<IndicatorValue> values, IReadOnlySet<string>? failed = null)
    {
        bool all = failed is not null && (failed.Contains("parameters") || failed.Contains("capture"));
        var merged = new Dictionary<(string, Geometry, string?, string), IndicatorValue>(_current.Length + values.Count);
        foreach (var value in _current)
            if (value.Probe == "user" || failed is null || !all && !failed.Contains(value.Probe))
                merged[(value.Name, value.Geometry, value.Layer, value.Probe)] = value;
        foreach (var value in values) merged[(value.Name, value.Geometry, value.Layer, value.Probe)] = value;
        Volatile.Write(ref _current, merged.Values.ToArray());
    }
}

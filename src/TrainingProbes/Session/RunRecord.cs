using TrainingProbes.Stopping;

namespace TrainingProbes.Session;

/// <summary>
/// What the snapshots do not hold but an end-of-run report needs: the values the trainer reported (they reach the
/// gauges and the rules, not <see cref="ProbeSession.History"/>) and the rules that fired. Bounded: the oldest go first.
/// </summary>
internal sealed class RunRecord
{
    /// <summary>Most reported values (and most firings) kept; a report per epoch never comes near it.</summary>
    public const int Capacity = 100_000;

    private readonly Queue<ReportedValue> _reported = new();
    private readonly Queue<FiredRule> _fired = new();
    private readonly Lock _lock = new();

    public void Add(ReportedValue value)
    {
        lock (_lock)
        {
            if (_reported.Count == Capacity) _reported.Dequeue();
            _reported.Enqueue(value);
        }
    }

    public void Add(FiredRule rule)
    {
        lock (_lock)
        {
            if (_fired.Count == Capacity) _fired.Dequeue();
            _fired.Enqueue(rule);
        }
    }

    /// <summary>The reported values, oldest first (a copy).</summary>
    public IReadOnlyList<ReportedValue> Reported
    {
        get { lock (_lock) return _reported.ToArray(); }
    }

    /// <summary>The rules that fired, oldest first (a copy).</summary>
    public IReadOnlyList<FiredRule> Fired
    {
        get { lock (_lock) return _fired.ToArray(); }
    }
}

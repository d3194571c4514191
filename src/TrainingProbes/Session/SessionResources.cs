namespace TrainingProbes.Session;

/// <summary>
/// What a session holds while it lives besides its probes: the resources of <see cref="ProbeOptions.SessionResources"/>
/// (the process-wide Prometheus server that <c>TRAININGPROBES_PROMETHEUS</c> asks for), acquired in order as the
/// session starts and disposed last first as it ends. Not a probe: it sees no step or window and has no probe name.
/// An exception from an acquisition (a port in use) releases those acquired before it and fails the attach.
/// </summary>
internal sealed class SessionResources
{
    private readonly List<IDisposable> _held = [];

    /// <summary>Acquires every resource the session's options list, or none.</summary>
    public void Acquire(ProbeSession session)
    {
        try
        {
            foreach (var acquire in session.Options.SessionResources) _held.Add(acquire(session));
        }
        catch
        {
            foreach (var resource in Take()) resource.Dispose();
            throw;
        }
    }

    /// <summary>Disposes what was acquired (once), last first, each guarded: a failure is the session's, counted and logged.</summary>
    public void Release(ProbeFailures failures)
    {
        foreach (var resource in Take()) failures.Guard("session", static r => r.Dispose(), resource);
    }

    private IDisposable[] Take()
    {
        var held = _held.AsEnumerable().Reverse().ToArray();
        _held.Clear();
        return held;
    }
}

using Microsoft.Extensions.Logging;

namespace TrainingProbes.Session;

/// <summary>
/// Counts and logs what failed inside the session (a probe callback, the capture, the transfer, a subscriber of the
/// published snapshot): the first ten failures and then every hundredth are logged with their exception, each is
/// counted, and <see cref="Failed"/> tells the telemetry. Training goes on.
/// </summary>
internal sealed class ProbeFailures(ILogger logger, string runId, Func<long> step)
{
    private int _count;

    /// <summary>Failures so far.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Raised after each failure with the name of what failed.</summary>
    public event Action<string>? Failed;

    /// <summary>Records that <paramref name="what"/> threw <paramref name="exception"/>.</summary>
    public void Fail(string what, Exception exception)
    {
        int count = Interlocked.Increment(ref _count);
        if (count <= 10 || count % 100 == 0)
            logger.LogWarning(exception, "TrainingProbes run {RunId}: probe '{Probe}' failed at step {Step} (failure {Count}); training goes on.",
                runId, what, step(), count);
        Failed?.Invoke(what);
    }

    /// <summary>Runs <paramref name="action"/>, recording its exception as a failure of <paramref name="what"/>.</summary>
    public bool Guard<T>(string what, Action<T> action, T argument)
    {
        try
        {
            action(argument);
            return true;
        }
        catch (Exception ex)
        {
            Fail(what, ex);
            return false;
        }
    }
}

using Microsoft.Extensions.Logging;

namespace TrainingProbes.Session;

/// <summary>
/// Counts and logs what failed inside the session (a probe callback, the capture, a checkpoint write, a subscriber of
/// the published snapshot): the first ten failures and then every hundredth are logged with their exception, each is
/// counted, kept for the next snapshot's <see cref="ProbeSnapshot.Failures"/>, and <see cref="Failed"/> tells the
/// telemetry. Training goes on, unless <see cref="ProbeOptions.Strict"/> is set: then the failure is thrown as a
/// <see cref="ProbeFailureException"/>.
/// </summary>
internal sealed class ProbeFailures(ILogger logger, string runId, Func<long> step, bool strict = false)
{
    private readonly List<ProbeFailure> _pending = [];
    private int _count;

    /// <summary>Failures so far.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Whether a failure is thrown instead of logged.</summary>
    public bool Strict => strict;

    /// <summary>Raised after each failure with what failed and the reason (the <c>probe</c> and <c>reason</c> attributes of the counter).</summary>
    public event Action<string, string>? Failed;

    /// <summary>Records that <paramref name="what"/> threw <paramref name="exception"/>.</summary>
    /// <param name="what">The probe or the part of the session that failed.</param>
    /// <param name="exception">What it threw.</param>
    /// <param name="reason">A short snake_case reason for the counter's <c>reason</c> attribute; by default the exception's kind.</param>
    /// <exception cref="ProbeFailureException">In strict mode, always.</exception>
    public void Fail(string what, Exception exception, string? reason = null)
    {
        reason ??= ReasonOf(exception);
        int count = Interlocked.Increment(ref _count);
        lock (_pending) _pending.Add(new ProbeFailure(what, reason, exception.Message));
        if (strict)
        {
            Failed?.Invoke(what, reason);
            throw new ProbeFailureException(what, reason, exception);
        }

        if (count <= 10 || count % 100 == 0)
            logger.LogWarning(exception, "TrainingProbes run {RunId}: '{Probe}' failed at step {Step} ({Reason}, failure {Count}): {Message} Training goes on.",
                runId, what, step(), reason, count, exception.Message);
        Failed?.Invoke(what, reason);
    }

    /// <summary>Runs <paramref name="action"/>, recording its exception as a failure of <paramref name="what"/>.</summary>
    public bool Guard<T>(string what, Action<T> action, T argument)
    {
        try
        {
            action(argument);
            return true;
        }
        catch (Exception ex) when (ex is not ProbeFailureException)
        {
            Fail(what, ex);
            return false;
        }
    }

    /// <summary>The failures since the last call, for the snapshot being published.</summary>
    public ProbeFailure[] Take()
    {
        lock (_pending)
        {
            if (_pending.Count == 0) return [];
            var taken = _pending.ToArray();
            _pending.Clear();
            return taken;
        }
    }

    /// <summary>The exception's kind in snake_case without its Exception suffix, for example <c>invalid_operation</c>.</summary>
    internal static string ReasonOf(Exception exception)
    {
        string name = exception.GetType().Name;
        if (name.EndsWith("Exception", StringComparison.Ordinal)) name = name[..^"Exception".Length];
        return name.Length == 0 ? "exception" : System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(name);
    }
}

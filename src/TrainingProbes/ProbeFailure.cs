namespace TrainingProbes;

/// <summary>Something that failed inside the session during a window; training went on.</summary>
/// <param name="Probe">The probe, or the part of the session (<c>capture</c>, <c>checkpoint</c>, <c>stopping</c>), that failed.</param>
/// <param name="Reason">A short snake_case reason, as on the <c>trainingprobes.probe.failures</c> counter's <c>reason</c> attribute.</param>
/// <param name="Message">The message of the exception, which the session's logger also received.</param>
public readonly record struct ProbeFailure(string Probe, string Reason, string Message);

/// <summary>
/// A probe failure thrown because <see cref="ProbeOptions.Strict"/> is set (without it the failure is logged, counted
/// and listed in <see cref="ProbeSnapshot.Failures"/>, and training goes on).
/// </summary>
public sealed class ProbeFailureException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="probe">What failed.</param>
    /// <param name="reason">Why, in snake_case.</param>
    /// <param name="inner">The exception it threw.</param>
    public ProbeFailureException(string probe, string reason, Exception inner)
        : base($"TrainingProbes: '{probe}' failed ({reason}): {inner.Message} (ProbeOptions.Strict is set; without it the failure is logged and training goes on.)", inner)
    {
        Probe = probe;
        Reason = reason;
    }

    /// <summary>What failed.</summary>
    public string Probe { get; }

    /// <summary>Why, in snake_case.</summary>
    public string Reason { get; }
}

namespace TrainingProbes;

/// <summary>
/// Thrown by a probe's <see cref="TrainingProbe.OnSessionStart"/> when it cannot work as configured (for example a
/// metrics port already in use). Unlike other probe failures, which are logged while training goes on, it stops
/// <see cref="ProbeSession.Attach"/>, so that a misconfiguration is seen before training starts.
/// </summary>
public sealed class ProbeConfigurationException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What is wrong and which option fixes it.</param>
    /// <param name="innerException">The underlying error, if any.</param>
    public ProbeConfigurationException(string message, Exception? innerException = null) : base(message, innerException) { }
}

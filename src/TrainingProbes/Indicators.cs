namespace TrainingProbes;

/// <summary>
/// Names of the indicators the built-in probes publish. Each name is dotted snake_case; the
/// OpenTelemetry instrument is the name prefixed with <see cref="TrainingProbesMeter.InstrumentPrefix"/>.
/// Values that depend on a geometry are published once per enabled <see cref="Geometry"/>.
/// </summary>
public static partial class Indicators
{
    /// <summary>
    /// Suffix of a value's standard error: <c>gradient.cosine.stderr</c> is the jackknife standard error, over the K
    /// minibatches of the window, of <c>gradient.cosine</c>. An approximate 95% interval is the value +- 1.96 stderr.
    /// </summary>
    public const string StandardErrorSuffix = ".stderr";

    /// <summary>
    /// Suffix of a value's mean over the last <see cref="ProbeOptions.SmoothingWindows"/> windows:
    /// <c>gradient.cosine.smoothed</c>, with its standard error <c>gradient.cosine.smoothed.stderr</c>.
    /// </summary>
    public const string SmoothedSuffix = ".smoothed";

    /// <summary>
    /// Suffix of a value's between-window spread: the successive-difference estimate of how far one window's value
    /// scatters around the run's level over the smoothing windows (<c>gradient.cosine.spread</c>). Unlike the window's
    /// standard error it includes how the run moves from window to window; <c>value +- 1.96 spread</c> is the run-level interval.
    /// </summary>
    public const string SpreadSuffix = ".spread";
}

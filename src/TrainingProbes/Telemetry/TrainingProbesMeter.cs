namespace TrainingProbes;

/// <summary>
/// Names of the OpenTelemetry <see cref="System.Diagnostics.Metrics.Meter"/> through which sessions publish their
/// values, and of its attributes. Add the meter to a MeterProvider with <c>AddTrainingProbes()</c> (or
/// <c>AddMeter(TrainingProbesMeter.Name)</c>).
/// </summary>
public static class TrainingProbesMeter
{
    /// <summary>Name of the meter.</summary>
    public const string Name = "TrainingProbes";

    /// <summary>Prefix of every instrument name: <c>trainingprobes.</c> followed by an indicator name.</summary>
    public const string InstrumentPrefix = "trainingprobes.";

    /// <summary>Attribute naming the run (<see cref="ProbeOptions.RunId"/>).</summary>
    public const string RunIdAttribute = "run.id";

    /// <summary>Attribute naming the worker, for example the rank in distributed training (<see cref="ProbeOptions.Worker"/>); absent when not set.</summary>
    public const string WorkerAttribute = "worker";

    /// <summary>Attribute naming the geometry (<c>euclidean</c>, <c>fisher</c>, <c>adaptive</c>); absent for geometry-free values.</summary>
    public const string GeometryAttribute = "geometry";

    /// <summary>Attribute naming the probe that computed the value.</summary>
    public const string ProbeAttribute = "probe";

    /// <summary>Attribute of the failure counter saying why a probe failed, in snake_case (<see cref="ProbeFailure.Reason"/>).</summary>
    public const string ReasonAttribute = "reason";

    /// <summary>Attribute naming the parameter of a per-layer value (<see cref="ProbeOptions.LayerMetrics"/>); absent for whole-model values.</summary>
    public const string LayerAttribute = "layer";
}

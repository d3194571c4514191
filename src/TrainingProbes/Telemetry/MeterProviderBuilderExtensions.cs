using TrainingProbes;

// In the OpenTelemetry.Metrics namespace, like the extensions of OpenTelemetry's own instrumentation packages,
// so that it is found wherever a MeterProviderBuilder is configured.
namespace OpenTelemetry.Metrics;

/// <summary>Adds TrainingProbes' metrics to an OpenTelemetry MeterProvider.</summary>
public static class TrainingProbesMeterProviderBuilderExtensions
{
    /// <summary>
    /// Subscribes the MeterProvider to the meter <see cref="TrainingProbesMeter.Name"/>, so that every probe session's
    /// indicators go to the exporters it already has (Prometheus, OTLP to a Collector, console).
    /// </summary>
    /// <param name="builder">The MeterProvider builder.</param>
    /// <returns>The same builder, for chaining.</returns>
    public static MeterProviderBuilder AddTrainingProbes(this MeterProviderBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder.AddMeter(TrainingProbesMeter.Name);
    }
}

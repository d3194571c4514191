using TrainingProbes;
using TrainingProbes.Telemetry;

// In the OpenTelemetry.Metrics namespace, like the extensions of OpenTelemetry's own instrumentation packages,
// so that it is found wherever a MeterProviderBuilder is configured.
namespace OpenTelemetry.Metrics;

/// <summary>Adds TrainingProbes' metrics to an OpenTelemetry MeterProvider.</summary>
public static class TrainingProbesMeterProviderBuilderExtensions
{
    /// <summary>
    /// Subscribes the MeterProvider to the meter <see cref="TrainingProbesMeter.Name"/> and registers the TrainingProbes
    /// instrumentation with it, so that every probe session's indicators go to the exporters it already has
    /// (Prometheus, OTLP to a Collector, console).
    /// </summary>
    /// <param name="builder">The MeterProvider builder.</param>
    /// <param name="configure">Changes the options; optional.</param>
    /// <returns>The same builder, for chaining.</returns>
    public static MeterProviderBuilder AddTrainingProbes(this MeterProviderBuilder builder, Action<TrainingProbesMetricsOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var options = new TrainingProbesMetricsOptions();
        configure?.Invoke(options);
        return builder.AddMeter(TrainingProbesMeter.Name).AddInstrumentation(() => new TrainingProbesInstrumentation(options));
    }
}

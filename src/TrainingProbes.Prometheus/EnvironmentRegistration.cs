using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace TrainingProbes.Prometheus;

/// <summary>
/// Registers the server of <c>TRAININGPROBES_PROMETHEUS</c> with the core library when this assembly loads: each
/// session of options read from the environment holds the process-wide server for the variable's host and port while
/// it lives (<see cref="PrometheusScrapeEndpoint.Share"/>).
/// </summary>
internal static class EnvironmentRegistration
{
    [ModuleInitializer]
    [SuppressMessage("Usage", "CA2255:The 'ModuleInitializer' attribute should not be used in libraries",
        Justification = "Registering the package's environment-variable server is exactly what must happen when it loads, before any of its types is touched.")]
    internal static void Register() => EnvironmentResources.Register("TRAININGPROBES_PROMETHEUS", value =>
    {
        var options = PrometheusEndpointOptions.Parse(value);   // a bad value fails ProbeOptions.FromEnvironment, naming the variable
        return session =>
        {
            var endpoint = PrometheusScrapeEndpoint.Share(options);
            session.Options.Output?.WriteLine($"[probes] Prometheus metrics at {endpoint.Address}");
            return endpoint;
        };
    });
}

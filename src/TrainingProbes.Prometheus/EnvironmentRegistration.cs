using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace TrainingProbes.Prometheus;

/// <summary>Registers the endpoint for <c>TRAININGPROBES_PROMETHEUS</c> with the core library when this assembly loads.</summary>
internal static class EnvironmentRegistration
{
    [ModuleInitializer]
    [SuppressMessage("Usage", "CA2255:The 'ModuleInitializer' attribute should not be used in libraries",
        Justification = "Registering the package's environment-variable probe is exactly what must happen when it loads, before any of its types is touched.")]
    internal static void Register() => EnvironmentProbes.Register("TRAININGPROBES_PROMETHEUS", PrometheusScrapeEndpoint.FromEnvironmentValue);
}

using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.CompilerServices;

namespace TrainingProbes;

/// <summary>
/// Probes that an environment variable of the one-line form turns on (<see cref="ProbeOptions.FromEnvironment()"/>),
/// provided by this project's other packages: TrainingProbes.Prometheus registers its factory for
/// <c>TRAININGPROBES_PROMETHEUS</c> when its assembly loads (it sees this internal class through InternalsVisibleTo), so
/// the core library needs no reference to it and offers no public registry of its own.
/// </summary>
internal static class EnvironmentProbes
{
    private static readonly ConcurrentDictionary<string, Func<string, TrainingProbe>> Factories = new(StringComparer.Ordinal);

    /// <summary>Registers the factory of the probe that <paramref name="variable"/> turns on; it receives the variable's value.</summary>
    /// <param name="variable">The environment variable, for example <c>TRAININGPROBES_PROMETHEUS</c>.</param>
    /// <param name="factory">Creates the probe from the variable's value; throws <see cref="ArgumentException"/> for a bad value.</param>
    public static void Register(string variable, Func<string, TrainingProbe> factory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(variable);
        ArgumentNullException.ThrowIfNull(factory);
        Factories[variable] = factory;
    }

    /// <summary>
    /// The probe for <paramref name="variable"/>'s value, or null when no package provides it. When none is registered
    /// yet, the assembly named <paramref name="assembly"/> is loaded if the application has it (its module initializer
    /// registers the factory), as ASP.NET Core loads hosting startup assemblies by name.
    /// </summary>
    internal static TrainingProbe? Create(string variable, string value, string assembly)
    {
        if (!Factories.ContainsKey(variable))
        {
            try
            {
                var loaded = Assembly.Load(new AssemblyName(assembly));
                RuntimeHelpers.RunModuleConstructor(loaded.ManifestModule.ModuleHandle);
            }
            catch (Exception ex) when (ex is FileNotFoundException or FileLoadException or BadImageFormatException)
            {
                return null;
            }
        }

        return Factories.TryGetValue(variable, out var factory) ? factory(value) : null;
    }
}

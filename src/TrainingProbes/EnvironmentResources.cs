using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.CompilerServices;

namespace TrainingProbes;

/// <summary>
/// What an environment variable of the one-line form asks a session to hold while it lives
/// (<see cref="ProbeOptions.FromEnvironment()"/>, <see cref="ProbeOptions.SessionResources"/>), provided by this
/// project's other packages: TrainingProbes.Prometheus registers the process-wide scrape server of
/// <c>TRAININGPROBES_PROMETHEUS</c> when its assembly loads (it sees this internal class through InternalsVisibleTo), so
/// the core library needs no reference to it and offers no public registry of its own.
/// </summary>
internal static class EnvironmentResources
{
    private static readonly ConcurrentDictionary<string, Func<string, Func<ProbeSession, IDisposable>>> Factories = new(StringComparer.Ordinal);

    /// <summary>Registers what <paramref name="variable"/> turns on; the factory receives the variable's value.</summary>
    /// <param name="variable">The environment variable, for example <c>TRAININGPROBES_PROMETHEUS</c>.</param>
    /// <param name="factory">
    /// Reads the variable's value (throwing <see cref="ArgumentException"/> for a bad one) and returns what each session
    /// calls as it starts, to acquire the resource that it disposes as it ends.
    /// </param>
    public static void Register(string variable, Func<string, Func<ProbeSession, IDisposable>> factory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(variable);
        ArgumentNullException.ThrowIfNull(factory);
        Factories[variable] = factory;
    }

    /// <summary>
    /// The session resource for <paramref name="variable"/>'s value, or null when no package provides it. When none is
    /// registered yet, the assembly named <paramref name="assembly"/> is loaded if the application has it (its module
    /// initializer registers the factory), as ASP.NET Core loads hosting startup assemblies by name.
    /// </summary>
    internal static Func<ProbeSession, IDisposable>? Create(string variable, string value, string assembly)
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

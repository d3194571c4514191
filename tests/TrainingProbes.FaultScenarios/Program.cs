using System.Reflection;
using TorchSharp;

namespace TrainingProbes.FaultScenarios;

/// <summary>
/// Runs one fault scenario, named by its method, and exits 0 when the outcome is the one users need (1 when a check
/// fails, 2 when the scenario itself throws; a reproduction of an upstream fault exits 3 when the fault did not occur). A native abort ends the process with a signal, which the test that
/// started it reports. <c>--list</c> prints every scenario's name.
/// </summary>
internal static class Program
{
    private static int Main(string[] args)
    {
        var methods = typeof(Program).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static))
            .ToList();
        var scenarios = methods
            .Where(m => m.GetCustomAttribute<ScenarioAttribute>() is not null || m.GetCustomAttribute<ReproductionAttribute>() is not null)
            .ToDictionary(m => m.Name, StringComparer.Ordinal);
        if (args is ["--list"] or ["--list-reproductions"])
        {
            bool reproductions = args[0] == "--list-reproductions";
            foreach (var (name, candidate) in scenarios.OrderBy(s => s.Key, StringComparer.Ordinal))
                if ((candidate.GetCustomAttribute<ReproductionAttribute>() is not null) == reproductions) Console.WriteLine(name);
            return 0;
        }

        if (args.Length != 1 || !scenarios.TryGetValue(args[0], out var method))
        {
            Console.Error.WriteLine($"usage: TrainingProbes.FaultScenarios <scenario> | --list | --list-reproductions; {scenarios.Count} scenarios, for example {scenarios.Keys.First()}");
            return 64;
        }

        torch.set_num_threads(1);
        try
        {
            method.Invoke(null, null);
            Console.WriteLine($"PASSED {method.Name}");
            return 0;
        }
        catch (TargetInvocationException ex) when (ex.InnerException is ScenarioFailedException)
        {
            Console.WriteLine($"FAILED {method.Name}: {ex.InnerException.Message}");
            return 1;
        }
        catch (TargetInvocationException ex) when (ex.InnerException is ReproductionFailedException)
        {
            Console.WriteLine($"NOT REPRODUCED {method.Name}: {ex.InnerException.Message}");
            return 3;
        }
        catch (TargetInvocationException ex)
        {
            Console.WriteLine($"THREW {method.Name}: {ex.InnerException}");
            return 2;
        }
    }
}

/// <summary>Marks a static method without parameters as a fault scenario.</summary>
/// <param name="fault">What the scenario injects, and the issue item it comes from.</param>
[AttributeUsage(AttributeTargets.Method)]
internal sealed class ScenarioAttribute(string fault) : Attribute
{
    public string Fault { get; } = fault;
}

/// <summary>
/// Marks a static method without parameters as the reproduction of a fault outside TrainingProbes (run by
/// <c>--list-reproductions</c>' test, not among the scenarios): it passes while the fault is there.
/// </summary>
/// <param name="what">What it runs.</param>
[AttributeUsage(AttributeTargets.Method)]
internal sealed class ReproductionAttribute(string what) : Attribute
{
    public string What { get; } = what;
}

/// <summary>A reproduction did not reproduce its fault (exit code 3).</summary>
internal sealed class ReproductionFailedException(string message) : Exception(message);

/// <summary>A check of a scenario's outcome failed.</summary>
internal sealed class ScenarioFailedException(string message) : Exception(message);

internal static class Check
{
    public static void That(bool condition, string what)
    {
        if (!condition) throw new ScenarioFailedException(what);
    }
}

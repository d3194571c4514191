using System.Diagnostics;
using System.Reflection;

// One scenario at a time: the garbage threads of one would slow the timing-sensitive checks of another.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace TrainingProbes.FaultTests;

/// <summary>
/// Runs each fault scenario of TrainingProbes.FaultScenarios in a process of its own and asserts that it passed: it
/// exited 0 (its own checks held), within the time limit (no hang), and not by a signal (no native abort). The protocol
/// (arguments, exit codes, where the program is found) and why it is not Microsoft.DotNet.RemoteExecutor: README.md.
/// </summary>
[Trait("Category", "Long")]   // processes of their own, the soak and the GC stress: `dotnet test --filter Category=Long`
public sealed class FaultScenarioTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(5);   // the longest, CollectionsFromOtherThreadsWhileScraped, takes about 100 s here

    /// <summary>
    /// The scenario program's assembly, as the build wrote it into this one (the project file's
    /// AddFaultScenariosAssemblyMetadata target: the scenario project's own TargetPath).
    /// </summary>
    private static string ScenarioAssembly =>
        typeof(FaultScenarioTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .SingleOrDefault(a => a.Key == "FaultScenariosAssembly")?.Value is { Length: > 0 } path
            ? path
            : throw new InvalidOperationException("This assembly does not say where the fault scenarios are (no FaultScenariosAssembly metadata); build it with its project file.");

    public static TheoryData<string> Scenarios() => Listed("--list");

    /// <summary>The names the scenario program prints for <paramref name="listing"/> (--list or --list-reproductions).</summary>
    internal static TheoryData<string> Listed(string listing)
    {
        var (code, output) = Run(listing, TimeSpan.FromMinutes(1));
        if (code != 0) throw new InvalidOperationException($"TrainingProbes.FaultScenarios {listing} exited {code}: {output}");
        var data = new TheoryData<string>();
        foreach (var name in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)) data.Add(name);
        return data;
    }

    [Theory]
    [MemberData(nameof(Scenarios))]
    public void Scenario_ends_as_users_need(string scenario)
    {
        var (code, output) = Run(scenario, Limit);
        string tail = output.Length > 6000 ? output[^6000..] : output;
        Assert.True(code != -1, $"{scenario} did not finish within {Limit.TotalMinutes} minutes (a hang); its output:\n{tail}");
        Assert.True(code < 128, $"{scenario} was killed by signal {code - 128} (134: SIGABRT, a native abort such as a c10::Error); its output:\n{tail}");
        Assert.True(code == 0, $"{scenario} exited {code}:\n{tail}");
    }

    /// <summary>Runs the scenario program; the exit code, or -1 when it was killed at the time limit.</summary>
    internal static (int Code, string Output) Run(string argument, TimeSpan limit)
    {
        string assembly = ScenarioAssembly;
        if (!File.Exists(assembly))
            throw new FileNotFoundException($"The fault scenarios are not built at {assembly}; build the solution (dotnet build) first.");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(assembly);
        start.ArgumentList.Add(argument);
        // Scenarios set the variables they test; none of the caller's may leak in.
        foreach (var variable in start.Environment.Keys.Where(k => k.StartsWith("TRAININGPROBES_", StringComparison.Ordinal)).ToList())
            start.Environment.Remove(variable);
        using var process = Process.Start(start)!;
        var output = new System.Text.StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(limit))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return (-1, output.ToString());
        }

        process.WaitForExit();
        lock (output) return (process.ExitCode, output.ToString());
    }
}

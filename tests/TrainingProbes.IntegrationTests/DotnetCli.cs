using System.Diagnostics;
using System.Text;

namespace TrainingProbes.IntegrationTests;

/// <summary>Runs the .NET CLI (and other programs) as a child process, the way a user types the commands.</summary>
internal static class DotnetCli
{
    /// <summary>The <c>dotnet</c> host that runs these tests (DOTNET_HOST_PATH), else <c>dotnet</c> on PATH.</summary>
    public static string Host => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    /// <summary>Runs <c>dotnet</c> with <paramref name="arguments"/> in <paramref name="directory"/>.</summary>
    public static (int ExitCode, string Output) Dotnet(string directory, IEnumerable<string> arguments, TimeSpan timeout, IReadOnlyDictionary<string, string?>? environment = null) =>
        Run(Host, directory, arguments, timeout, environment);

    /// <summary>Runs <paramref name="program"/> and returns its exit code and its standard output and error, interleaved.</summary>
    public static (int ExitCode, string Output) Run(string program, string directory, IEnumerable<string> arguments, TimeSpan timeout, IReadOnlyDictionary<string, string?>? environment = null)
    {
        var start = new ProcessStartInfo(program)
        {
            WorkingDirectory = directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments) start.ArgumentList.Add(argument);

        // The test host runs under `dotnet test`, whose MSBuild variables would point a child build at the SDK
        // instance of this run; a user's shell has none of them. No build servers outlive the command either.
        foreach (var name in start.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || k.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)).ToList())
            start.Environment.Remove(name);
        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        if (environment is not null)
            foreach (var (name, value) in environment)
                start.Environment[name] = value;

        var output = new StringBuilder();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            lock (output) return (-1, $"{program} {string.Join(' ', arguments)} did not finish within {timeout.TotalSeconds:F0} s.\n{output}");
        }

        process.WaitForExit();   // flushes the asynchronous readers
        lock (output) return (process.ExitCode, output.ToString());
    }
}

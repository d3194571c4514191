using System.Diagnostics;

namespace TrainingProbes.IntegrationTests;

/// <summary>A program outside .NET that some integration tests need.</summary>
public enum Tool
{
    /// <summary>A Prometheus server (Debian's <c>prometheus</c> package, 2.42 on Debian 12).</summary>
    Prometheus,

    /// <summary>A Python 3 that imports <c>torch</c> and <c>numpy</c> (Debian's <c>python3-torch</c>, PyTorch 1.13).</summary>
    PyTorch,
}

/// <summary>
/// Finds the external tools of <see cref="Tool"/>, and decides whether a test that needs one is skipped.
/// A test is skipped (with the reason and the install command) only where the tool is absent and its
/// <c>TRAININGPROBES_REQUIRE_*</c> variable is not set; CI sets the variables, so there a missing tool fails the run.
/// </summary>
internal static class ExternalTool
{
    private static readonly Lazy<string?> PrometheusPath = new(() => FindPrometheus("prometheus"));
    private static readonly Lazy<string?> PythonPath = new(FindPythonWithTorch);

    /// <summary>The environment variable under which a missing <paramref name="tool"/> fails its tests instead of skipping them.</summary>
    public static string RequireVariable(Tool tool) => tool switch
    {
        Tool.Prometheus => "TRAININGPROBES_REQUIRE_PROMETHEUS",
        Tool.PyTorch => "TRAININGPROBES_REQUIRE_PYTORCH",
        _ => throw new ArgumentOutOfRangeException(nameof(tool), tool, null),
    };

    /// <summary>How to install <paramref name="tool"/> on Debian or Ubuntu.</summary>
    public static string InstallCommand(Tool tool) => tool switch
    {
        Tool.Prometheus => "apt-get install -y --no-install-recommends prometheus",
        Tool.PyTorch => "apt-get install -y --no-install-recommends python3-torch",
        _ => throw new ArgumentOutOfRangeException(nameof(tool), tool, null),
    };

    /// <summary>Whether the tool was found on this machine.</summary>
    public static bool IsAvailable(Tool tool) => tool switch
    {
        Tool.Prometheus => PrometheusPath.Value is not null,
        Tool.PyTorch => PythonPath.Value is not null,
        _ => throw new ArgumentOutOfRangeException(nameof(tool), tool, null),
    };

    /// <summary>Whether the run demands the tool (its <c>TRAININGPROBES_REQUIRE_*</c> variable is 1 or true).</summary>
    public static bool IsRequired(Tool tool) =>
        Environment.GetEnvironmentVariable(RequireVariable(tool)) is "1" or "true" or "True" or "TRUE";

    /// <summary>The skip reason for a test that needs <paramref name="tool"/>, or null when the test must run.</summary>
    public static string? SkipReason(Tool tool)
    {
        if (IsAvailable(tool) || IsRequired(tool)) return null;
        string what = tool switch
        {
            Tool.Prometheus => "a Prometheus server ('prometheus' on PATH, or PROMETHEUS_BINARY)",
            _ => "a Python 3 with PyTorch and numpy (/usr/bin/python3, python3 on PATH, or TRAININGPROBES_PYTHON)",
        };
        return $"needs {what}, which this machine lacks. Install it with `{InstallCommand(tool)}`, " +
               $"or set {RequireVariable(tool)}=1 to make its absence a failure (.ci/run does both).";
    }

    /// <summary>The prometheus (or promtool) binary; throws, saying how to install it, when there is none.</summary>
    public static string Prometheus(string name = "prometheus") =>
        (name == "prometheus" ? PrometheusPath.Value : FindPrometheus(name))
        ?? throw new InvalidOperationException(
            $"'{name}' was not found on PATH. These tests need a real Prometheus server: {InstallCommand(Tool.Prometheus)} (.ci/run does).");

    /// <summary>A Python 3 that imports torch and numpy; throws, saying how to install it, when there is none.</summary>
    public static string Python() => PythonPath.Value
        ?? throw new InvalidOperationException(
            $"No Python 3 with PyTorch and numpy was found (tried TRAININGPROBES_PYTHON, /usr/bin/python3, python3 on PATH). {InstallCommand(Tool.PyTorch)} (.ci/run does).");

    private static string? FindPrometheus(string name)
    {
        var configured = Environment.GetEnvironmentVariable(name.ToUpperInvariant() + "_BINARY");
        if (!string.IsNullOrEmpty(configured)) return File.Exists(configured) ? configured : null;
        return OnPath(name).FirstOrDefault();
    }

    private static IEnumerable<string> OnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(folder => Path.Combine(folder, name))
            .Where(File.Exists);

    // Debian's python3-torch lives in /usr/bin/python3's site packages; a python3 earlier on PATH (pyenv, a venv) may
    // lack it, so each candidate is asked to import torch and numpy.
    private static string? FindPythonWithTorch()
    {
        var configured = Environment.GetEnvironmentVariable("TRAININGPROBES_PYTHON");
        IEnumerable<string> candidates = !string.IsNullOrEmpty(configured)
            ? [configured]
            : new[] { "/usr/bin/python3" }.Where(File.Exists).Concat(OnPath("python3")).Distinct();
        return candidates.FirstOrDefault(ImportsTorch);
    }

    private static bool ImportsTorch(string python)
    {
        try
        {
            var start = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in new[] { "-c", "import torch, numpy; print(torch.__version__)" }) start.ArgumentList.Add(a);
            using var process = Process.Start(start);
            if (process is null) return false;
            process.StandardOutput.ReadToEnd();
            process.StandardError.ReadToEnd();
            if (!process.WaitForExit(TimeSpan.FromSeconds(60)))
            {
                process.Kill(entireProcessTree: true);
                return false;
            }

            return process.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }
}

/// <summary>
/// A fact that needs an external <see cref="Tool"/>: xunit reports it as skipped, with the reason and the install
/// command, where the tool is absent, unless its <c>TRAININGPROBES_REQUIRE_*</c> variable demands it.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class FactNeedingAttribute : FactAttribute
{
    /// <summary>Marks a test that needs <paramref name="tool"/>.</summary>
    public FactNeedingAttribute(Tool tool)
    {
        Tool = tool;
        if (ExternalTool.SkipReason(tool) is { } reason) Skip = reason;
    }

    /// <summary>The tool the test needs.</summary>
    public Tool Tool { get; }
}

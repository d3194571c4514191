using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// The memory a session adds, against the formulas of docs/REFERENCE.md, each measured in a process of its own
/// (another test's freed memory would blur a resident-memory difference): the benchmarks' <c>memory</c> suite attaches
/// a session to one large Linear layer and prints the resident memory it added beside the formula.
/// </summary>
[Trait("Category", "Long")]   // three processes of their own on large layers: `dotnet test --filter Category=Long`
public sealed partial class SessionMemoryTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>The default window, one pass through the layer taps: 12 bytes per parameter (theta and the Fisher average), no K x P buffer.</summary>
    [Fact]
    public Task A_default_session_adds_12_bytes_per_parameter_within_10_percent() => MeasureAgainstFormula(1L << 24, "onepass");

    /// <summary>K micro-batch passes into a full K x P buffer: 4 K + 12 bytes per parameter (76 at K = 16).</summary>
    [Fact]
    public Task A_full_session_adds_the_formulas_memory_within_10_percent() => MeasureAgainstFormula(1L << 22, "full");

    /// <summary>K passes into CountSketches: 4 bytes per parameter and the K x d sketches.</summary>
    [Fact]
    public Task A_sketch_session_adds_the_formulas_memory_within_10_percent() => MeasureAgainstFormula(1L << 24, "sketch");

    private async Task MeasureAgainstFormula(long parameters, string storage)
    {
        var build = new DirectoryInfo(AppContext.BaseDirectory);   // .../bin/<Configuration>/<tfm>/
        string benchmarks = Path.Combine(RepositoryFiles.Root, "tests", "TrainingProbes.Benchmarks", "bin", build.Parent!.Name, build.Name, "TrainingProbes.Benchmarks.dll");
        Assert.True(File.Exists(benchmarks), $"{benchmarks} is missing: build the solution (dotnet test at the repository root does).");

        var start = new ProcessStartInfo(DotnetCli.Host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in new[] { benchmarks, "memory", parameters.ToString(CultureInfo.InvariantCulture), storage }) start.ArgumentList.Add(argument);
        // A fixed mmap threshold: glibc then returns every large freed block to the system at once, so that what is
        // measured is what the session holds, not what the allocator keeps (which varied by 50 MB from run to run).
        start.Environment["MALLOC_MMAP_THRESHOLD_"] = "1048576";
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(10));
        await process.WaitForExitAsync(timeout.Token);
        string text = await stdout + await stderr;
        output.WriteLine(text);
        Assert.True(process.ExitCode == 0, $"the memory suite exited with {process.ExitCode}:\n{text}");

        var ratio = RatioLine().Match(text);
        Assert.True(ratio.Success, $"no 'added / formula' line in:\n{text}");
        Assert.InRange(double.Parse(ratio.Groups[1].Value, CultureInfo.InvariantCulture), 0.9, 1.1);
    }

    [GeneratedRegex(@"added / formula: ([0-9.]+)")]
    private static partial Regex RatioLine();
}

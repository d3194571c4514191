using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// The memory bounds of <see cref="WindowStorage.Sketch"/> and <see cref="WindowStorage.Full"/>, measured in a process of its own (another test's freed
/// memory would blur a resident-memory difference): the benchmarks' <c>memory</c> suite attaches a sketch session to a
/// 2^26-parameter layer and prints the resident memory the session added beside the formula (4 bytes per parameter and
/// the K x d sketches).
/// </summary>
public sealed partial class SketchMemoryTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public Task A_sketch_session_adds_the_formulas_memory_within_10_percent() => MeasureAgainstFormula(1L << 26, "sketch");

    /// <summary>The README's bytes per parameter in full storage (2 K b + 48 = 176 at K = 16), measured at 2^22 parameters.</summary>
    [Fact]
    public Task A_full_session_adds_the_formulas_memory_within_10_percent() => MeasureAgainstFormula(1L << 22, "full");

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

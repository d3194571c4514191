using System.Diagnostics;
using System.Text.RegularExpressions;

namespace TrainingProbes.IntegrationTests;

public sealed partial class QuickStartMetricsTests
{
    /// <summary>
    /// The quick start, as built by <c>dotnet test</c> of the solution, with TRAININGPROBES_PROMETHEUS set as its
    /// launch settings set it (on a free port here, so the test never collides with a real 9464): while it trains,
    /// its /metrics page lists every instrument of the instrument table of docs/REFERENCE.md.
    /// </summary>
    [Fact]
    public async Task While_the_quick_start_runs_its_endpoint_shows_every_instrument_of_the_readme()
    {
        var output = new DirectoryInfo(AppContext.BaseDirectory);   // .../bin/<Configuration>/<tfm>/
        string quickStart = Path.Combine(RepositoryFiles.Root, "examples", "QuickStart", "bin", output.Parent!.Name, output.Name, "QuickStart.dll");
        Assert.True(File.Exists(quickStart), $"{quickStart} is missing: build the solution (dotnet test at the repository root does).");

        int port = PrometheusServer.FreePort();
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(quickStart);
        start.Environment["TRAININGPROBES_PROMETHEUS"] = $"127.0.0.1:{port}";
        start.Environment["TRAININGPROBES_INTERVAL"] = "100";
        using var process = Process.Start(start)!;
        var log = process.StandardOutput.ReadToEndAsync();
        try
        {
            var expected = RepositoryFiles.ReadmeInstruments(firstTableOnly: true).ToHashSet();
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            HashSet<string> seen = [];
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < TimeSpan.FromSeconds(60) && !process.HasExited && !expected.IsSubsetOf(seen))
            {
                try
                {
                    var text = await http.GetStringAsync($"http://127.0.0.1:{port}/metrics");
                    seen = NamePattern().Matches(text).Select(m => m.Groups[1].Value).ToHashSet();
                }
                catch (HttpRequestException)
                {
                    // not listening yet
                }

                await Task.Delay(200);
            }

            var missing = expected.Except(seen).ToList();
            Assert.True(missing.Count == 0,
                $"missing from the quick start's /metrics: {string.Join(", ", missing)} (exited: {process.HasExited})\n{(process.HasExited ? await log : "")}");
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
        }

        // The session said where it is served: it held the process-wide endpoint of the variable.
        Assert.Contains($"[probes] Prometheus metrics at http://127.0.0.1:{port}/metrics", await log);
    }

    [GeneratedRegex("^(trainingprobes_[a-z0-9_]+)[{ ]", RegexOptions.Multiline)]
    private static partial Regex NamePattern();
}

using System.Diagnostics;
using System.Text.Json;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// The MNIST example (examples/Mnist), as built by <c>dotnet test</c> of the solution, run in a process of its own on
/// the repository's digits with a short step budget.
/// </summary>
public sealed class MnistExampleTests
{
    [Fact]
    public async Task A_short_run_learns_above_chance_publishes_windows_and_writes_its_summary()
    {
        var output = Directory.CreateTempSubdirectory("trainingprobes-mnist-example-").FullName;
        try
        {
            var (exitCode, stdout, stderr) = await Run("--steps", "600", "--output", output);

            Assert.True(exitCode == 0, $"exit code {exitCode}\n{stdout}\n{stderr}");
            string summaryPath = Path.Combine(output, "summary.json");
            Assert.True(File.Exists(summaryPath), $"no {summaryPath}\n{stdout}");
            using var summary = JsonDocument.Parse(await File.ReadAllTextAsync(summaryPath));
            var root = summary.RootElement;
            int steps = root.GetProperty("steps").GetInt32();
            bool stoppedByRule = root.GetProperty("stopped_by_rule").GetBoolean();
            Assert.True(steps == 600 || (stoppedByRule && steps > 0), $"{steps} steps, stopped by a rule: {stoppedByRule}");
            Assert.Equal(2000, root.GetProperty("test_size").GetInt32());
            Assert.Equal(7000, root.GetProperty("train_size").GetInt32());
            // Chance is 0.1; the MLP passes 0.9 within 600 steps (PyTorch recomputes the value in the next test).
            double accuracy = root.GetProperty("test_accuracy").GetDouble();
            Assert.True(accuracy > 0.85, $"test accuracy {accuracy}\n{stdout}");
            int windows = root.GetProperty("windows_published").GetInt32();
            Assert.True(windows >= 1, $"{windows} windows published\n{stdout}");
            Assert.Equal(0, root.GetProperty("probe_failures").GetInt32());
            Assert.Contains("test accuracy", stdout);

            // The report: one CSV row per window with the default indicators' columns and the reported test accuracy,
            // and a PNG of the chart's size (width and height at bytes 16 and 20 of a PNG) that is not blank.
            var csv = File.ReadAllLines(Path.Combine(output, "report.csv"));
            var header = csv[0].Split(',');
            foreach (var column in new[] { "window", "step", "gradient.cosine[euclidean]", "gradient.gsnr", "training.loss", "test.accuracy" })
                Assert.Contains(column, header);
            Assert.True(csv.Length - 1 >= windows, $"{csv.Length - 1} rows for {windows} windows");
            var png = File.ReadAllBytes(Path.Combine(output, "report.png"));
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
            Assert.Equal(1600, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)));
            Assert.True(System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)) >= 500);
            Assert.True(png.Length > 50_000, $"a PNG of {png.Length} bytes: a chart of four panels compresses to far more than a blank image");
        }
        finally
        {
            Directory.Delete(output, recursive: true);
        }
    }

    [FactNeeding(Tool.PyTorch)]
    public async Task The_test_accuracy_it_reports_is_the_one_PyTorch_computes_from_its_saved_weights()
    {
        var output = Directory.CreateTempSubdirectory("trainingprobes-mnist-pytorch-").FullName;
        try
        {
            var (exitCode, stdout, stderr) = await Run("--steps", "300", "--output", output);
            Assert.True(exitCode == 0, $"exit code {exitCode}\n{stdout}\n{stderr}");
            using var summary = JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(output, "summary.json")));
            double reported = summary.RootElement.GetProperty("test_accuracy").GetDouble();
            string weights = summary.RootElement.GetProperty("weights").GetString()!;

            // PyTorch builds the same MLP, loads the weights (strict) and classifies the same 2,000 held-out digits.
            var (exit, text) = DotnetCli.Run(ExternalTool.Python(), output,
                [RepositoryFiles.PathOf("tests/TrainingProbes.IntegrationTests/Python/mnist_accuracy.py"), weights, RepositoryFiles.PathOf("data/mnist-10k")],
                TimeSpan.FromMinutes(2));
            Assert.True(exit == 0, $"mnist_accuracy.py exited with {exit}:\n{text}");
            using var recomputed = JsonDocument.Parse(text[text.IndexOf('{')..]);
            Assert.Equal(2000, recomputed.RootElement.GetProperty("total").GetInt32());
            int correct = recomputed.RootElement.GetProperty("correct").GetInt32();
            // float32 in two builds of libtorch: a digit whose two top logits tie to rounding may fall either way.
            Assert.InRange(Math.Abs(correct - reported * 2000), 0, 2);
            Assert.True(reported > 0.8, $"test accuracy {reported} after 300 steps");
        }
        finally
        {
            Directory.Delete(output, recursive: true);
        }
    }

    [Fact]
    public async Task A_missing_data_folder_exits_2_naming_the_file_it_looked_for()
    {
        string missing = Path.Combine(Path.GetTempPath(), $"trainingprobes-no-mnist-{Guid.NewGuid():N}");
        var (exitCode, stdout, stderr) = await Run("--data", missing);

        Assert.True(exitCode == 2, $"exit code {exitCode}\n{stdout}\n{stderr}");
        Assert.Contains(missing, stderr);
        Assert.Contains("train-images-idx3-ubyte", stderr);
        Assert.Contains("IDX", stderr);
        Assert.DoesNotContain("   at ", stderr);   // a message, not a stack trace
    }

    [Fact]
    public async Task A_damaged_data_file_exits_2_naming_the_file_and_the_format_expected()
    {
        var folder = Directory.CreateTempSubdirectory("trainingprobes-bad-mnist-").FullName;
        try
        {
            string images = Path.Combine(folder, "train-images-idx3-ubyte.gz");
            await File.WriteAllTextAsync(images, "not a gzip file");
            var (exitCode, stdout, stderr) = await Run("--data", folder);

            Assert.True(exitCode == 2, $"exit code {exitCode}\n{stdout}\n{stderr}");
            Assert.Contains(images, stderr);
            Assert.Contains("0x00000803", stderr);
            Assert.DoesNotContain("   at ", stderr);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task An_unknown_argument_exits_2_with_the_usage()
    {
        var (exitCode, _, stderr) = await Run("--epoch", "3");

        Assert.Equal(2, exitCode);
        Assert.Contains("unknown argument '--epoch'", stderr);
        Assert.Contains("--epochs N", stderr);
    }

    private static async Task<(int ExitCode, string Stdout, string Stderr)> Run(params string[] arguments)
    {
        var build = new DirectoryInfo(AppContext.BaseDirectory);   // .../bin/<Configuration>/<tfm>/
        string example = Path.Combine(RepositoryFiles.Root, "examples", "Mnist", "bin", build.Parent!.Name, build.Name, "Mnist.dll");
        Assert.True(File.Exists(example), $"{example} is missing: build the solution (dotnet test at the repository root does).");

        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(example);
        foreach (var argument in arguments) start.ArgumentList.Add(argument);
        start.Environment.Remove("TRAININGPROBES_MNIST");   // the repository's digits, whatever the machine sets
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(240));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Assert.Fail($"the example ran past 240 s\n{await stdout}");
        }

        return (process.ExitCode, await stdout, await stderr);
    }
}

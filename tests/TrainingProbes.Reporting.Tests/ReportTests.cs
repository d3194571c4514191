using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.CompilerServices;
using SkiaSharp;
using TorchSharp;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace TrainingProbes.Reporting.Tests;

internal static class TestSetup
{
    [ModuleInitializer]
    internal static void SingleThreadedTorch() => torch.set_num_threads(1);

    [ModuleInitializer]
    internal static void StrictSessions() => ProbeOptions.StrictByDefault = true;
}

public sealed class ReportTests : IDisposable
{
    // TRAININGPROBES_REPORT_DIR keeps the report for a look at the PNG; otherwise a temporary folder, removed after.
    private readonly string _folder = Environment.GetEnvironmentVariable("TRAININGPROBES_REPORT_DIR") is { Length: > 0 } kept
        ? kept
        : Path.Combine(Path.GetTempPath(), "trainingprobes-report-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Environment.GetEnvironmentVariable("TRAININGPROBES_REPORT_DIR") is not { Length: > 0 } && Directory.Exists(_folder))
            Directory.Delete(_folder, recursive: true);
    }

    private static Tensor CrossEntropy(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

    /// <summary>
    /// A learnable task (the class is the argmax of a fixed linear map of x): the loss falls and the test accuracy, reported
    /// every 20 steps, rises until the stop rule on it fires. Returns the accuracies reported, by step.
    /// </summary>
    private static Dictionary<long, double> Train(ProbeSession session, nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, int steps)
    {
        var generator = new Generator(7);
        var teacher = torch.randn([5, 3], generator: generator);
        var testX = torch.randn([256, 5], generator: generator);
        var testY = testX.matmul(teacher).argmax(1);
        var reported = new Dictionary<long, double>();
        for (int i = 0; i < steps; i++)
        {
            using var scope = torch.NewDisposeScope();
            var x = torch.randn([16, 5], generator: generator);
            var y = x.matmul(teacher).argmax(1);
            optimizer.zero_grad();
            var loss = CrossEntropy(model.call(x), y);
            loss.backward();
            session.Step(loss, x, y);
            optimizer.step();
            if (session.StepCount % 20 == 0)
            {
                using var _ = torch.no_grad();
                double accuracy = model.call(testX).argmax(1).eq(testY).to_type(ScalarType.Float32).mean().item<float>();
                session.Report("test.accuracy", accuracy);
                reported[session.StepCount] = accuracy;
                if (session.ShouldStop) break;
            }
        }

        session.Flush();
        return reported;
    }

    private static (nn.Module<Tensor, Tensor>, optim.Optimizer) Model()
    {
        torch.manual_seed(1);
        var model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3));
        return (model, new GcSafeSgd(model.parameters(), 0.02));
    }

    private static ProbeOptions Options(params TrainingProbe[] probes) => new()
    {
        WindowSize = 4,
        Interval = 10,
        OverheadBudget = null,
        Output = null,
        Loss = CrossEntropy,
        Probes = probes,
        Stopping = [StoppingRule.Parse("test.accuracy >= 0.85 -> stop")],
    };

    [Fact]
    public void The_csv_holds_every_published_value_and_the_png_every_family()
    {
        var (model, optimizer) = Model();
        using var session = ProbeSession.Attach(model, Options(), optimizer);
        long? firedAt = null;
        session.RuleFired += (_, e) => firedAt ??= e.Step;
        var accuracies = Train(session, model, optimizer, 400);
        Assert.True(session.ShouldStop, "the accuracy rule should fire within 400 steps");

        var paths = session.WriteReport(_folder);
        Assert.Equal([Path.Combine(_folder, "report.csv"), Path.Combine(_folder, "report.png")], paths.Select(Path.GetFullPath).Select(p => p.Replace(Path.GetFullPath(_folder), _folder)));

        // The header: the row keys, the series (geometry in brackets), the reported value, the failures.
        var lines = File.ReadAllLines(paths[0]);
        var header = lines[0].Split(',');
        Assert.Equal(["window", "step", "timestamp"], header[..3]);
        Assert.Equal(["failures", "failure_reasons"], header[^2..]);
        foreach (var column in new[] { "gradient.cosine[euclidean]", "gradient.cosine.stderr[euclidean]", "regret.relative[euclidean]", "gradient.gsnr", "training.loss", "test.accuracy" })
            Assert.Contains(column, header);
        Assert.Equal(header.Length, header.Distinct().Count());

        // Every snapshot value, parsed back, is the snapshot's; the cells of a window's row are exactly its values.
        var rows = lines.Skip(1).Select(l => l.Split(',')).ToList();
        Assert.All(rows, r => Assert.Equal(header.Length, r.Length));
        var history = session.History;
        var windowRows = rows.Where(r => r[0].Length > 0).ToList();
        Assert.Equal(history.Select(s => s.Window), windowRows.Select(r => int.Parse(r[0], CultureInfo.InvariantCulture)));
        int accuracyColumn = Array.IndexOf(header, "test.accuracy");
        foreach (var (snapshot, row) in history.Zip(windowRows))
        {
            Assert.Equal(snapshot.Step, long.Parse(row[1], CultureInfo.InvariantCulture));
            Assert.Equal(snapshot.Timestamp, DateTimeOffset.Parse(row[2], CultureInfo.InvariantCulture));
            foreach (var value in snapshot.Values)
            {
                string column = (value.Geometry == Geometry.None ? value.Name : $"{value.Name}[{value.Geometry.ToName()}]") + (value.Layer is null ? "" : "@" + value.Layer);
                Assert.Equal(value.Value, double.Parse(row[Array.IndexOf(header, column)], CultureInfo.InvariantCulture));
            }

            int filled = row[3..^2].Count(c => c.Length > 0) - (row[accuracyColumn].Length > 0 ? 1 : 0);
            Assert.Equal(snapshot.Values.Count, filled);
            Assert.Equal(snapshot.Failures.Count, int.Parse(row[^2], CultureInfo.InvariantCulture));
        }

        // The reported accuracies, at their steps (a row of their own when no window closed there).
        var inCsv = rows.Where(r => r[accuracyColumn].Length > 0)
            .ToDictionary(r => long.Parse(r[1], CultureInfo.InvariantCulture), r => double.Parse(r[accuracyColumn], CultureInfo.InvariantCulture));
        Assert.Equal(accuracies.OrderBy(p => p.Key), inCsv.OrderBy(p => p.Key));

        // The stop is where the rule fired.
        var table = ReportTable.From(session);
        Assert.Equal(firedAt, table.StopStep);

        // The PNG: its size from its header (width, height at bytes 16 and 20), and a drawing, not a blank page.
        int panels = ReportChart.PanelCount(table);
        Assert.Equal(5, panels);   // agreement and regret, smoothed with run-level bands, flatness, noise and GSNR, loss and accuracy (no curvature probe)
        var bytes = File.ReadAllBytes(paths[1]);
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], bytes[..4]);
        var (width, height) = ReportChart.Size(panels);
        Assert.Equal(width, BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)));
        Assert.Equal(height, BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20)));
        using var bitmap = SKBitmap.Decode(bytes);
        var colours = new HashSet<uint>();
        for (int y = 0; y < bitmap.Height; y += 2)
            for (int x = 0; x < bitmap.Width; x += 2)
                colours.Add((uint)bitmap.GetPixel(x, y));
        Assert.True(colours.Count > 20, $"{colours.Count} distinct colours");
    }

    [Fact]
    public void A_report_probe_writes_the_report_when_the_session_is_disposed()
    {
        var (model, optimizer) = Model();
        var probe = new ReportProbe(_folder);
        var session = ProbeSession.Attach(model, Options(probe), optimizer);
        Train(session, model, optimizer, 60);
        Assert.Empty(probe.Written);
        Assert.False(File.Exists(Path.Combine(_folder, "report.csv")));

        session.Dispose();
        Assert.Equal(2, probe.Written.Count);
        Assert.All(probe.Written, path => Assert.True(new FileInfo(path).Length > 0, path));
        var lines = File.ReadAllLines(probe.Written[0]);
        Assert.Equal(session.History.Count, lines.Skip(1).Count(l => !l.StartsWith(',')));
        Assert.Contains("test.accuracy", lines[0].Split(','));
    }
}

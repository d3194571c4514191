using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using TrainingProbes.Checkpoints;
using Xunit.Abstractions;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// PyTorch reads what TrainingProbes writes, proven with PyTorch itself (Debian's python3-torch): a .pt and a
/// .safetensors checkpoint load with <c>load_state_dict(strict=True)</c> into the same architecture built in Python
/// and give the C# model's outputs; and for an exported window of each capture path (a model with BatchNorm, whose
/// window is K micro-batch passes, and a plain MLP, whose window comes from one pass through the layer taps), PyTorch
/// recomputes the K micro-batch gradients from the closing step's parameters and batch, and numpy recomputes the
/// published indicators from them in float64. The Python side is <c>Python/pytorch_interop.py</c>; this test writes
/// the files and a manifest, runs it, and checks its report.
/// </summary>
public sealed class PyTorchInteropTests(ITestOutputHelper output)
{
    private const int Inputs = 6, Hidden = 16, Outputs = 3, Batch = 32, K = 4;

    [FactNeeding(Tool.PyTorch)]
    public void PyTorch_loads_the_checkpoints_recomputes_the_micro_batch_gradients_and_the_published_indicators()
    {
        var folder = Directory.CreateTempSubdirectory("trainingprobes-pytorch-").FullName;
        try
        {
            using var scope = NewDisposeScope();
            var generator = new Generator(11);
            manual_seed(11);   // the layers' initial weights
            var normalized = nn.Sequential(nn.Linear(Inputs, Hidden), nn.BatchNorm1d(Hidden), nn.ReLU(), nn.Linear(Hidden, Outputs));
            var normalizedWindow = TrainAndExport(normalized, "bn", folder, generator);
            var plain = nn.Sequential(nn.Linear(Inputs, Hidden), nn.ReLU(), nn.Linear(Hidden, Outputs));
            var plainWindow = TrainAndExport(plain, "plain", folder, generator);

            string pt = Path.Combine(folder, "model.pt"), safetensors = Path.Combine(folder, "model.safetensors");
            CheckpointFile.Save(normalized, pt, CheckpointFormat.PyTorch);
            CheckpointFile.Save(normalized, safetensors, CheckpointFormat.Safetensors);

            normalized.eval();
            var probe = randn([5, Inputs], generator: generator);
            Tensor outputs;
            using (no_grad()) outputs = normalized.call(probe);

            var manifest = new JsonObject
            {
                ["pt"] = pt,
                ["safetensors"] = safetensors,
                ["sizes"] = new JsonArray(Inputs, Hidden, Outputs),
                ["dtype"] = "float32",
                ["input"] = Rows(probe),
                ["output"] = Rows(outputs),
                ["output_tolerance"] = 1e-5,     // float32, two builds of libtorch (2.10 here, 1.13 in Debian)
                ["gradient_tolerance"] = 1e-5,   // the same, relative to the largest gradient entry of a parameter
                ["tolerance"] = 1e-6,            // the session's float32 Gram matrices against numpy's float64
                ["windows"] = new JsonArray(normalizedWindow.Manifest, plainWindow.Manifest),
            };
            string manifestPath = Path.Combine(folder, "manifest.json");
            File.WriteAllText(manifestPath, manifest.ToJsonString());

            var (exit, text) = DotnetCli.Run(ExternalTool.Python(), folder,
                [RepositoryFiles.PathOf("tests/TrainingProbes.IntegrationTests/Python/pytorch_interop.py"), manifestPath], TimeSpan.FromMinutes(3));
            output.WriteLine(text);
            Assert.True(exit == 0, $"pytorch_interop.py exited with {exit}:\n{text}");

            // Check the report here too, so that a script that printed nothing useful cannot pass.
            using var report = JsonDocument.Parse(text[text.IndexOf('{')..]);
            var root = report.RootElement;
            Assert.Equal(0, root.GetProperty("failures").GetArrayLength());
            foreach (var key in new[] { "pt_output_max_abs_diff_weights_only_False", "pt_output_max_abs_diff_weights_only_True", "safetensors_output_max_abs_diff" })
                Assert.InRange(root.GetProperty(key).GetDouble(), 0, 1e-5);
            var windows = root.GetProperty("windows");
            Assert.Equal(2, windows.GetArrayLength());
            foreach (var (window, expected) in windows.EnumerateArray().Zip([normalizedWindow, plainWindow]))
            {
                Assert.Equal(expected.Window.ToString(CultureInfo.InvariantCulture), window.GetProperty("metadata").GetProperty("window").GetString());
                Assert.Equal(K.ToString(CultureInfo.InvariantCulture), window.GetProperty("metadata").GetProperty("k").GetString());
                Assert.InRange(window.GetProperty("gradient_relative_difference").GetDouble(), 0, 1e-5);
                var recomputed = window.GetProperty("recomputed");
                foreach (var (name, value) in expected.Published)
                    Assert.Equal(value, recomputed.GetProperty(name).GetDouble(), 1e-6 * Math.Max(1, Math.Abs(value)));
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private sealed record ExportedWindow(long Window, Dictionary<string, double> Published, JsonObject Manifest);

    /// <summary>
    /// Eight SGD steps on a teacher's labels with a session that exports every window; at the step that closes the
    /// last window, before the optimizer moves, the parameters and the batch are what the window's micro-batch
    /// gradients were computed from.
    /// </summary>
    private static ExportedWindow TrainAndExport(nn.Module<Tensor, Tensor> model, string architecture, string folder, Generator generator)
    {
        var optimizer = new GcSafeSgd(model.parameters(), 0.05, momentum: 0.9);
        var export = new GradientExportProbe(Path.Combine(folder, architecture + "-windows"));   // a folder that does not exist yet
        var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = K, Interval = 4, OverheadBudget = null, Output = null, Probes = [export], Strict = true,
            Loss = (o, t) => nn.functional.cross_entropy(o, t), RunId = architecture,
        }, optimizer);

        var x = randn([512, Inputs], generator: generator);
        var labels = (x[.., 0] + x[.., 1] * x[.., 2] > 0).to(ScalarType.Int64) + (x[.., 3] > 1).to(ScalarType.Int64);
        string ThetaFile(long step) => Path.Combine(folder, $"{architecture}-theta-{step}.safetensors");
        string BatchFile(long step) => Path.Combine(folder, $"{architecture}-batch-{step}.safetensors");
        for (int step = 0; step < 8; step++)
        {
            using var stepScope = NewDisposeScope();
            var rows = randint(0, 512, [Batch], generator: generator);
            var (input, target) = (x[rows], labels[rows]);
            optimizer.zero_grad();
            var loss = nn.functional.cross_entropy(model.call(input), target);
            loss.backward();
            session.Step(loss, input, target);
            // Every step's parameters and batch (the windows' statistics may run on the session's worker, so which step
            // closed a window is read from its snapshot afterwards).
            // Named by the number of steps seen, as ProbeSnapshot.Step counts.
            CheckpointFile.Save(model, ThetaFile(step + 1), CheckpointFormat.Safetensors);
            CheckpointFile.SaveTensors(new Dictionary<string, Tensor> { ["x"] = input, ["y"] = target }, BatchFile(step + 1));
            optimizer.step();
        }

        Assert.True(export.Files.Count >= 2, $"{architecture}: {export.Files.Count} windows exported in eight steps with an interval of 4");
        session.Flush();
        var snapshot = session.History[^1];
        session.Dispose();
        Assert.EndsWith($"window-{snapshot.Window:D6}.safetensors", export.Files[^1]);
        var published = new Dictionary<string, double>
        {
            ["cosine"] = snapshot.Get(Indicators.Cosine, Geometry.Euclidean),
            ["relative_regret"] = snapshot.Get(Indicators.RelativeRegret, Geometry.Euclidean),
            ["contrastive_flatness"] = snapshot.Get(Indicators.ContrastiveFlatness, Geometry.Euclidean),
            ["noise"] = snapshot.Get(Indicators.GradientNoise, Geometry.Euclidean),
            ["coherence"] = snapshot.Get(Indicators.Coherence, Geometry.Euclidean),
        };
        var manifest = new JsonObject
        {
            ["architecture"] = architecture,
            ["window"] = export.Files[^1],
            ["theta"] = ThetaFile(snapshot.Step),
            ["batch"] = BatchFile(snapshot.Step),
            ["published"] = new JsonObject(published.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)JsonValue.Create(p.Value)))),
        };
        return new ExportedWindow(snapshot.Window, published, manifest);
    }

    /// <summary>
    /// The reverse direction: a state_dict that PyTorch itself wrote with <c>torch.save</c> (zip format, with its own
    /// headers, padding and pickle) loads through <see cref="CheckpointFile.Load"/>, which checks the archive's CRCs
    /// and records first, into the same architecture, every value equal to what Python read.
    /// </summary>
    [FactNeeding(Tool.PyTorch)]
    public void A_checkpoint_written_by_torch_save_loads_with_the_values_python_saved()
    {
        var folder = Directory.CreateTempSubdirectory("trainingprobes-torchsave-").FullName;
        try
        {
            var (exit, text) = DotnetCli.Run(ExternalTool.Python(), folder,
                [RepositoryFiles.PathOf("tests/TrainingProbes.IntegrationTests/Python/torch_save.py"), folder], TimeSpan.FromMinutes(3));
            output.WriteLine(text);
            Assert.True(exit == 0, $"torch_save.py exited with {exit}:\n{text}");

            using var scope = NewDisposeScope();
            var model = nn.Sequential(nn.Linear(Inputs, Hidden), nn.BatchNorm1d(Hidden), nn.ReLU(), nn.Linear(Hidden, Outputs));
            CheckpointFile.Load(model, Path.Combine(folder, "model.pt"));

            using var saved = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "values.json")));
            var tensors = saved.RootElement.GetProperty("tensors");
            var state = model.state_dict();
            Assert.Equal(tensors.EnumerateObject().Select(p => p.Name).Order(), state.Keys.Order());
            foreach (var entry in tensors.EnumerateObject())
            {
                var tensor = state[entry.Name];
                Assert.Equal(entry.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()), tensor.shape);
                var expected = entry.Value.GetProperty("values").EnumerateArray().Select(v => v.GetDouble()).ToArray();
                using var values = tensor.to(ScalarType.Float64).cpu();
                Assert.Equal(expected, values.data<double>().ToArray());   // float32 and int64 values are exact in float64
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static JsonArray Rows(Tensor matrix)
    {
        using var cpu = matrix.to(ScalarType.Float64).cpu();
        var values = cpu.data<double>().ToArray();
        int columns = (int)matrix.shape[1];
        var rows = new JsonArray();
        for (int r = 0; r < values.Length / columns; r++)
            rows.Add(new JsonArray(values.Skip(r * columns).Take(columns).Select(v => (JsonNode)JsonValue.Create(v)).ToArray()));
        return rows;
    }
}

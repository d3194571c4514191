using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using TrainingProbes.Checkpoints;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// PyTorch reads what TrainingProbes writes, proven with PyTorch itself (Debian's python3-torch): a .pt and a
/// .safetensors checkpoint load with <c>load_state_dict(strict=True)</c> into the same architecture built in Python
/// and give the C# model's outputs, and an exported gradient window, read in Python, gives back the euclidean
/// cosine, relative regret and m-coherence the session published for those step gradients (<c>step.*</c>, recomputed
/// with numpy in float64). The Python side
/// is <c>Python/pytorch_interop.py</c>; this test writes the files and a manifest, runs it, and checks its report.
/// </summary>
public sealed class PyTorchInteropTests(ITestOutputHelper output)
{
    private const int Inputs = 6, Hidden = 16, Outputs = 3, Batch = 32;

    // The exported window holds the trainer's step gradients: their statistics are the step-to-step family.
    private const string Step = "step.";

    [FactNeeding(Tool.PyTorch)]
    public void PyTorch_loads_the_checkpoints_and_recomputes_the_published_indicators_of_an_exported_window()
    {
        var folder = Directory.CreateTempSubdirectory("trainingprobes-pytorch-").FullName;
        try
        {
            using var scope = NewDisposeScope();
            var generator = new Generator(11);
            manual_seed(11);   // the layers' initial weights
            var model = nn.Sequential(nn.Linear(Inputs, Hidden), nn.BatchNorm1d(Hidden), nn.ReLU(), nn.Linear(Hidden, Outputs));
            var optimizer = optim.SGD(model.parameters(), 0.05, momentum: 0.9);
            var export = new GradientExportProbe(Path.Combine(folder, "windows"));   // a folder that does not exist yet
            var session = ProbeSession.Attach(model, new ProbeOptions
            {
                WindowSize = 4, Interval = 4, OverheadBudget = null, Output = null, Probes = [export],
            }, optimizer);

            // A teacher labels gaussian inputs; eight SGD steps give two windows, both exported.
            var x = randn([512, Inputs], generator: generator);
            var labels = (x[.., 0] + x[.., 1] * x[.., 2] > 0).to(ScalarType.Int64) + (x[.., 3] > 1).to(ScalarType.Int64);
            for (int step = 0; step < 8; step++)
            {
                using var stepScope = NewDisposeScope();
                var batch = randint(0, 512, [Batch], generator: generator);
                optimizer.zero_grad();
                var loss = nn.functional.cross_entropy(model.call(x[batch]), labels[batch]);
                loss.backward();
                session.Step(loss);
                optimizer.step();
            }

            Assert.Equal(2, export.Files.Count);
            session.Flush();
            var snapshot = session.History.Single(s => s.Window == 1);
            session.Dispose();

            string pt = Path.Combine(folder, "model.pt"), safetensors = Path.Combine(folder, "model.safetensors");
            CheckpointFile.Save(model, pt, CheckpointFormat.PyTorch);
            CheckpointFile.Save(model, safetensors, CheckpointFormat.Safetensors);

            model.eval();
            var probe = randn([5, Inputs], generator: generator);
            Tensor outputs;
            using (no_grad()) outputs = model.call(probe);

            var manifest = new JsonObject
            {
                ["pt"] = pt,
                ["safetensors"] = safetensors,
                ["window"] = export.Files[1],
                ["sizes"] = new JsonArray(Inputs, Hidden, Outputs),
                ["dtype"] = "float32",
                ["input"] = Rows(probe),
                ["output"] = Rows(outputs),
                ["output_tolerance"] = 1e-5,   // float32, two builds of libtorch (2.10 here, 1.13 in Debian)
                ["tolerance"] = 1e-6,          // the session's float32 Gram matrices against numpy's float64
                ["published"] = new JsonObject
                {
                    ["cosine"] = snapshot.Get(Step + Indicators.Cosine, Geometry.Euclidean),
                    ["relative_regret"] = snapshot.Get(Step + Indicators.RelativeRegret, Geometry.Euclidean),
                    ["coherence"] = snapshot.Get(Step + Indicators.Coherence, Geometry.Euclidean),
                },
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
            Assert.Equal("1", root.GetProperty("window_metadata").GetProperty("window").GetString());
            Assert.Equal("4", root.GetProperty("window_metadata").GetProperty("k").GetString());
            foreach (var key in new[] { "pt_output_max_abs_diff_weights_only_False", "pt_output_max_abs_diff_weights_only_True", "safetensors_output_max_abs_diff" })
                Assert.InRange(root.GetProperty(key).GetDouble(), 0, 1e-5);
            var recomputed = root.GetProperty("recomputed");
            Assert.Equal(snapshot.Get(Step + Indicators.Cosine, Geometry.Euclidean), recomputed.GetProperty("cosine").GetDouble(), 1e-6);
            Assert.Equal(snapshot.Get(Step + Indicators.RelativeRegret, Geometry.Euclidean), recomputed.GetProperty("relative_regret").GetDouble(), 1e-6);
            Assert.Equal(snapshot.Get(Step + Indicators.Coherence, Geometry.Euclidean), recomputed.GetProperty("coherence").GetDouble(), 1e-6 * Math.Max(1, snapshot.Get(Step + Indicators.Coherence, Geometry.Euclidean)));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
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

using System.IO.Compression;
using System.Text;
using TorchSharp;
using TorchSharp.PyBridge;
using TrainingProbes.Checkpoints;
using static TorchSharp.torch;
using static TrainingProbes.Tests.Checkpoints.CheckpointTestSupport;

namespace TrainingProbes.Tests.Checkpoints;

public sealed class CheckpointFileTests : IDisposable
{
    private readonly TemporaryFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    private static string Extension(CheckpointFormat format) => format == CheckpointFormat.PyTorch ? ".pt" : ".safetensors";

    public static TheoryData<CheckpointFormat, ScalarType> FormatsAndTypes => new()
    {
        { CheckpointFormat.PyTorch, ScalarType.Float32 },
        { CheckpointFormat.PyTorch, ScalarType.Float64 },
        { CheckpointFormat.Safetensors, ScalarType.Float32 },
        { CheckpointFormat.Safetensors, ScalarType.Float64 },
    };

    [Theory]
    [MemberData(nameof(FormatsAndTypes))]
    public void A_saved_model_loads_bit_for_bit_into_a_fresh_one(CheckpointFormat format, ScalarType dtype)
    {
        using var model = Mlp(dtype, seed: 1);
        TrainSteps(model, 2, seed: 2);
        var saved = State(model);
        var path = _folder.File("model" + Extension(format));

        CheckpointFile.Save(model, path, format);

        using var fresh = Mlp(dtype, seed: 3);
        Assert.NotEqual(saved.Select(s => s.Bytes), State(fresh).Select(s => s.Bytes));
        CheckpointFile.Load(fresh, path);
        AssertBitEqual(saved, fresh);
        Assert.All(fresh.parameters(), p => Assert.True(p.requires_grad));
        Assert.Equal(dtype, fresh.parameters().First().dtype);
        Assert.Empty(Directory.GetFiles(_folder.Path, "*.tmp"));
    }

    [Theory]
    [InlineData(CheckpointFormat.PyTorch)]
    [InlineData(CheckpointFormat.Safetensors)]
    public void A_saved_snapshot_loads_into_a_model_and_keeps_its_parameters_trainable(CheckpointFormat format)
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        TrainSteps(model, 1, seed: 2);
        var captured = State(model);
        using var snapshot = WeightSnapshot.Capture(model, 42, 0.125);
        var path = _folder.File("best" + Extension(format));

        CheckpointFile.Save(snapshot, path, format);

        // The snapshot's tensors do not require gradients, so a PyTorch archive records requires_grad=False, as files
        // saved by Python do: loading must not switch off the module's gradients.
        using var fresh = Mlp(ScalarType.Float32, seed: 3);
        CheckpointFile.Load(fresh, path);
        AssertBitEqual(captured, fresh);
        Assert.All(fresh.parameters(), p => Assert.True(p.requires_grad));

        if (format == CheckpointFormat.Safetensors)
        {
            var parsed = ParsedSafetensors.Read(path);
            Assert.Equal("42", parsed.Metadata["step"]);
            Assert.Equal(0.125, double.Parse(parsed.Metadata["value"], System.Globalization.CultureInfo.InvariantCulture));
            Assert.Equal("pt", parsed.Metadata["format"]);
        }
    }

    [Fact]
    public void Files_written_here_and_by_PyBridge_module_extensions_read_each_other()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        TrainSteps(model, 1, seed: 2);
        var saved = State(model);

        // Ours -> PyBridge's load_py / load_safetensors.
        CheckpointFile.Save(model, _folder.File("ours.pt"), CheckpointFormat.PyTorch);
        CheckpointFile.Save(model, _folder.File("ours.safetensors"), CheckpointFormat.Safetensors);
        using (var a = Mlp(ScalarType.Float32, seed: 3))
        {
            a.load_py(_folder.File("ours.pt"));
            AssertBitEqual(saved, a);
        }
        using (var b = Mlp(ScalarType.Float32, seed: 3))
        {
            b.load_safetensors(_folder.File("ours.safetensors"));
            AssertBitEqual(saved, b);
        }

        // PyBridge's save_py / save_safetensors -> ours.
        model.save_py(_folder.File("pybridge.pt"));
        model.save_safetensors(_folder.File("pybridge.safetensors"));
        using (var c = Mlp(ScalarType.Float32, seed: 3))
        {
            CheckpointFile.Load(c, _folder.File("pybridge.pt"));
            AssertBitEqual(saved, c);
        }
        using (var d = Mlp(ScalarType.Float32, seed: 3))
        {
            CheckpointFile.Load(d, _folder.File("pybridge.safetensors"));
            AssertBitEqual(saved, d);
        }
    }

    [Fact]
    public void The_PyTorch_file_is_a_zip_archive_in_the_layout_torch_load_reads()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        TrainSteps(model, 1, seed: 2);
        var state = State(model);
        var path = _folder.File("model.pt");
        CheckpointFile.Save(model, path, CheckpointFormat.PyTorch);

        var head = new byte[4];
        using (var raw = File.OpenRead(path)) raw.ReadExactly(head);
        Assert.Equal("PK\u0003\u0004"u8.ToArray(), head);

        using var archive = ZipFile.OpenRead(path);
        var names = archive.Entries.Select(e => e.FullName).ToList();

        // torch.load's reader takes the archive's name from its first entry: every record lies in that one folder.
        var prefix = names[0][..names[0].IndexOf('/')];
        Assert.NotEmpty(prefix);
        Assert.All(names, n => Assert.StartsWith(prefix + "/", n));

        // version: a format version PyTorch reads (1 to 3 as torch writes it, as text).
        var version = archive.GetEntry($"{prefix}/version") ?? archive.GetEntry($"{prefix}/.data/version");
        Assert.NotNull(version);
        using (var reader = new StreamReader(version!.Open()))
            Assert.InRange(int.Parse(reader.ReadToEnd().Trim()), 1, 3);

        // byteorder is optional (absent means little-endian); if present it must say so.
        var byteorder = archive.GetEntry($"{prefix}/byteorder");
        if (byteorder is not null)
            using (var reader = new StreamReader(byteorder.Open()))
                Assert.Equal("little", reader.ReadToEnd().Trim());

        // data.pkl: a pickle (PROTO opcode first, STOP last) that names every entry and rebuilds tensors.
        var pkl = archive.GetEntry($"{prefix}/data.pkl");
        Assert.NotNull(pkl);
        byte[] pickle;
        using (var s = pkl!.Open())
        using (var m = new MemoryStream())
        {
            s.CopyTo(m);
            pickle = m.ToArray();
        }
        Assert.Equal(0x80, pickle[0]);
        Assert.Equal((byte)'.', pickle[^1]);
        var text = Encoding.Latin1.GetString(pickle);
        Assert.Contains("_rebuild_tensor_v2", text);
        foreach (var (name, _, _, _) in state) Assert.Contains(name, text);

        // One storage record per tensor, data/0 .. data/n-1, each holding that tensor's raw little-endian bytes.
        var storages = names.Where(n => n.StartsWith(prefix + "/data/", StringComparison.Ordinal)).ToList();
        Assert.Equal(Enumerable.Range(0, state.Count).Select(i => $"{prefix}/data/{i}").Order(), storages.Order());
        for (int i = 0; i < state.Count; i++)
        {
            using var s = archive.GetEntry($"{prefix}/data/{i}")!.Open();
            using var m = new MemoryStream();
            s.CopyTo(m);
            Assert.True(state[i].Bytes.AsSpan().SequenceEqual(m.ToArray()), $"data/{i} is not the bytes of {state[i].Name}");
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float64)]
    public void The_safetensors_file_has_a_valid_header_and_the_tensors_bytes(ScalarType dtype)
    {
        using var model = Mlp(dtype, seed: 1);
        TrainSteps(model, 1, seed: 2);
        var state = State(model);
        var path = _folder.File("model.safetensors");
        CheckpointFile.Save(model, path, CheckpointFormat.Safetensors);

        var parsed = ParsedSafetensors.Read(path);   // N, JSON, ranges that tile the data region exactly
        Assert.Equal(0, parsed.HeaderLength % 8);     // header padded: the data region starts 8-aligned
        Assert.Equal(state.Select(s => s.Name).Order(), parsed.Entries.Select(e => e.Name).Order());
        Assert.Equal("pt", parsed.Metadata["format"]);
        foreach (var (name, type, shape, bytes) in state)
        {
            var entry = parsed.Entry(name);
            Assert.Equal(SafetensorsDType(type), entry.DType);
            Assert.Equal(shape, entry.Shape);
            Assert.Equal(0, (parsed.DataStart + entry.Begin) % ElementSize(entry.DType));   // aligned in the file
            Assert.True(bytes.AsSpan().SequenceEqual(parsed.Data(name)), name);
        }
    }

    [Fact]
    public void SaveTensors_writes_gradient_windows_with_their_shapes_bytes_and_metadata()
    {
        const int K = 6;
        torch.manual_seed(11);
        using var weight = torch.randn(K, 3, 4);
        using var bias = torch.randn(K, 4);
        using var steps = torch.arange(100L, 100L + K);
        using var transposed = torch.randn(4, K).t();   // not contiguous: written in logical (row-major) order
        var tensors = new Dictionary<string, Tensor>
        {
            ["0.weight"] = weight,
            ["0.bias"] = bias,
            ["steps"] = steps,
            ["transposed"] = transposed,
        };
        var path = _folder.File("window.safetensors");

        CheckpointFile.SaveTensors(tensors, path, new Dictionary<string, string> { ["window"] = "3", ["geometry"] = "fisher" });

        var parsed = ParsedSafetensors.Read(path);
        Assert.Equal(0, parsed.HeaderLength % 8);
        Assert.Equal("3", parsed.Metadata["window"]);
        Assert.Equal("fisher", parsed.Metadata["geometry"]);
        Assert.Equal(4, parsed.Entries.Count);
        AssertEntry(parsed, "0.weight", "F32", K, 3, 4);
        AssertEntry(parsed, "0.bias", "F32", K, 4);
        AssertEntry(parsed, "steps", "I64", K);
        AssertEntry(parsed, "transposed", "F32", K, 4);
        foreach (var (name, tensor) in tensors)
        {
            Assert.True(Bytes(tensor).AsSpan().SequenceEqual(parsed.Data(name)), name);
            Assert.Equal(0, (parsed.DataStart + parsed.Entry(name).Begin) % ElementSize(parsed.Entry(name).DType));
        }

        // The float32 data are exactly the tensors' values, read back as little-endian floats.
        var floats = new float[K * 3 * 4];
        Buffer.BlockCopy(parsed.Data("0.weight"), 0, floats, 0, floats.Length * 4);
        Assert.Equal(weight.data<float>().ToArray(), floats);

        // The given tensors are neither disposed nor changed.
        Assert.All(tensors.Values, t => Assert.False(t.IsInvalid));
        Assert.False(transposed.is_contiguous());

        // PyBridge reads the file back too.
        var loaded = TorchSharp.PyBridge.Safetensors.LoadStateDict(path);
        try
        {
            foreach (var (name, tensor) in tensors)
                Assert.True(Bytes(tensor).AsSpan().SequenceEqual(Bytes(loaded[name])), name);
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
    }

    private static void AssertEntry(ParsedSafetensors parsed, string name, string dtype, params long[] shape)
    {
        Assert.Equal(dtype, parsed.Entry(name).DType);
        Assert.Equal(shape, parsed.Entry(name).Shape);
    }

    [Fact]
    public void Saving_replaces_an_existing_file_and_leaves_no_temporary_file()
    {
        var path = _folder.File("model.safetensors");
        using var first = Mlp(ScalarType.Float32, seed: 1);
        using var second = Mlp(ScalarType.Float32, seed: 2);
        CheckpointFile.Save(first, path, CheckpointFormat.Safetensors);
        CheckpointFile.Save(second, path, CheckpointFormat.Safetensors);

        using var fresh = Mlp(ScalarType.Float32, seed: 3);
        CheckpointFile.Load(fresh, path);
        AssertBitEqual(State(second), fresh);
        Assert.Equal(new[] { path }, Directory.GetFiles(_folder.Path));
    }

    [Fact]
    public void A_save_that_fails_midway_keeps_the_previous_file_and_removes_its_temporary_file()
    {
        var path = _folder.File("window.safetensors");
        using var good = torch.ones(3);
        CheckpointFile.SaveTensors(new Dictionary<string, Tensor> { ["good"] = good }, path);
        var before = File.ReadAllBytes(path);

        using var complex = torch.zeros(2, dtype: ScalarType.ComplexFloat32);
        var error = Assert.Throws<NotSupportedException>(() =>
            CheckpointFile.SaveTensors(new Dictionary<string, Tensor> { ["good"] = good, ["complex"] = complex }, path));
        Assert.Contains("complex", error.Message);

        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(new[] { path }, Directory.GetFiles(_folder.Path));
    }

    [Fact]
    public void A_file_is_recognised_by_its_content_when_its_extension_is_unknown()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        var saved = State(model);
        CheckpointFile.Save(model, _folder.File("a.safetensors"), CheckpointFormat.Safetensors);
        CheckpointFile.Save(model, _folder.File("b.pt"), CheckpointFormat.PyTorch);
        File.Move(_folder.File("a.safetensors"), _folder.File("a.ckpt"));
        File.Move(_folder.File("b.pt"), _folder.File("b"));

        foreach (var name in new[] { "a.ckpt", "b" })
        {
            using var fresh = Mlp(ScalarType.Float32, seed: 3);
            CheckpointFile.Load(fresh, _folder.File(name));
            AssertBitEqual(saved, fresh);
        }
    }

    [Fact]
    public void Saving_with_an_unknown_or_wrong_extension_or_into_a_missing_folder_names_the_path()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        using var snapshot = WeightSnapshot.Capture(model, 0, 0);

        var unknown = _folder.File("model.ckpt");
        var e1 = Assert.Throws<ArgumentException>(() => CheckpointFile.Save(model, unknown, CheckpointFormat.PyTorch));
        Assert.Contains(unknown, e1.Message);
        Assert.Contains(".safetensors", e1.Message);

        var wrong = _folder.File("model.pt");
        var e2 = Assert.Throws<ArgumentException>(() => CheckpointFile.Save(snapshot, wrong, CheckpointFormat.Safetensors));
        Assert.Contains(wrong, e2.Message);

        var notSafetensors = _folder.File("window.pt");
        using var t = torch.ones(2);
        var e3 = Assert.Throws<ArgumentException>(() => CheckpointFile.SaveTensors(new Dictionary<string, Tensor> { ["t"] = t }, notSafetensors));
        Assert.Contains(notSafetensors, e3.Message);

        var missing = Path.Combine(_folder.Path, "no-such-folder", "model.pt");
        var e4 = Assert.Throws<DirectoryNotFoundException>(() => CheckpointFile.Save(model, missing, CheckpointFormat.PyTorch));
        Assert.Contains(missing, e4.Message);
        Assert.Contains("no-such-folder", e4.Message);

        Assert.Empty(Directory.GetFiles(_folder.Path));
    }

    [Fact]
    public void Loading_a_missing_file_or_folder_names_the_path()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        var file = _folder.File("absent.pt");
        var e1 = Assert.Throws<FileNotFoundException>(() => CheckpointFile.Load(model, file));
        Assert.Contains(file, e1.Message);

        var inMissingFolder = Path.Combine(_folder.Path, "no-such-folder", "model.safetensors");
        var e2 = Assert.Throws<DirectoryNotFoundException>(() => CheckpointFile.Load(model, inMissingFolder));
        Assert.Contains(inMissingFolder, e2.Message);
    }

    [Theory]
    [InlineData("truncated.pt")]
    [InlineData("truncated.safetensors")]
    [InlineData("garbage.pt")]
    [InlineData("garbage.safetensors")]
    [InlineData("garbage.weights")]
    [InlineData("flipped-header.safetensors")]
    [InlineData("safetensors-content.pt")]
    [InlineData("no-pickle.pt")]
    public void A_corrupted_or_foreign_file_fails_with_a_message_naming_it_and_leaves_the_model_alone(string name)
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        var path = _folder.File(name);
        var pt = _folder.File("source.pt");
        var safetensors = _folder.File("source.safetensors");
        CheckpointFile.Save(model, pt, CheckpointFormat.PyTorch);
        CheckpointFile.Save(model, safetensors, CheckpointFormat.Safetensors);

        switch (name)
        {
            case "truncated.pt":
                File.WriteAllBytes(path, File.ReadAllBytes(pt)[..(int)(new FileInfo(pt).Length / 2)]);
                break;
            case "truncated.safetensors":
                File.WriteAllBytes(path, File.ReadAllBytes(safetensors)[..^10]);
                break;
            case "garbage.pt":
            case "garbage.safetensors":
            case "garbage.weights":
                File.WriteAllText(path, "this is not a checkpoint at all");
                break;
            case "flipped-header.safetensors":
                var bytes = File.ReadAllBytes(safetensors);
                bytes[8] = (byte)'[';   // the JSON header no longer parses as an object
                File.WriteAllBytes(path, bytes);
                break;
            case "safetensors-content.pt":
                File.Copy(safetensors, path);
                break;
            case "no-pickle.pt":
                using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
                using (var w = new StreamWriter(zip.CreateEntry("archive/version").Open()))
                    w.Write("3\n");
                break;
        }

        using var target = Mlp(ScalarType.Float32, seed: 2);
        var before = State(target);
        var error = Assert.Throws<InvalidDataException>(() => CheckpointFile.Load(target, path));
        Assert.Contains(path, error.Message);
        AssertBitEqual(before, target);
    }

    [Theory]
    [InlineData(CheckpointFormat.PyTorch)]
    [InlineData(CheckpointFormat.Safetensors)]
    public void Loading_a_checkpoint_of_another_architecture_names_the_mismatch_and_changes_nothing(CheckpointFormat format)
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        var path = _folder.File("model" + Extension(format));
        CheckpointFile.Save(model, path, format);

        using var wider = Mlp(ScalarType.Float32, seed: 2, hidden: 6);
        var before = State(wider);
        var error = Assert.Throws<InvalidOperationException>(() => CheckpointFile.Load(wider, path));
        Assert.Contains(path, error.Message);
        Assert.Contains("0.weight", error.Message);
        Assert.Contains("[5, 4]", error.Message);
        Assert.Contains("[6, 4]", error.Message);
        AssertBitEqual(before, wider);

        torch.manual_seed(3);
        using var deeper = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3), nn.Linear(3, 3));
        var missing = Assert.Throws<InvalidOperationException>(() => CheckpointFile.Load(deeper, path));
        Assert.Contains("Missing from", missing.Message);
        Assert.Contains("3.weight", missing.Message);
        Assert.Contains("3.bias", missing.Message);
    }
}

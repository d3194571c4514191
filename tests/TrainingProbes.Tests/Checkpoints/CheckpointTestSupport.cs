using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Checkpoints;

/// <summary>Models, training steps, byte-level state comparisons and a temporary folder for the checkpoint tests.</summary>
internal static class CheckpointTestSupport
{
    /// <summary>Linear + BatchNorm1d + Linear: parameters and the three batch-norm buffers.</summary>
    public static nn.Module<Tensor, Tensor> Mlp(ScalarType dtype, long seed, int hidden = 5)
    {
        torch.manual_seed(seed);
        var model = nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 3));
        if (dtype != ScalarType.Float32) model.to(dtype);
        return model;
    }

    /// <summary>One SGD step in training mode: changes the parameters and the batch-norm running statistics.</summary>
    public static void TrainSteps(nn.Module<Tensor, Tensor> model, int steps, long seed)
    {
        var dtype = model.parameters().First().dtype;
        using var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        model.train();
        torch.manual_seed(seed);
        Trainer.Train(model, optimizer, 0, steps, _ => (torch.randn(8, 4, dtype: dtype), torch.randn(8, 3, dtype: dtype)), loss: (output, target) => nn.functional.mse_loss(output, target));
    }

    /// <summary>The bytes of a tensor's values (row-major, little-endian), read through a contiguous CPU copy.</summary>
    public static byte[] Bytes(Tensor tensor)
    {
        using var scope = torch.NewDisposeScope();
        var cpu = tensor.detach().cpu().contiguous();
        return cpu.NumberOfElements == 0 ? [] : cpu.bytes.ToArray();
    }

    /// <summary>Name -> (dtype, shape, bytes) of a module's state_dict, in its order.</summary>
    public static List<(string Name, ScalarType DType, long[] Shape, byte[] Bytes)> State(nn.Module model) =>
        model.state_dict().Select(kv => (kv.Key, kv.Value.dtype, kv.Value.shape, Bytes(kv.Value))).ToList();

    public static void AssertBitEqual(List<(string Name, ScalarType DType, long[] Shape, byte[] Bytes)> expected, nn.Module model)
    {
        var actual = State(model);
        Assert.Equal(expected.Select(e => e.Name), actual.Select(a => a.Name));
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].DType, actual[i].DType);
            Assert.Equal(expected[i].Shape, actual[i].Shape);
            Assert.True(expected[i].Bytes.AsSpan().SequenceEqual(actual[i].Bytes), $"{expected[i].Name} differs");
        }
    }

    public static string SafetensorsDType(ScalarType type) => type switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Bool => "BOOL",
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    public static int ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" => 8,
        "F32" or "I32" => 4,
        "F16" or "BF16" or "I16" => 2,
        _ => 1,
    };
}

/// <summary>
/// A safetensors file parsed by the tests' own reader (independent of the library and of PyBridge), with the
/// structural checks every file must pass: header length N, N bytes of JSON, entries whose byte ranges match their
/// dtype and shape and tile the data region exactly, in order.
/// </summary>
internal sealed class ParsedSafetensors
{
    public required long HeaderLength { get; init; }
    public required byte[] File { get; init; }
    public required List<(string Name, string DType, long[] Shape, long Begin, long End)> Entries { get; init; }
    public required Dictionary<string, string> Metadata { get; init; }

    public long DataStart => 8 + HeaderLength;

    public (string Name, string DType, long[] Shape, long Begin, long End) Entry(string name) => Entries.Single(e => e.Name == name);

    public byte[] Data(string name)
    {
        var e = Entry(name);
        return File.AsSpan((int)(DataStart + e.Begin), (int)(e.End - e.Begin)).ToArray();
    }

    public static ParsedSafetensors Read(string path)
    {
        var file = System.IO.File.ReadAllBytes(path);
        Assert.True(file.Length >= 8);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(0, 8));
        Assert.InRange(n, 2, file.Length - 8);
        var json = Encoding.UTF8.GetString(file, 8, (int)n);
        using var document = JsonDocument.Parse(json);
        Assert.Equal(JsonValueKind.Object, document.RootElement.ValueKind);

        var entries = new List<(string, string, long[], long, long)>();
        var metadata = new Dictionary<string, string>();
        foreach (var p in document.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__")
            {
                foreach (var m in p.Value.EnumerateObject()) metadata[m.Name] = m.Value.GetString()!;
                continue;
            }
            var dtype = p.Value.GetProperty("dtype").GetString()!;
            var shape = p.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray();
            var offsets = p.Value.GetProperty("data_offsets").EnumerateArray().Select(d => d.GetInt64()).ToArray();
            Assert.Equal(2, offsets.Length);
            Assert.Equal(shape.Aggregate(1L, (a, b) => a * b) * CheckpointTestSupport.ElementSize(dtype), offsets[1] - offsets[0]);
            entries.Add((p.Name, dtype, shape, offsets[0], offsets[1]));
        }

        // The byte ranges, in header order, are contiguous from 0 and end exactly at the end of the file.
        long expected = 0;
        foreach (var e in entries)
        {
            Assert.Equal(expected, e.Item4);
            expected = e.Item5;
        }
        Assert.Equal(file.Length - 8 - n, expected);

        return new ParsedSafetensors { HeaderLength = n, File = file, Entries = entries, Metadata = metadata };
    }
}

/// <summary>A fresh folder under the system's temporary folder, deleted on dispose.</summary>
internal sealed class TemporaryFolder : IDisposable
{
    public TemporaryFolder()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "trainingprobes-checkpoints-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); }
        catch (IOException) { }
    }
}

using System.Buffers.Binary;
using System.Text;
using TorchSharp;
using TrainingProbes.Checkpoints;
using Xunit.Abstractions;
using static TorchSharp.torch;
using static TrainingProbes.Tests.Checkpoints.CheckpointTestSupport;

namespace TrainingProbes.Tests.Checkpoints;

/// <summary>
/// Damaged PyTorch checkpoints: every one either fails with an <see cref="InvalidDataException"/> that names the file
/// (and leaves the model alone) or loads exactly the values that were saved; none loads other values or aborts.
/// The expected values are always those of the model that was saved, read before saving.
/// </summary>
public sealed class CheckpointIntegrityTests(ITestOutputHelper output) : IDisposable
{
    private readonly TemporaryFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    /// <summary>A trained model and its state, read before anything is saved.</summary>
    private static (nn.Module<Tensor, Tensor> Model, List<(string Name, ScalarType DType, long[] Shape, byte[] Bytes)> State) Trained()
    {
        var model = Mlp(ScalarType.Float32, seed: 1);
        TrainSteps(model, 2, seed: 2);
        return (model, State(model));
    }

    /// <summary>Writes the state in Python's torch.save layout (stored entries), with the tests' own writer.</summary>
    private static void WriteTorchLayout(string path, List<(string Name, ScalarType DType, long[] Shape, byte[] Bytes)> state, bool dataDescriptors = false)
    {
        var records = new List<TorchTensorRecord>();
        var storages = new Dictionary<string, byte[]>();
        for (int i = 0; i < state.Count; i++)
        {
            var (name, dtype, shape, bytes) = state[i];
            var (storageType, size) = dtype == ScalarType.Int64 ? ("LongStorage", 8) : ("FloatStorage", 4);
            records.Add(new TorchTensorRecord(name, storageType, i.ToString(), bytes.Length / size, 0, shape, Contiguous(shape)));
            storages[i.ToString()] = bytes;
        }
        TorchArchive.Write(path, records, storages, dataDescriptors: dataDescriptors);
    }

    /// <summary>Saves <paramref name="model"/> with the library, or its state in the torch.save layout (with or without data descriptors).</summary>
    private static void Write(string writer, string path, nn.Module model, List<(string Name, ScalarType DType, long[] Shape, byte[] Bytes)> state)
    {
        switch (writer)
        {
            case "library": CheckpointFile.Save(model, path, CheckpointFormat.PyTorch); break;
            case "torch-layout": WriteTorchLayout(path, state); break;
            case "torch-layout-descriptors": WriteTorchLayout(path, state, dataDescriptors: true); break;
            default: throw new ArgumentOutOfRangeException(nameof(writer), writer, null);
        }
    }

    private static long[] Contiguous(long[] shape)
    {
        var stride = new long[shape.Length];
        long s = 1;
        for (int d = shape.Length - 1; d >= 0; d--)
        {
            stride[d] = s;
            s *= shape[d];
        }
        return stride;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void An_archive_in_the_torch_save_layout_loads_the_values_it_holds(bool dataDescriptors)
    {
        var (model, state) = Trained();
        using var _ = model;
        var path = _folder.File("torch-layout.pt");
        WriteTorchLayout(path, state, dataDescriptors);
        var file = File.ReadAllBytes(path);
        Assert.All(TorchArchive.Entries(file), e =>
            Assert.Equal(dataDescriptors ? 0x0008 : 0, BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(e.Header + 6)) & 0x0008));

        using var fresh = Mlp(ScalarType.Float32, seed: 3);
        CheckpointFile.Load(fresh, path);
        AssertBitEqual(state, fresh);
    }

    [Theory]
    [InlineData("library")]
    [InlineData("torch-layout")]
    [InlineData("torch-layout-descriptors")]
    public void Every_single_byte_flip_is_refused_or_loads_exactly_the_saved_values(string writer)
    {
        var (model, state) = Trained();
        using var _ = model;
        var source = _folder.File("source.pt");
        Write(writer, source, model, state);
        var original = File.ReadAllBytes(source);
        var data = TorchArchive.Entries(original);
        Assert.Equal(state.Count + 2 + (writer == "library" ? 0 : 1), data.Count);   // the storages, data.pkl, version (and byteorder)

        List<(string, ScalarType, long[], byte[])> untouched;
        using (var probe = Mlp(ScalarType.Float32, seed: 3)) untouched = State(probe);

        var path = _folder.File("flipped.pt");
        int refused = 0, identical = 0, storedBytes = 0, storedRefused = 0;
        for (int at = 0; at < original.Length; at++)
        {
            var bytes = (byte[])original.Clone();
            bytes[at] ^= (byte)(1 + at * 89 % 255);
            File.WriteAllBytes(path, bytes);
            bool inStoredData = data.Any(d => d.Stored && at >= d.DataStart && at < d.DataStart + d.DataLength);
            if (inStoredData) storedBytes++;

            using var target = Mlp(ScalarType.Float32, seed: 3);
            try
            {
                CheckpointFile.Load(target, path);
            }
            catch (InvalidDataException e)
            {
                Assert.Contains(path, e.Message);
                AssertBitEqual(untouched, target);
                refused++;
                if (inStoredData) storedRefused++;
                continue;
            }
            AssertBitEqual(state, target);
            identical++;
        }

        // Stored (uncompressed) data, as torch.save writes it, has nothing but its CRC-32 to tell a changed byte: every
        // such flip must be refused. (A flip in deflated data can leave the inflated bytes as they were, for example in
        // the padding bits after the last block: those load the saved values.)
        Assert.Equal(storedBytes, storedRefused);
        Assert.True(writer == "library" || storedBytes >= state.Sum(s => s.Bytes.Length));
        output.WriteLine($"{writer}: {original.Length} single-byte flips, {refused} refused, {identical} loaded the saved values " +
            $"({storedBytes} in stored entry data, all refused)");
    }

    [Theory]
    [InlineData("library")]
    [InlineData("torch-layout")]
    [InlineData("torch-layout-descriptors")]
    public void A_flipped_byte_in_a_tensors_data_is_refused_with_a_message_naming_the_entry(string writer)
    {
        var (model, state) = Trained();
        using var _ = model;
        var path = _folder.File("model.pt");
        Write(writer, path, model, state);
        var bytes = File.ReadAllBytes(path);

        // The largest tensor's storage: in the torch layout its bytes lie in the file as they are.
        var entry = TorchArchive.Entries(bytes).Where(e => e.Name.Contains("/data/", StringComparison.Ordinal)).MaxBy(e => e.DataLength);
        if (writer != "library")
        {
            var largest = state.MaxBy(s => s.Bytes.Length).Bytes;
            Assert.True(bytes.AsSpan(entry.DataStart, entry.DataLength).SequenceEqual(largest));
        }
        bytes[entry.DataStart + entry.DataLength / 2] ^= 0x40;
        File.WriteAllBytes(path, bytes);

        using var target = Mlp(ScalarType.Float32, seed: 3);
        var before = State(target);
        var error = Assert.Throws<InvalidDataException>(() => CheckpointFile.Load(target, path));
        Assert.Contains(path, error.Message);
        Assert.Contains($"'{entry.Name}'", error.Message);
        if (writer != "library") Assert.Contains("CRC-32", error.Message);   // stored data: only the CRC can tell
        AssertBitEqual(before, target);
    }

    /// <summary>
    /// The central directory is what the CRC-32 check trusts: .NET's ZipArchive reads a local header only for the lengths
    /// of its name and extra field. A local name, size or CRC-32 that disagrees with the directory therefore loads the
    /// values the directory vouches for, and a changed name length (which moves the data) is refused.
    /// </summary>
    [Theory]
    [InlineData("name")]
    [InlineData("size")]
    [InlineData("crc")]
    [InlineData("name length")]
    public void A_local_header_that_disagrees_with_the_central_directory_loads_the_checked_data_or_is_refused(string field)
    {
        var (model, state) = Trained();
        using var _ = model;
        var path = _folder.File("model.pt");
        CheckpointFile.Save(model, path, CheckpointFormat.PyTorch);
        var bytes = File.ReadAllBytes(path);
        var entry = TorchArchive.Entries(bytes).Where(e => e.Name.Contains("/data/", StringComparison.Ordinal)).MaxBy(e => e.DataLength);
        int nameLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(entry.Header + 26));
        switch (field)
        {
            case "name": bytes[entry.Header + 30 + nameLength - 1] ^= 0x01; break;   // the last letter, in the local header only
            case "size": bytes[entry.Header + 22] ^= 0x01; break;                     // uncompressed size
            case "crc": bytes[entry.Header + 14] ^= 0x01; break;
            case "name length": bytes[entry.Header + 26] ^= 0x01; break;
        }
        File.WriteAllBytes(path, bytes);

        using var target = Mlp(ScalarType.Float32, seed: 3);
        var before = State(target);
        if (field != "name length")
        {
            CheckpointFile.Load(target, path);
            AssertBitEqual(state, target);
            return;
        }
        var error = Assert.Throws<InvalidDataException>(() => CheckpointFile.Load(target, path));
        Assert.Contains(path, error.Message);
        Assert.Contains($"'{entry.Name}'", error.Message);
        AssertBitEqual(before, target);
    }

    /// <summary>
    /// Archives that are intact as zip files (every CRC-32 right) but whose records do not describe their data: each is
    /// refused by PyBridge, TorchSharp or the checks after them, as an <see cref="InvalidDataException"/> naming the file.
    /// </summary>
    [Theory]
    [InlineData("missing storage", Unreadable)]
    [InlineData("shape beyond storage", Unreadable)]
    [InlineData("huge shape", Unreadable)]
    [InlineData("unknown storage type", Unreadable)]
    [InlineData("view", Unreadable)]
    [InlineData("transposed", Unreadable)]
    [InlineData("big-endian", "'big'-endian")]
    [InlineData("truncated pickle", Unreadable)]
    [InlineData("not a dict", Unreadable)]
    [InlineData("not a tensor", "maps '2.bias' to Int32")]
    public void An_intact_archive_whose_records_do_not_fit_its_data_is_refused(string fault, string expected)
    {
        var (model, state) = Trained();
        using var _ = model;
        var records = new List<TorchTensorRecord>();
        var storages = new Dictionary<string, byte[]>();
        for (int i = 0; i < state.Count; i++)
        {
            var (name, dtype, shape, bytes) = state[i];
            var (storageType, size) = dtype == ScalarType.Int64 ? ("LongStorage", 8) : ("FloatStorage", 4);
            records.Add(new TorchTensorRecord(name, storageType, i.ToString(), bytes.Length / size, 0, shape, Contiguous(shape)));
            storages[i.ToString()] = bytes;
        }
        int w = state.FindIndex(s => s.Name == "2.weight");   // [3, 5] float32: 60 bytes
        string byteOrder = "little";
        byte[]? pickle = null;
        switch (fault)
        {
            case "missing storage": records[w] = records[w] with { Key = "9" }; break;
            case "shape beyond storage": records[w] = records[w] with { Shape = [4, 5], Stride = [5, 1] }; break;
            case "huge shape": records[w] = records[w] with { Shape = [int.MaxValue, int.MaxValue, 4], Stride = [1, 1, 1] }; break;
            case "unknown storage type": records[w] = records[w] with { StorageType = "QInt8Storage" }; break;
            case "view": records[w] = records[w] with { Offset = 2, Shape = [2, 5] }; break;
            case "transposed": records[w] = records[w] with { Shape = [5, 3], Stride = [1, 5] }; break;
            case "big-endian": byteOrder = "big"; break;
            case "truncated pickle": pickle = TorchArchive.Pickle(records)[..^9]; break;
            case "not a dict": pickle = [0x80, 2, (byte)']', (byte)'.']; break;   // an empty list
            case "not a tensor":
                pickle = TorchArchive.Pickle(records);
                pickle = Replace(pickle, records.Single(r => r.Name == "2.bias"));
                break;
        }
        var path = _folder.File("records.pt");
        TorchArchive.Write(path, records, storages, byteOrder, pickle);

        using var target = Mlp(ScalarType.Float32, seed: 3);
        var before = State(target);
        var error = Assert.Throws<InvalidDataException>(() => CheckpointFile.Load(target, path));
        Assert.Contains(path, error.Message);
        Assert.Contains(expected, error.Message);
        AssertBitEqual(before, target);
    }

    private const string Unreadable = "could not be read as a PyTorch state_dict";

    /// <summary>
    /// PyBridge reads as many bytes as a record's shape needs and ignores the element count it gives for the storage:
    /// a wrong count over a storage that holds exactly the tensor loads the values saved there.
    /// </summary>
    [Fact]
    public void A_record_whose_storage_size_is_wrong_loads_the_bytes_its_storage_holds()
    {
        var (model, state) = Trained();
        using var _ = model;
        var records = state.Select((s, i) => new TorchTensorRecord(s.Name, s.DType == ScalarType.Int64 ? "LongStorage" : "FloatStorage",
            i.ToString(), s.Name == "2.weight" ? 3 : s.Bytes.Length / (s.DType == ScalarType.Int64 ? 8 : 4), 0, s.Shape, Contiguous(s.Shape))).ToList();
        var path = _folder.File("records.pt");
        TorchArchive.Write(path, records, state.Select((s, i) => (i.ToString(), s.Bytes)).ToDictionary());

        using var target = Mlp(ScalarType.Float32, seed: 3);
        CheckpointFile.Load(target, path);
        AssertBitEqual(state, target);
    }

    /// <summary>The pickle with the last record (<paramref name="last"/>) mapped to the integer 7 instead of a tensor.</summary>
    private static byte[] Replace(byte[] pickle, TorchTensorRecord last)
    {
        // The last record runs from its key to the SETITEMS that closes the dict: key, GLOBAL ... REDUCE, then 'u' '.'.
        var key = Encoding.UTF8.GetBytes(last.Name);
        int keyAt = pickle.AsSpan().LastIndexOf(key);
        Assert.True(keyAt > 0);
        var head = pickle[..(keyAt + key.Length)];
        return [.. head, (byte)'K', 7, (byte)'u', (byte)'.'];   // BININT1 7, SETITEMS, STOP
    }
}

using System.Collections;
using System.Globalization;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>
/// Saves and loads a module's state (parameters and persistent buffers, by state_dict name) as files that Python
/// reads: PyTorch state_dict archives (<c>torch.load</c>) and safetensors files.
/// </summary>
/// <remarks>
/// <para>
/// PyTorch archives are written and read with TorchSharp.PyBridge (<c>PyTorchPickler.PickleStateDict</c> and
/// <c>PyTorchUnpickler.UnpickleStateDict</c>), after this class has checked the archive (zip structure, CRC-32 of
/// every entry, tensor records; see <see cref="Load"/>), safetensors files are read with PyBridge
/// (<c>Safetensors.LoadStateDict</c>) after this class has validated their header, and written by this class
/// (PyBridge 1.4.4's writer neither aligns the data nor writes <c>__metadata__</c>; see <see cref="SaveTensors"/>).
/// </para>
/// <para>
/// Every write goes to a temporary file in the destination folder that is then moved over the destination, so a
/// reader never sees a half-written checkpoint and a failed save leaves the previous file as it was.
/// </para>
/// <para>
/// A load reads the whole file into CPU tensors first, checks it against the module (names, shapes), and only then
/// copies the values into the module's own tensors, in place, under no_grad: a file that does not fit leaves the
/// module untouched, values land on each tensor's device and dtype, and parameters keep their
/// <c>requires_grad</c> (PyBridge's <c>load_py</c> would set it from the file, where tensors saved by Python have
/// it off).
/// </para>
/// </remarks>
public static class CheckpointFile
{
    private static readonly string[] PyTorchExtensions = [".pt", ".pth", ".bin"];
    private const string SafetensorsExtension = ".safetensors";
    private const string KnownExtensions = ".pt, .pth or .bin (PyTorch) or .safetensors";

    /// <summary>
    /// Writes the parameters and persistent buffers of <paramref name="model"/> to <paramref name="path"/>: in
    /// <see cref="CheckpointFormat.PyTorch"/>, a state_dict archive for <c>model.load_state_dict(torch.load(path))</c>
    /// (tensors saved detached, like Python's <c>state_dict()</c>); in <see cref="CheckpointFormat.Safetensors"/>, a
    /// safetensors file with the metadata <c>{"format": "pt"}</c>. Tensors on an accelerator are copied to the CPU
    /// for writing. The file is replaced atomically.
    /// </summary>
    /// <param name="model">The module to save; it is not modified.</param>
    /// <param name="path">The file to write: <c>.pt</c>, <c>.pth</c> or <c>.bin</c> for PyTorch, <c>.safetensors</c> for safetensors.</param>
    /// <param name="format">The format to write; it must agree with the extension.</param>
    /// <exception cref="ArgumentException">The path is empty, its extension is unknown, or it is that of the other format.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder of <paramref name="path"/> does not exist.</exception>
    public static void Save(nn.Module model, string path, CheckpointFormat format)
    {
        ArgumentNullException.ThrowIfNull(model);
        var fullPath = PrepareTarget(path, format);

        using var scope = torch.NewDisposeScope();   // frees the detached CPU views made here, never the module's tensors
        var entries = new List<(string Name, Tensor Tensor)>();
        foreach (var (name, tensor) in model.state_dict())
            entries.Add((name, Writable(tensor)));
        Write(fullPath, path, entries, format, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>
    /// Writes the values held by <paramref name="weights"/> to <paramref name="path"/>, in the same layout as
    /// <see cref="Save(nn.Module, string, CheckpointFormat)"/> of the module they were captured from. A safetensors
    /// file also records the snapshot's step and value in its metadata (<c>"step"</c>, <c>"value"</c>).
    /// </summary>
    /// <param name="weights">The snapshot to save.</param>
    /// <param name="path">The file to write: <c>.pt</c>, <c>.pth</c> or <c>.bin</c> for PyTorch, <c>.safetensors</c> for safetensors.</param>
    /// <param name="format">The format to write; it must agree with the extension.</param>
    /// <exception cref="ArgumentException">The path is empty, its extension is unknown, or it is that of the other format.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder of <paramref name="path"/> does not exist.</exception>
    /// <exception cref="ObjectDisposedException">The snapshot was disposed.</exception>
    public static void Save(WeightSnapshot weights, string path, CheckpointFormat format)
    {
        ArgumentNullException.ThrowIfNull(weights);
        var fullPath = PrepareTarget(path, format);

        // The snapshot's CPU copies are contiguous with storage offset 0: written as they are, not disposed here.
        var entries = weights.AsDictionary().Select(kv => (kv.Key, kv.Value)).ToList();
        var metadata = new Dictionary<string, string>
        {
            ["format"] = "pt",
            ["step"] = weights.Step.ToString(CultureInfo.InvariantCulture),
            ["value"] = weights.Value.ToString("R", CultureInfo.InvariantCulture),
        };
        Write(fullPath, path, entries, format, metadata);
    }

    /// <summary>
    /// Writes named tensors of any shape to a safetensors file, for analysis outside .NET (for example a window of
    /// gradients: <c>"0.weight"</c> -> a [K, ...shape] tensor), read in Python with
    /// <c>safetensors.torch.load_file(path)</c> or <c>safetensors.safe_open(path, "pt").metadata()</c>.
    /// </summary>
    /// <remarks>
    /// This class writes the format itself: an unsigned 64-bit little-endian header length N, N bytes of JSON
    /// <c>{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}</c> padded with spaces to a
    /// multiple of 8, then each tensor's row-major little-endian bytes. Tensors are laid out by decreasing element
    /// size (in the dictionary's order within a size), so each starts at a file offset that is a multiple of its
    /// element size, and the byte ranges tile the data region exactly. Tensors on an accelerator or non-contiguous
    /// ones are copied to contiguous CPU tensors for writing; the given tensors are neither modified nor disposed.
    /// Supported dtypes: float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool.
    /// </remarks>
    /// <param name="tensors">The tensors by name; a name may not be <c>"__metadata__"</c>.</param>
    /// <param name="path">The file to write; it must end in <c>.safetensors</c>. It is replaced atomically.</param>
    /// <param name="metadata">Optional string metadata, stored under <c>"__metadata__"</c>.</param>
    /// <exception cref="ArgumentException">The path is empty or does not end in <c>.safetensors</c>, or a name is empty, reserved or repeated.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder of <paramref name="path"/> does not exist.</exception>
    /// <exception cref="NotSupportedException">A tensor has a dtype the format does not cover here.</exception>
    public static void SaveTensors(IReadOnlyDictionary<string, Tensor> tensors, string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var fullPath = PrepareTarget(path, CheckpointFormat.Safetensors);

        using var scope = torch.NewDisposeScope();
        var entries = new List<(string Name, Tensor Tensor)>(tensors.Count);
        foreach (var (name, tensor) in tensors)
        {
            if (tensor is null) throw new ArgumentException($"The tensor '{name}' is null.", nameof(tensors));
            entries.Add((name, Writable(tensor)));
        }
        WriteAtomically(fullPath, path, stream => SafetensorsCodec.Write(stream, entries, metadata));
    }

    /// <summary>
    /// Loads a state_dict file into <paramref name="model"/>'s own parameters and buffers, in place. The format
    /// comes from the extension (<c>.pt</c>, <c>.pth</c>, <c>.bin</c>: PyTorch; <c>.safetensors</c>) and is checked
    /// against the file's first bytes (a zip signature, or a safetensors header); a file with another extension is
    /// recognised by those bytes alone. PyTorch archives saved by Python with
    /// <c>torch.save(model.state_dict(), path)</c> load too (not whole pickled modules, nor the legacy non-zip format).
    /// </summary>
    /// <remarks>
    /// <para>
    /// A PyTorch archive is checked completely before any tensor is made: every zip entry's bytes against the CRC-32
    /// the archive records for it, the local headers against the central directory (names, sizes, compression), and
    /// every tensor record of <c>data.pkl</c> against the storage it names (storage type, size, shape). A damaged
    /// archive therefore fails with an <see cref="InvalidDataException"/> that says what is wrong (the corrupted
    /// entry, for a flipped byte in a tensor's data) instead of loading wrong values. Tensors saved as views
    /// (a storage offset, non-contiguous strides) and big-endian archives are refused the same way.
    /// </para>
    /// <para>
    /// A safetensors file holds no checksum: its header is checked (JSON, dtypes, shapes, byte ranges that tile the
    /// data exactly), but a changed byte inside a tensor's data cannot be detected and loads as a changed value.
    /// Keep a checksum of such files yourself where their integrity matters.
    /// </para>
    /// </remarks>
    /// <param name="model">The module to fill; left untouched if the file does not fit it.</param>
    /// <param name="path">The file to read.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="DirectoryNotFoundException">Its folder does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is neither format, is corrupted (for a PyTorch archive: an entry fails its CRC-32 check, its zip structure or its pickle is damaged), or its content is not the format its extension names; the message names the file and what is wrong.</exception>
    /// <exception cref="InvalidOperationException">The file's state does not fit the module; the message names the missing, extra and mismatched entries.</exception>
    public static void Load(nn.Module model, string path)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var fullPath = Path.GetFullPath(path);
        if (!File.Exists(fullPath))
        {
            var folder = Path.GetDirectoryName(fullPath);
            if (folder is not null && !Directory.Exists(folder))
                throw new DirectoryNotFoundException($"Cannot load '{path}': the folder '{folder}' does not exist.");
            throw new FileNotFoundException($"Cannot load '{path}': the file does not exist.", fullPath);
        }

        using var stream = new FileStream(fullPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var byExtension = FormatOf(fullPath);
        var byContent = Sniff(stream);
        var format = byExtension ?? byContent ?? throw new InvalidDataException(
            $"Cannot load '{path}': its extension '{Path.GetExtension(fullPath)}' is not one of {KnownExtensions}, " +
            "and its content is neither a PyTorch checkpoint (a zip archive) nor a safetensors file.");
        if (byContent is not null && byContent != format)
            throw new InvalidDataException(
                $"Cannot load '{path}': its extension names a {format} checkpoint but the file holds a {byContent} checkpoint.");

        using var scope = torch.NewDisposeScope();   // frees every tensor read from the file
        var state = format == CheckpointFormat.PyTorch ? ReadPyTorch(stream, path) : ReadSafetensors(stream, path);
        ModuleState.CopyInto(model, state, $"'{path}'", "the file");
    }

    private static Dictionary<string, Tensor> ReadPyTorch(FileStream stream, string path)
    {
        stream.Position = 0;
        Span<byte> signature = stackalloc byte[4];
        if (stream.Length < 4 || stream.ReadAtLeast(signature, 4, throwOnEndOfStream: false) < 4 || !IsZipSignature(signature))
            throw new InvalidDataException(
                $"'{path}' is not a valid PyTorch checkpoint: it is not a zip archive (the legacy non-zip torch.save format is not supported either).");

        // Everything PyBridge will read is checked first (zip structure, CRC-32 of every entry, the tensor records of
        // data.pkl), so that a damaged file fails here, with what is wrong, and no unchecked shape reaches TorchSharp.
        Dictionary<string, PyTorchArchive.TensorRecord> expected;
        Dictionary<string, Tensor> state;
        try
        {
            expected = PyTorchArchive.Verify(stream, path);
            stream.Position = 0;
            Hashtable table = PyTorchUnpickler.UnpickleStateDict(stream, leaveOpen: true);
            state = new Dictionary<string, Tensor>(table.Count, StringComparer.Ordinal);
            foreach (DictionaryEntry entry in table)
            {
                if (entry.Key is not string name || entry.Value is not Tensor tensor)
                    throw new InvalidDataException($"'{path}' is not a state_dict checkpoint: it maps {entry.Key} to {entry.Value?.GetType().Name ?? "null"}, not a name to a tensor.");
                state.Add(name, tensor);
            }
        }
        catch (Exception e) when (e is not InvalidDataException and not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' could not be read as a PyTorch checkpoint: {e.Message}", e);
        }
        catch (InvalidDataException e) when (!e.Message.Contains(path, StringComparison.Ordinal))
        {
            throw new InvalidDataException($"'{path}' could not be read as a PyTorch checkpoint (corrupted zip archive?): {e.Message}", e);
        }

        // PyBridge parsed the pickle on its own: it must have read what was checked, tensor for tensor.
        foreach (var (name, tensor) in state)
        {
            if (!expected.TryGetValue(name, out var record) || record.DType != tensor.dtype || !record.Shape.AsSpan().SequenceEqual(tensor.shape))
                throw new InvalidDataException(
                    $"'{path}' was read inconsistently: PyBridge read '{name}' as {tensor.dtype} {ModuleState.Shape(tensor.shape)}, which is not what its checked record describes.");
        }
        if (state.Count != expected.Count)
            throw new InvalidDataException(
                $"'{path}' was read inconsistently: PyBridge read {state.Count} tensors where the checked pickle holds {expected.Count} ({string.Join(", ", expected.Keys.Except(state.Keys))} missing).");
        return state;
    }

    /// <summary>Reads a safetensors file's tensors (on the CPU) and its <c>__metadata__</c>, checking the header first.</summary>
    internal static (Dictionary<string, Tensor> Tensors, IReadOnlyDictionary<string, string> Metadata) LoadTensors(string path)
    {
        using var stream = File.OpenRead(path);
        var header = SafetensorsCodec.ReadHeader(stream, path);
        if (header.Entries.Count == 0) return ([], header.Metadata);
        stream.Position = 0;
        return (ReadSafetensors(stream, path), header.Metadata);
    }

    private static Dictionary<string, Tensor> ReadSafetensors(FileStream stream, string path)
    {
        // Validate the header here (PyBridge trusts it: a corrupted length would have it allocate up to 2 GB, and
        // ranges that do not match the shapes are not all caught), then let PyBridge read the tensors.
        SafetensorsCodec.ReadHeader(stream, path);
        stream.Position = 0;
        try
        {
            return TorchSharp.PyBridge.Safetensors.LoadStateDict(stream, leaveOpen: true);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' could not be read as a safetensors file: {e.Message}", e);
        }
    }

    /// <summary>A detached, contiguous CPU tensor with storage offset 0 holding <paramref name="tensor"/>'s values (in the current dispose scope).</summary>
    private static Tensor Writable(Tensor tensor)
    {
        var t = tensor.detach();
        if (t.device_type != DeviceType.CPU) t = t.cpu();
        if (!t.is_contiguous()) t = t.contiguous();
        // PyBridge's pickler records the storage offset but writes only the tensor's own bytes: a view into a larger
        // storage must be copied out.
        if (t.storage_offset() != 0) t = t.clone();
        return t;
    }

    private static void Write(string fullPath, string path, List<(string Name, Tensor Tensor)> entries, CheckpointFormat format, IReadOnlyDictionary<string, string> metadata)
    {
        if (format == CheckpointFormat.PyTorch)
        {
            var dictionary = new Dictionary<string, Tensor>(entries.Count, StringComparer.Ordinal);
            foreach (var (name, tensor) in entries) dictionary.Add(name, tensor);
            WriteAtomically(fullPath, path, stream => PyTorchPickler.PickleStateDict(stream, dictionary, leaveOpen: true));
        }
        else
        {
            WriteAtomically(fullPath, path, stream => SafetensorsCodec.Write(stream, entries, metadata));
        }
    }

    /// <summary>Writes through a temporary file in the destination's folder, flushed to disk, then moved over the destination.</summary>
    private static void WriteAtomically(string fullPath, string path, Action<Stream> write)
    {
        var folder = Path.GetDirectoryName(fullPath)!;
        var temporary = Path.Combine(folder, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, fullPath, overwrite: true);
        }
        catch (Exception e)
        {
            TryDelete(temporary);
            if (e is IOException && !e.Message.Contains(path, StringComparison.Ordinal))
                throw new IOException($"Cannot save '{path}': {e.Message}", e);
            throw;
        }
    }

    private static void TryDelete(string file)
    {
        try { File.Delete(file); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Checks the destination before anything is written; returns its full path.</summary>
    private static string PrepareTarget(string path, CheckpointFormat format)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!Enum.IsDefined(format))
            throw new ArgumentOutOfRangeException(nameof(format), format, "Unknown checkpoint format.");
        var fullPath = Path.GetFullPath(path);
        var extension = Path.GetExtension(fullPath);
        var byExtension = FormatOf(fullPath)
            ?? throw new ArgumentException(
                $"Cannot save '{path}': its extension '{extension}' is not one of {KnownExtensions}.", nameof(path));
        if (byExtension != format)
            throw new ArgumentException(
                $"Cannot save '{path}' as {format}: its extension '{extension}' is that of a {byExtension} checkpoint.", nameof(path));

        var folder = Path.GetDirectoryName(fullPath);
        if (folder is null || !Directory.Exists(folder))
            throw new DirectoryNotFoundException($"Cannot save '{path}': the folder '{folder}' does not exist.");
        if (Directory.Exists(fullPath))
            throw new IOException($"Cannot save '{path}': it is a folder.");
        return fullPath;
    }

    private static CheckpointFormat? FormatOf(string path)
    {
        var extension = Path.GetExtension(path);
        if (string.Equals(extension, SafetensorsExtension, StringComparison.OrdinalIgnoreCase)) return CheckpointFormat.Safetensors;
        foreach (var e in PyTorchExtensions)
            if (string.Equals(extension, e, StringComparison.OrdinalIgnoreCase)) return CheckpointFormat.PyTorch;
        return null;
    }

    /// <summary>The format the file's first bytes announce, if any; leaves the stream at its start.</summary>
    private static CheckpointFormat? Sniff(FileStream stream)
    {
        Span<byte> head = stackalloc byte[9];
        stream.Position = 0;
        int read = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        stream.Position = 0;
        if (read >= 4 && IsZipSignature(head)) return CheckpointFormat.PyTorch;
        if (SafetensorsCodec.HasSignature(head[..read], stream.Length)) return CheckpointFormat.Safetensors;
        return null;
    }

    private static bool IsZipSignature(ReadOnlySpan<byte> head) =>
        head[0] == (byte)'P' && head[1] == (byte)'K' && head[2] == 3 && head[3] == 4;
}

using System.Collections;
using System.Globalization;
using System.IO.Compression;
using System.IO.Hashing;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>
/// Saves and loads a module's state (parameters and persistent buffers, by state_dict name) as files Python reads:
/// PyTorch state_dict archives (<c>torch.load</c>) and safetensors files.
/// </summary>
/// <remarks>
/// TorchSharp.PyBridge reads and writes both formats, except that safetensors files are written here (PyBridge 1.4.4
/// writes no <c>__metadata__</c> and does not align the data). Writes go through a temporary file moved over the
/// destination, so a failed save leaves the previous file. A load checks the whole file against the module before it
/// copies anything, in place, so parameters keep their device, dtype and <c>requires_grad</c>.
/// </remarks>
public static class CheckpointFile
{
    private const string KnownExtensions = ".pt, .pth or .bin (PyTorch) or .safetensors";

    /// <summary>
    /// Writes <paramref name="model"/>'s parameters and persistent buffers to <paramref name="path"/> in
    /// <paramref name="format"/> (a safetensors file gets the metadata <c>{"format": "pt"}</c>), replacing it atomically.
    /// </summary>
    /// <param name="model">The module to save; it is not modified.</param>
    /// <param name="path"><c>.pt</c>, <c>.pth</c> or <c>.bin</c> for PyTorch, <c>.safetensors</c> for safetensors.</param>
    /// <param name="format">The format to write; it must agree with the extension (else <see cref="ArgumentException"/>).</param>
    /// <exception cref="DirectoryNotFoundException">The folder of <paramref name="path"/> does not exist.</exception>
    public static void Save(nn.Module model, string path, CheckpointFormat format)
    {
        ArgumentNullException.ThrowIfNull(model);
        var fullPath = PrepareTarget(path, format);
        using var scope = torch.NewDisposeScope();   // frees the CPU copies made here, never the module's tensors
        var state = model.state_dict().ToDictionary(kv => kv.Key, kv => Writable(kv.Value), StringComparer.Ordinal);
        Write(fullPath, path, state, format, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>
    /// Writes the values held by <paramref name="weights"/> as <see cref="Save(nn.Module, string, CheckpointFormat)"/>
    /// writes the module they came from; a safetensors file also records <c>"step"</c> and <c>"value"</c> in its metadata.
    /// </summary>
    /// <param name="weights">The snapshot to save.</param>
    /// <param name="path">As for the module overload.</param>
    /// <param name="format">As for the module overload.</param>
    public static void Save(WeightSnapshot weights, string path, CheckpointFormat format)
    {
        ArgumentNullException.ThrowIfNull(weights);
        var fullPath = PrepareTarget(path, format);
        var metadata = new Dictionary<string, string>
        {
            ["format"] = "pt",
            ["step"] = weights.Step.ToString(CultureInfo.InvariantCulture),
            ["value"] = weights.Value.ToString("R", CultureInfo.InvariantCulture),
        };
        Write(fullPath, path, weights.AsDictionary(), format, metadata);   // contiguous CPU copies: written as they are
    }

    /// <summary>
    /// Writes named tensors of any shape (for example a window of gradients) to a safetensors file with optional string
    /// metadata, for <c>safetensors.torch.load_file</c>. The tensors are neither modified nor disposed.
    /// </summary>
    /// <param name="tensors">The tensors by name; a name may not be <c>"__metadata__"</c>.</param>
    /// <param name="path">The file to write, ending in <c>.safetensors</c>; it is replaced atomically.</param>
    /// <param name="metadata">Optional string metadata, stored under <c>"__metadata__"</c>.</param>
    /// <exception cref="NotSupportedException">A tensor's dtype has no safetensors name (complex, for example).</exception>
    public static void SaveTensors(IReadOnlyDictionary<string, Tensor> tensors, string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var fullPath = PrepareTarget(path, CheckpointFormat.Safetensors);
        using var scope = torch.NewDisposeScope();
        var writable = tensors.ToDictionary(kv => kv.Key,
            kv => Writable(kv.Value ?? throw new ArgumentException($"The tensor '{kv.Key}' is null.", nameof(tensors))));
        WriteAtomically(fullPath, path, stream => SafetensorsCodec.Write(stream, writable, metadata));
    }

    /// <summary>
    /// Loads a state_dict file (PyTorch archive or safetensors, by extension, checked against the first bytes; by those
    /// bytes alone for another extension) into <paramref name="model"/>'s own parameters and buffers, in place.
    /// </summary>
    /// <remarks>
    /// A PyTorch archive's entries are checked against the CRC-32s of its zip directory first, so a damaged archive is
    /// refused instead of loading other values. A safetensors file has no checksum: its header is checked, but a
    /// changed byte in a tensor's data loads as a changed value.
    /// </remarks>
    /// <param name="model">The module to fill; left untouched if the file does not fit it.</param>
    /// <param name="path">The file to read.</param>
    /// <exception cref="InvalidDataException">The file is corrupted, of neither format, or not the format its extension names; the message names the file.</exception>
    /// <exception cref="InvalidOperationException">The file's state does not fit the module; the message names the mismatches.</exception>
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
        var byContent = Sniff(stream);
        var format = FormatOf(fullPath) ?? byContent;
        if (format is null || byContent != format)
            throw new InvalidDataException($"Cannot load '{path}': " + (byContent is null
                ? "its content is neither a PyTorch archive (zip; the legacy torch.save format is not supported) nor a safetensors file."
                : $"its extension names a {format} checkpoint but the file holds a {byContent} checkpoint."));

        using var scope = torch.NewDisposeScope();   // frees every tensor read from the file
        var state = format is CheckpointFormat.PyTorch ? ReadPyTorch(stream, path) : ReadSafetensors(stream, path).Tensors;
        ModuleState.CopyInto(model, state, $"'{path}'", "the file");
    }

    private static Dictionary<string, Tensor> ReadPyTorch(FileStream stream, string path)
    {
        var state = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            VerifyZip(stream, path);
            stream.Position = 0;
            foreach (DictionaryEntry entry in PyTorchUnpickler.UnpickleStateDict(stream, leaveOpen: true))
            {
                if (entry.Key is not string name || entry.Value is not Tensor tensor)
                    throw new InvalidDataException($"'{path}' is not a state_dict: it maps '{entry.Key}' to {entry.Value?.GetType().Name ?? "null"}, not a name to a tensor.");
                state.Add(name, tensor);
            }
            return state;
        }
        catch (Exception e) when (e is not OutOfMemoryException && !(e is InvalidDataException && e.Message.Contains(path, StringComparison.Ordinal)))
        {
            throw new InvalidDataException($"'{path}' could not be read as a PyTorch state_dict: {e.Message}", e);
        }
    }

    /// <summary>
    /// Checks every zip entry's bytes against the size and CRC-32 the zip directory records (ZipArchive checks neither),
    /// and refuses repeated names and big-endian archives (which PyBridge would read as little-endian).
    /// </summary>
    private static void VerifyZip(Stream stream, string path)
    {
        using var archive = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        var names = new HashSet<string>(StringComparer.Ordinal);
        var buffer = new byte[1 << 16];
        foreach (var entry in archive.Entries)
        {
            var crc = new Crc32();
            long length = 0;
            try
            {
                using var data = entry.Open();
                for (int n; (n = data.Read(buffer)) > 0; length += n) crc.Append(buffer.AsSpan(0, n));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidDataException($"'{path}' is corrupted: its entry '{entry.FullName}' cannot be read ({e.Message}).", e);
            }
            if (length != entry.Length || crc.GetCurrentHashAsUInt32() != entry.Crc32)
                throw new InvalidDataException($"'{path}' is corrupted: its entry '{entry.FullName}' fails its CRC-32 check ({length} bytes, CRC-32 {crc.GetCurrentHashAsUInt32():x8}; the zip directory records {entry.Length} bytes, {entry.Crc32:x8}).");
            if (!names.Add(entry.FullName))
                throw new InvalidDataException($"'{path}' is not a valid PyTorch checkpoint: it holds two entries named '{entry.FullName}'.");
            if (entry.FullName.EndsWith("/byteorder", StringComparison.Ordinal))
            {
                using var reader = new StreamReader(entry.Open());
                if (reader.ReadToEnd().Trim() is var order && order != "little")
                    throw new InvalidDataException($"'{path}' is a '{order}'-endian archive; only little-endian ones are supported.");
            }
        }
    }

    /// <summary>Reads a safetensors file's tensors (on the CPU) and its <c>__metadata__</c>, checking the header first.</summary>
    internal static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) LoadTensors(string path)
    {
        using var stream = File.OpenRead(path);
        return ReadSafetensors(stream, path);
    }

    private static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) ReadSafetensors(Stream stream, string path)
    {
        var metadata = SafetensorsCodec.ReadHeader(stream, path);   // PyBridge trusts the header's lengths and ranges
        stream.Position = 0;
        try
        {
            return (TorchSharp.PyBridge.Safetensors.LoadStateDict(stream, leaveOpen: true), metadata);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' could not be read as a safetensors file: {e.Message}", e);
        }
    }

    /// <summary>A detached, contiguous CPU tensor with storage offset 0 (PyBridge's pickler writes a view's own bytes only).</summary>
    private static Tensor Writable(Tensor tensor)
    {
        var t = tensor.detach();
        if (t.device_type != DeviceType.CPU) t = t.cpu();
        if (!t.is_contiguous()) t = t.contiguous();
        return t.storage_offset() == 0 ? t : t.clone();
    }

    private static void Write(string fullPath, string path, Dictionary<string, Tensor> state, CheckpointFormat format, IReadOnlyDictionary<string, string> metadata) =>
        WriteAtomically(fullPath, path, stream =>
        {
            if (format == CheckpointFormat.PyTorch) PyTorchPickler.PickleStateDict(stream, state, leaveOpen: true);
            else SafetensorsCodec.Write(stream, state, metadata);
        });

    /// <summary>Writes a temporary file in the destination's folder, flushes it to disk, then moves it over the destination.</summary>
    private static void WriteAtomically(string fullPath, string path, Action<Stream> write)
    {
        var temporary = Path.Combine(Path.GetDirectoryName(fullPath)!, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
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
            try { File.Delete(temporary); } catch (Exception d) when (d is IOException or UnauthorizedAccessException) { }
            if (e is IOException && !e.Message.Contains(path, StringComparison.Ordinal))
                throw new IOException($"Cannot save '{path}': {e.Message}", e);
            throw;
        }
    }

    /// <summary>Checks the destination before anything is written; returns its full path.</summary>
    private static string PrepareTarget(string path, CheckpointFormat format)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!Enum.IsDefined(format)) throw new ArgumentOutOfRangeException(nameof(format), format, "Unknown checkpoint format.");
        var fullPath = Path.GetFullPath(path);
        var byExtension = FormatOf(fullPath)
            ?? throw new ArgumentException($"Cannot save '{path}': its extension is not one of {KnownExtensions}.", nameof(path));
        if (byExtension != format)
            throw new ArgumentException($"Cannot save '{path}' as {format}: its extension is that of a {byExtension} checkpoint.", nameof(path));
        var folder = Path.GetDirectoryName(fullPath);
        if (folder is null || !Directory.Exists(folder))
            throw new DirectoryNotFoundException($"Cannot save '{path}': the folder '{folder}' does not exist.");
        if (Directory.Exists(fullPath)) throw new IOException($"Cannot save '{path}': it is a folder.");
        return fullPath;
    }

    private static CheckpointFormat? FormatOf(string path) => Path.GetExtension(path).ToLowerInvariant() switch
    {
        ".safetensors" => CheckpointFormat.Safetensors,
        ".pt" or ".pth" or ".bin" => CheckpointFormat.PyTorch,
        _ => null,
    };

    /// <summary>The format the file's first bytes announce (a zip signature, or a safetensors header), if any; leaves the stream at its start.</summary>
    private static CheckpointFormat? Sniff(FileStream stream)
    {
        Span<byte> head = stackalloc byte[9];
        stream.Position = 0;
        int read = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        stream.Position = 0;
        if (read >= 4 && head[..4].SequenceEqual("PK\u0003\u0004"u8)) return CheckpointFormat.PyTorch;
        return SafetensorsCodec.HasSignature(head[..read], stream.Length) ? CheckpointFormat.Safetensors : null;
    }
}

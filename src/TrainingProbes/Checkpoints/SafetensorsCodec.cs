using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>One tensor entry of a safetensors header.</summary>
internal sealed record SafetensorsEntry(string Name, ScalarType DType, long[] Shape, long Begin, long End);

/// <summary>A parsed and validated safetensors header.</summary>
internal sealed record SafetensorsHeader(
    IReadOnlyList<SafetensorsEntry> Entries,
    IReadOnlyDictionary<string, string> Metadata,
    long DataStart);

/// <summary>
/// The safetensors layout (https://github.com/huggingface/safetensors): an unsigned 64-bit little-endian header
/// length N, N bytes of UTF-8 JSON <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string:
/// string}}</c>, then the data region, in which every tensor's bytes (row-major, little-endian) lie at
/// <c>[begin, end)</c> relative to the region's start; the entries tile the region exactly.
/// </summary>
/// <remarks>
/// The writer follows the reference implementation's layout choices: the header is padded with spaces to a multiple
/// of 8 bytes, and tensors are laid out by decreasing element size, so every tensor starts at a file offset that is
/// a multiple of its element size (memory-mapping readers need no realigning copy). TorchSharp.PyBridge 1.4.4's
/// <c>Safetensors.SaveStateDict</c> does neither and writes no <c>__metadata__</c>, which is why this library writes
/// safetensors files itself (it still reads them with PyBridge).
/// </remarks>
internal static class SafetensorsCodec
{
    /// <summary>The header size limit of the reference implementation (100 MB).</summary>
    internal const long MaxHeaderBytes = 100_000_000;

    internal const string MetadataKey = "__metadata__";

    private static readonly (ScalarType Type, string Name, int Size)[] DTypes =
    [
        (ScalarType.Float64, "F64", 8),
        (ScalarType.Float32, "F32", 4),
        (ScalarType.Float16, "F16", 2),
        (ScalarType.BFloat16, "BF16", 2),
        (ScalarType.Int64, "I64", 8),
        (ScalarType.Int32, "I32", 4),
        (ScalarType.Int16, "I16", 2),
        (ScalarType.Int8, "I8", 1),
        (ScalarType.Byte, "U8", 1),
        (ScalarType.Bool, "BOOL", 1),
    ];

    internal static bool TryDescribe(ScalarType type, out string name, out int size)
    {
        foreach (var d in DTypes)
        {
            if (d.Type == type) { name = d.Name; size = d.Size; return true; }
        }
        name = ""; size = 0;
        return false;
    }

    private static bool TryParse(string name, out ScalarType type, out int size)
    {
        foreach (var d in DTypes)
        {
            if (d.Name == name) { type = d.Type; size = d.Size; return true; }
        }
        type = default; size = 0;
        return false;
    }

    /// <summary>
    /// Whether the first bytes of a file look like a safetensors header: a length N that fits in the file, followed
    /// by a JSON object's opening brace.
    /// </summary>
    internal static bool HasSignature(ReadOnlySpan<byte> head, long fileLength)
    {
        if (head.Length < 9) return false;
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(head);
        return n >= 2 && n <= MaxHeaderBytes && (long)n <= fileLength - 8 && head[8] == (byte)'{';
    }

    /// <summary>
    /// Reads and validates the header at the stream's start: known dtypes, non-negative shapes, byte ranges that
    /// match the shapes and tile the data region exactly. Leaves the stream at the data region's start.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not a valid safetensors file; the message names it.</exception>
    internal static SafetensorsHeader ReadHeader(Stream stream, string path)
    {
        Exception Invalid(string reason) =>
            new InvalidDataException($"'{path}' is not a valid safetensors file: {reason}.");

        long fileLength = stream.Length;
        if (fileLength < 8) throw Invalid($"it is {fileLength} bytes long, shorter than the 8-byte header length");

        Span<byte> lengthBytes = stackalloc byte[8];
        stream.Position = 0;
        stream.ReadExactly(lengthBytes);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (n < 2 || n > MaxHeaderBytes || (long)n > fileLength - 8)
            throw Invalid($"its header length {n} does not fit in the file ({fileLength} bytes, at most {MaxHeaderBytes} bytes of header)");

        var json = new byte[(int)n];
        stream.ReadExactly(json);
        long dataStart = 8 + (long)n;
        long dataLength = fileLength - dataStart;

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{path}' is not a valid safetensors file: its header is not JSON ({e.Message}).", e);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw Invalid("its header is not a JSON object");

            var entries = new List<SafetensorsEntry>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (!seen.Add(property.Name)) throw Invalid($"its header names '{property.Name}' twice");
                if (property.Name == MetadataKey)
                {
                    if (property.Value.ValueKind != JsonValueKind.Object)
                        throw Invalid($"its {MetadataKey} is not an object");
                    foreach (var m in property.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String)
                            throw Invalid($"its {MetadataKey} value '{m.Name}' is not a string");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                entries.Add(ParseEntry(property, Invalid));
            }

            entries.Sort((a, b) => a.Begin.CompareTo(b.Begin));
            long expected = 0;
            foreach (var e in entries)
            {
                if (e.Begin != expected)
                    throw Invalid($"the bytes of '{e.Name}' start at {e.Begin}, not at {expected} where the previous tensor ends (the data offsets must tile the data region)");
                expected = e.End;
            }
            if (expected != dataLength)
                throw Invalid($"its tensors cover {expected} bytes but the data region after the header is {dataLength} bytes (truncated or trailing data)");

            return new SafetensorsHeader(entries, metadata, dataStart);
        }
    }

    private static SafetensorsEntry ParseEntry(JsonProperty property, Func<string, Exception> invalid)
    {
        var name = property.Name;
        var value = property.Value;
        if (value.ValueKind != JsonValueKind.Object) throw invalid($"the entry '{name}' is not an object");

        if (!value.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw invalid($"the entry '{name}' has no dtype");
        var dtypeName = dtypeElement.GetString()!;
        if (!TryParse(dtypeName, out var dtype, out var size))
            throw invalid($"the entry '{name}' has the unsupported dtype '{dtypeName}'");

        if (!value.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw invalid($"the entry '{name}' has no shape");
        var shape = new long[shapeElement.GetArrayLength()];
        long count = 1;
        int i = 0;
        foreach (var d in shapeElement.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out var dim) || dim < 0)
                throw invalid($"the entry '{name}' has an invalid shape");
            shape[i++] = dim;
            try { count = checked(count * dim); }
            catch (OverflowException) { throw invalid($"the entry '{name}' has a shape too large"); }
        }

        if (!value.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw invalid($"the entry '{name}' has no data_offsets pair");
        var begin = offsets[0];
        var end = offsets[1];
        if (begin.ValueKind != JsonValueKind.Number || !begin.TryGetInt64(out var b) || b < 0 ||
            end.ValueKind != JsonValueKind.Number || !end.TryGetInt64(out var e) || e < b)
            throw invalid($"the entry '{name}' has invalid data_offsets");

        long bytes;
        try { bytes = checked(count * size); }
        catch (OverflowException) { throw invalid($"the entry '{name}' has a shape too large"); }
        if (e - b != bytes)
            throw invalid($"the entry '{name}' spans {e - b} bytes but its shape [{string.Join(", ", shape)}] of {dtypeName} needs {bytes}");

        return new SafetensorsEntry(name, dtype, shape, b, e);
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> (each on the CPU and contiguous; little-endian host) as one
    /// safetensors file. Tensors are laid out by decreasing element size, in the given order within a size, and the
    /// header is padded with spaces to a multiple of 8 bytes.
    /// </summary>
    internal static void Write(Stream stream, IReadOnlyList<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Writing safetensors files needs a little-endian machine.");

        var layout = new List<(string Name, Tensor Tensor, string DType, int Size, long Bytes)>(tensors.Count);
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, tensor) in tensors)
        {
            if (string.IsNullOrEmpty(name)) throw new ArgumentException("A tensor name is null or empty.", nameof(tensors));
            if (name == MetadataKey) throw new ArgumentException($"'{MetadataKey}' is reserved and cannot name a tensor.", nameof(tensors));
            if (!names.Add(name)) throw new ArgumentException($"The tensor name '{name}' appears twice.", nameof(tensors));
            if (!TryDescribe(tensor.dtype, out var dtype, out var size))
                throw new NotSupportedException($"The tensor '{name}' has the dtype {tensor.dtype}, which safetensors files written here do not support (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL).");
            layout.Add((name, tensor, dtype, size, tensor.NumberOfElements * size));
        }
        // Stable: OrderBy keeps the given order within an element size.
        var ordered = layout.OrderByDescending(t => t.Size).ToList();

        using var headerStream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(headerStream))
        {
            writer.WriteStartObject();
            if (metadata is not null && metadata.Count > 0)
            {
                writer.WriteStartObject(MetadataKey);
                foreach (var (key, value) in metadata)
                {
                    ArgumentNullException.ThrowIfNull(key, nameof(metadata));
                    writer.WriteString(key, value ?? throw new ArgumentException($"The metadata value of '{key}' is null.", nameof(metadata)));
                }
                writer.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in ordered)
            {
                writer.WriteStartObject(t.Name);
                writer.WriteString("dtype", t.DType);
                writer.WriteStartArray("shape");
                foreach (var d in t.Tensor.shape) writer.WriteNumberValue(d);
                writer.WriteEndArray();
                writer.WriteStartArray("data_offsets");
                writer.WriteNumberValue(offset);
                writer.WriteNumberValue(offset + t.Bytes);
                writer.WriteEndArray();
                writer.WriteEndObject();
                offset += t.Bytes;
            }
            writer.WriteEndObject();
        }

        var header = headerStream.ToArray();
        int padded = (header.Length + 7) / 8 * 8;
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        stream.Write(length);
        stream.Write(header);
        for (int i = header.Length; i < padded; i++) stream.WriteByte((byte)' ');

        foreach (var t in ordered)
        {
            if (t.Tensor.device_type != DeviceType.CPU || !t.Tensor.is_contiguous())
                throw new InvalidOperationException($"Internal error: the tensor '{t.Name}' was not made a contiguous CPU tensor before writing.");
            if (t.Bytes > 0) t.Tensor.WriteBytesToStream(stream, 1 << 16);
        }
    }
}

using System.Buffers.Binary;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>
/// The safetensors header (https://github.com/huggingface/safetensors): a little-endian u64 length N, N bytes of JSON
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}</c>, then the data region.
/// </summary>
/// <remarks>
/// Files are read by PyBridge once <see cref="ReadHeader"/> has checked what PyBridge trusts. They are written here
/// because PyBridge 1.4.4 writes no <c>__metadata__</c> (which session state and gradient exports need) and does not
/// align the data: the header is padded to 8 bytes and tensors go by decreasing element size, as the reference does.
/// </remarks>
internal static class SafetensorsCodec
{
    private const long MaxHeaderBytes = 100_000_000;   // the reference implementation's limit
    private const string MetadataKey = "__metadata__";

    private static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1), ["BOOL"] = (ScalarType.Bool, 1),
    };

    /// <summary>Whether a file starts like a safetensors file: a length that fits the file, then a JSON object.</summary>
    internal static bool HasSignature(ReadOnlySpan<byte> head, long fileLength) =>
        head.Length >= 9 && BinaryPrimitives.ReadUInt64LittleEndian(head) is var n && n >= 2 && n <= MaxHeaderBytes
        && (long)n <= fileLength - 8 && head[8] == (byte)'{';

    /// <summary>
    /// Checks the header at the stream's start (known dtypes, shapes that match their byte ranges, ranges that tile the
    /// data region exactly) and returns its metadata.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not a valid safetensors file; the message names it.</exception>
    internal static Dictionary<string, string> ReadHeader(Stream stream, string path)
    {
        InvalidDataException Invalid(string reason, Exception? inner = null) => new($"'{path}' is not a valid safetensors file: {reason}.", inner);
        Span<byte> head = stackalloc byte[9];
        stream.Position = 0;
        if (!HasSignature(head[..stream.ReadAtLeast(head, 9, throwOnEndOfStream: false)], stream.Length))
            throw Invalid($"its first bytes are not a header length that fits the file ({stream.Length} bytes) and a JSON object");
        var json = new byte[BinaryPrimitives.ReadUInt64LittleEndian(head)];
        stream.Position = 8;
        stream.ReadExactly(json);

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var ranges = new List<(long Begin, long End, string Name)>();
        try
        {
            using var document = JsonDocument.Parse(json);
            foreach (var entry in document.RootElement.EnumerateObject())
            {
                if (entry.Name == MetadataKey)
                {
                    foreach (var m in entry.Value.EnumerateObject()) metadata[m.Name] = m.Value.GetString()!;
                    continue;
                }
                var e = entry.Value;
                if (!DTypes.TryGetValue(e.GetProperty("dtype").GetString()!, out var dtype))
                    throw Invalid($"'{entry.Name}' has the unsupported dtype {e.GetProperty("dtype")}");
                long bytes = dtype.Size, begin = e.GetProperty("data_offsets")[0].GetInt64(), end = e.GetProperty("data_offsets")[1].GetInt64();
                foreach (var d in e.GetProperty("shape").EnumerateArray())
                    bytes = d.GetInt64() >= 0 ? checked(bytes * d.GetInt64()) : throw Invalid($"'{entry.Name}' has a negative dimension");
                if (begin < 0 || end - begin != bytes)
                    throw Invalid($"'{entry.Name}' spans the bytes [{begin}, {end}) but its shape {e.GetProperty("shape")} of {e.GetProperty("dtype")} needs {bytes}");
                if (ranges.Any(r => r.Name == entry.Name)) throw Invalid($"its header names '{entry.Name}' twice");
                ranges.Add((begin, end, entry.Name));
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or IndexOutOfRangeException or FormatException or OverflowException)
        {
            throw Invalid($"its header is malformed ({e.Message})", e);
        }

        long covered = 0, dataLength = stream.Length - 8 - json.Length;
        foreach (var (begin, end, name) in ranges.OrderBy(r => r.Begin))
            covered = begin == covered ? end : throw Invalid($"the bytes of '{name}' start at {begin}, not at {covered} where the previous tensor ends");
        if (covered != dataLength)
            throw Invalid($"its tensors cover {covered} bytes but its data region holds {dataLength} (truncated or trailing data)");
        return metadata;
    }

    /// <summary>Writes contiguous CPU tensors (on a little-endian host), padded header, by decreasing element size.</summary>
    internal static void Write(Stream stream, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("Writing safetensors files needs a little-endian machine.");
        var ordered = tensors.OrderByDescending(t => t.Value.ElementSize).ToList();   // stable within a size
        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(MetadataKey);
                foreach (var (key, value) in metadata)
                    json.WriteString(key, value ?? throw new ArgumentException($"The metadata value of '{key}' is null.", nameof(metadata)));
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, tensor) in ordered)
            {
                if (string.IsNullOrEmpty(name) || name == MetadataKey)
                    throw new ArgumentException($"'{name}' cannot name a tensor in a safetensors file.", nameof(tensors));
                var dtype = DTypes.FirstOrDefault(d => d.Value.Type == tensor.dtype).Key
                    ?? throw new NotSupportedException($"The tensor '{name}' has the dtype {tensor.dtype}, which safetensors files written here do not support ({string.Join(", ", DTypes.Keys)}).");
                json.WriteStartObject(name);
                json.WriteString("dtype", dtype);
                json.WriteStartArray("shape");
                foreach (var d in tensor.shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset += tensor.NumberOfElements * tensor.ElementSize);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }

        int padded = (int)(header.Length + 7) / 8 * 8;
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        stream.Write(length);
        stream.Write(header.GetBuffer().AsSpan(0, (int)header.Length));
        for (long i = header.Length; i < padded; i++) stream.WriteByte((byte)' ');
        foreach (var (_, tensor) in ordered)
            if (tensor.NumberOfElements > 0) tensor.WriteBytesToStream(stream, 1 << 16);
    }
}

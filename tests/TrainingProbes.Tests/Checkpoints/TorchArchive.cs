using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace TrainingProbes.Tests.Checkpoints;

/// <summary>One tensor record of a hand-written torch.save archive.</summary>
/// <param name="Name">The state_dict key.</param>
/// <param name="StorageType">The storage class, for example <c>FloatStorage</c>.</param>
/// <param name="Key">The storage's key: its bytes are the entry <c>archive/data/{Key}</c>.</param>
/// <param name="Elements">The storage size the record gives, in elements.</param>
/// <param name="Offset">The storage offset.</param>
/// <param name="Shape">The tensor's shape.</param>
/// <param name="Stride">The tensor's strides.</param>
internal sealed record TorchTensorRecord(string Name, string StorageType, string Key, long Elements, long Offset, long[] Shape, long[] Stride);

/// <summary>
/// Writes archives in the layout of Python's <c>torch.save(state_dict)</c>, independently of the library and of
/// TorchSharp.PyBridge: a protocol-2 pickle of an <c>OrderedDict</c> of <c>_rebuild_tensor_v2</c> records whose
/// storages are persistent ids, and stored (uncompressed) entries <c>archive/data.pkl</c>, <c>archive/byteorder</c>,
/// <c>archive/data/{key}</c> and <c>archive/version</c>. The zip records and CRC-32s are System.IO.Compression's, so
/// every archive written here is intact as a zip file, whatever its pickle says.
/// </summary>
internal static class TorchArchive
{
    /// <summary>Writes the archive; <paramref name="pickle"/>, when given, replaces the one made from <paramref name="tensors"/>.</summary>
    /// <param name="path">The file to create.</param>
    /// <param name="tensors">The tensor records of the state_dict.</param>
    /// <param name="storages">Each storage's bytes, by key.</param>
    /// <param name="byteOrder">The content of the byteorder record.</param>
    /// <param name="pickle">A data.pkl to write instead of the records' pickle.</param>
    /// <param name="dataDescriptors">
    /// Whether each entry's CRC-32 and sizes follow its data in a data descriptor (flag bit 3, local header sizes 0), as
    /// torch.save's writer records them; the archive is then written through a stream that cannot seek.
    /// </param>
    public static void Write(string path, IReadOnlyList<TorchTensorRecord> tensors, IReadOnlyDictionary<string, byte[]> storages,
        string byteOrder = "little", byte[]? pickle = null, bool dataDescriptors = false)
    {
        using var file = new FileStream(path, FileMode.CreateNew);
        using var zip = new ZipArchive(dataDescriptors ? new ForwardOnly(file) : file, ZipArchiveMode.Create);
        Add(zip, "archive/data.pkl", pickle ?? Pickle(tensors));
        Add(zip, "archive/byteorder", Encoding.ASCII.GetBytes(byteOrder));
        foreach (var (key, bytes) in storages) Add(zip, $"archive/data/{key}", bytes);
        Add(zip, "archive/version", "3\n"u8.ToArray());
    }

    /// <summary>A write-only stream that cannot seek, so that the zip writer appends a data descriptor to each entry.</summary>
    private sealed class ForwardOnly(Stream inner) : Stream
    {
        private long _position;
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _position; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count)
        {
            inner.Write(buffer, offset, count);
            _position += count;
        }
    }

    private static void Add(ZipArchive zip, string name, byte[] bytes)
    {
        using var stream = zip.CreateEntry(name, CompressionLevel.NoCompression).Open();
        stream.Write(bytes);
    }

    /// <summary>The pickle torch.save writes for a state_dict (protocol 2, without the memo, which is optional).</summary>
    public static byte[] Pickle(IReadOnlyList<TorchTensorRecord> tensors)
    {
        var p = new List<byte> { 0x80, 2 };                                   // PROTO 2
        Global(p, "collections", "OrderedDict");
        p.Add((byte)')');                                                     // EMPTY_TUPLE
        p.Add((byte)'R');                                                     // REDUCE
        p.Add((byte)'(');                                                     // MARK
        foreach (var t in tensors)
        {
            Unicode(p, t.Name);
            Global(p, "torch._utils", "_rebuild_tensor_v2");
            p.Add((byte)'(');
            p.Add((byte)'(');                                                 // ('storage', torch.X, key, 'cpu', n)
            Unicode(p, "storage");
            Global(p, "torch", t.StorageType);
            Unicode(p, t.Key);
            Unicode(p, "cpu");
            Int(p, t.Elements);
            p.Add((byte)'t');                                                 // TUPLE
            p.Add((byte)'Q');                                                 // BINPERSID
            Int(p, t.Offset);
            Tuple(p, t.Shape);
            Tuple(p, t.Stride);
            p.Add(0x89);                                                      // NEWFALSE: requires_grad
            Global(p, "collections", "OrderedDict");                         // backward_hooks
            p.Add((byte)')');
            p.Add((byte)'R');
            p.Add((byte)'t');
            p.Add((byte)'R');
        }
        p.Add((byte)'u');                                                     // SETITEMS
        p.Add((byte)'.');                                                     // STOP
        return [.. p];
    }

    private static void Global(List<byte> p, string module, string name)
    {
        p.Add((byte)'c');
        p.AddRange(Encoding.ASCII.GetBytes($"{module}\n{name}\n"));
    }

    private static void Unicode(List<byte> p, string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        p.Add((byte)'X');
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, bytes.Length);
        p.AddRange(length.ToArray());
        p.AddRange(bytes);
    }

    private static void Int(List<byte> p, long value)
    {
        p.Add((byte)'J');                                                     // BININT: a signed 32-bit int
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, checked((int)value));
        p.AddRange(bytes.ToArray());
    }

    private static void Tuple(List<byte> p, long[] values)
    {
        p.Add((byte)'(');
        foreach (var v in values) Int(p, v);
        p.Add((byte)'t');
    }

    /// <summary>
    /// Where each entry's data lies in a zip file, by the tests' own reader: the end record (no comment) gives the
    /// central directory, whose records give each entry's method, compressed size and local header, whose name and
    /// extra lengths give where the data starts (their sizes may be 0 when a data descriptor follows the data).
    /// </summary>
    public static List<(string Name, int Header, bool Stored, int DataStart, int DataLength)> Entries(byte[] file)
    {
        int end = file.Length - 22;
        Assert.Equal(0x06054b50u, BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(end)));
        int count = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(end + 10));
        int at = checked((int)BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(end + 16)));
        var entries = new List<(string, int, bool, int, int)>();
        for (int i = 0; i < count; i++)
        {
            Assert.Equal(0x02014b50u, BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at)));
            bool stored = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(at + 10)) == 0;
            int compressed = checked((int)BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at + 20)));
            int nameLength = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(at + 28));
            int skip = nameLength + BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(at + 30)) + BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(at + 32));
            int header = checked((int)BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at + 42)));
            var name = Encoding.UTF8.GetString(file, at + 46, nameLength);

            Assert.Equal(0x04034b50u, BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(header)));
            int start = header + 30 + BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(header + 26)) + BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(header + 28));
            entries.Add((name, header, stored, start, compressed));
            at += 46 + skip;
        }
        return entries;
    }
}

using System.Buffers;
using System.Buffers.Binary;
using System.IO.Compression;
using System.IO.Hashing;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>
/// Checks a PyTorch checkpoint (the zip archive of <c>torch.save</c>) before any of it reaches TorchSharp: the zip
/// structure, every entry's CRC-32, and the tensor records of <c>data.pkl</c>.
/// </summary>
/// <remarks>
/// <para>
/// System.IO.Compression (.NET 10) does not verify an entry's CRC-32 when it is read, and does not compare the
/// local headers with the central directory, so a flipped byte in a tensor's data, or in a size, a name or a
/// pickle, could load silently (before this check, 155 of 300 single-byte flips in a small checkpoint did).
/// </para>
/// <para>
/// The check has three parts. The zip structure is parsed here, independently of <see cref="ZipArchive"/>: the end
/// record (and its zip64 form), every central directory record and every local header, which must agree (name,
/// method, flags, CRC-32 and sizes, or the data descriptor's) and must not overlap; then <see cref="ZipArchive"/>
/// must list the same entries. Every entry is then read through <see cref="ZipArchive"/>, the reader that
/// TorchSharp.PyBridge uses too, and its length and CRC-32 (<see cref="Crc32"/>) compared with the central
/// directory's. Last, <c>data.pkl</c> is read by <see cref="StateDictPickle"/>, which only describes it, and every
/// tensor record is checked against the storage it names: a known storage type, a storage entry of the recorded size,
/// a shape whose bytes fit in it, and the layout PyBridge reads (storage offset 0, contiguous strides), so that the
/// tensors PyBridge then allocates are all of checked shapes. A <c>byteorder</c> record other than <c>little</c> is
/// refused (PyBridge would read the bytes as little-endian).
/// </para>
/// </remarks>
internal static class PyTorchArchive
{
    /// <summary>What a checked tensor record holds.</summary>
    internal sealed record TensorRecord(ScalarType DType, long[] Shape);

    private const uint LocalHeaderSignature = 0x04034b50;
    private const uint CentralHeaderSignature = 0x02014b50;
    private const uint EndSignature = 0x06054b50;
    private const uint Zip64EndSignature = 0x06064b50;
    private const uint Zip64LocatorSignature = 0x07064b50;
    private const uint DataDescriptorSignature = 0x08074b50;
    private const int EndRecordBytes = 22;
    private const int CentralHeaderBytes = 46;
    private const int LocalHeaderBytes = 30;
    private const ushort EncryptedFlag = 0x0001;
    private const ushort DataDescriptorFlag = 0x0008;
    private const ushort StoredMethod = 0;

    /// <summary>Larger central directories or pickles than this are refused rather than read into memory.</summary>
    private const int MaxInMemoryBytes = 1 << 30;

    private static readonly (string Storage, ScalarType DType, int Size)[] StorageTypes =
    [
        ("DoubleStorage", ScalarType.Float64, 8),
        ("FloatStorage", ScalarType.Float32, 4),
        ("HalfStorage", ScalarType.Float16, 2),
        ("BFloat16Storage", ScalarType.BFloat16, 2),
        ("LongStorage", ScalarType.Int64, 8),
        ("IntStorage", ScalarType.Int32, 4),
        ("ShortStorage", ScalarType.Int16, 2),
        ("CharStorage", ScalarType.Int8, 1),
        ("ByteStorage", ScalarType.Byte, 1),
        ("BoolStorage", ScalarType.Bool, 1),
        ("ComplexDoubleStorage", ScalarType.ComplexFloat64, 16),
        ("ComplexFloatStorage", ScalarType.ComplexFloat32, 8),
    ];

    /// <summary>One entry as the central directory and its local header describe it.</summary>
    private sealed class ZipRecord
    {
        public required byte[] Name { get; init; }
        public required string FullName { get; init; }
        public required ushort Flags { get; init; }
        public required ushort Method { get; init; }
        public required uint Crc { get; init; }
        public required long CompressedSize { get; init; }
        public required long Size { get; init; }
        public required long LocalHeader { get; init; }
        /// <summary>Where the entry's local header, data and data descriptor end (set by the local header check).</summary>
        public long End { get; set; }
    }

    /// <summary>
    /// Checks the archive in <paramref name="stream"/> (see the remarks of this class); returns each state_dict name
    /// with the dtype and shape its tensor must have.
    /// </summary>
    /// <exception cref="InvalidDataException">Anything does not check out; the message names the file and what is wrong.</exception>
    internal static Dictionary<string, TensorRecord> Verify(Stream stream, string path)
    {
        var records = ReadStructure(stream, path);

        byte[]? pickle = null;
        string? pickleName = null;
        string? byteOrder = null;
        var entries = new List<(string Name, long Length)>(records.Count);
        stream.Position = 0;
        ZipArchive archive;
        try
        {
            archive = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        }
        catch (InvalidDataException e)
        {
            throw Corrupted(path, $"its zip archive cannot be opened ({e.Message})", e);
        }
        using (archive)
        {
            if (archive.Entries.Count != records.Count)
                throw Corrupted(path, $"the zip reader lists {archive.Entries.Count} entries where the central directory holds {records.Count}");
            var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
            try
            {
                for (int i = 0; i < records.Count; i++)
                {
                    var entry = archive.Entries[i];
                    var record = records[i];
                    if (entry.FullName != record.FullName || entry.Crc32 != record.Crc
                        || entry.CompressedLength != record.CompressedSize || entry.Length != record.Size)
                        throw Corrupted(path, $"the zip reader reads the central directory record of '{record.FullName}' differently");

                    // PyBridge reads the first entry whose file name ends in data.pkl; that is the pickle checked here.
                    bool isPickle = pickle is null && entry.Name.EndsWith("data.pkl", StringComparison.Ordinal);
                    bool isByteOrder = byteOrder is null && (entry.FullName == "byteorder" || entry.FullName.EndsWith("/byteorder", StringComparison.Ordinal));
                    if ((isPickle || isByteOrder) && entry.Length > MaxInMemoryBytes)
                        throw Invalid(path, $"its '{entry.FullName}' is {entry.Length} bytes long, more than this loader reads into memory");
                    using var copy = isPickle || isByteOrder ? new MemoryStream((int)entry.Length) : null;
                    CheckEntry(entry, path, buffer, copy);
                    if (isPickle)
                    {
                        pickle = copy!.ToArray();
                        pickleName = entry.FullName;
                    }
                    if (isByteOrder) byteOrder = System.Text.Encoding.ASCII.GetString(copy!.ToArray()).Trim();
                    entries.Add((entry.FullName, entry.Length));
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        if (pickle is null)
            throw Invalid(path, "the zip archive has no data.pkl (it is not a torch.save archive)");
        if (byteOrder is not null && byteOrder != "little")
            throw Invalid(path, $"its byteorder record says '{byteOrder}': tensors saved on a big-endian machine are not converted here; " +
                "save the checkpoint again on a little-endian machine");
        return CheckTensors(pickle, pickleName!, entries, path);
    }

    /// <summary>Reads the entry through <paramref name="entry"/>'s own stream, checking its length and CRC-32.</summary>
    private static void CheckEntry(ZipArchiveEntry entry, string path, byte[] buffer, MemoryStream? copy)
    {
        var crc = new Crc32();
        long total = 0;
        try
        {
            using var data = entry.Open();
            int read;
            while ((read = data.Read(buffer, 0, buffer.Length)) > 0)
            {
                crc.Append(buffer.AsSpan(0, read));
                copy?.Write(buffer, 0, read);
                total += read;
            }
        }
        catch (Exception e) when (e is InvalidDataException or IOException or NotSupportedException)
        {
            throw Corrupted(path, $"its zip entry '{entry.FullName}' cannot be read ({e.Message})", e);
        }

        if (total != entry.Length)
            throw Corrupted(path, $"its zip entry '{entry.FullName}' holds {total} bytes where the central directory says {entry.Length}");
        uint actual = crc.GetCurrentHashAsUInt32();
        if (actual != entry.Crc32)
            throw Corrupted(path, $"its zip entry '{entry.FullName}' fails its CRC-32 check (recorded 0x{entry.Crc32:x8}, computed 0x{actual:x8}): " +
                "its bytes changed after the file was written");
    }

    /// <summary>The zip structure: end record, central directory, local headers; entries in central directory order.</summary>
    private static List<ZipRecord> ReadStructure(Stream stream, string path)
    {
        long length = stream.Length;
        if (length < EndRecordBytes)
            throw Corrupted(path, $"at {length} bytes it is too short to hold a zip archive's end record");

        int tailLength = (int)Math.Min(length, EndRecordBytes + ushort.MaxValue);
        var tail = ReadAt(stream, length - tailLength, tailLength);
        int e = tailLength - EndRecordBytes;
        while (e >= 0 && U32(tail, e) != EndSignature) e--;
        if (e < 0)
            throw Corrupted(path, "the zip archive's end record is missing (the file is truncated, or its end was overwritten)");
        long endAt = length - tailLength + e;
        int commentLength = U16(tail, e + 20);
        if (endAt + EndRecordBytes + commentLength != length)
            throw Corrupted(path, $"the zip archive's end record (at byte {endAt}) gives a {commentLength}-byte comment where {length - endAt - EndRecordBytes} bytes follow it");

        long disk = U16(tail, e + 4), directoryDisk = U16(tail, e + 6);
        long onDisk = U16(tail, e + 8), count = U16(tail, e + 10);
        long directorySize = U32(tail, e + 12), directoryOffset = U32(tail, e + 16);
        long directoryEnd = endAt;

        var locator = endAt >= 20 ? ReadAt(stream, endAt - 20, 20) : null;
        if (locator is not null && U32(locator, 0) == Zip64LocatorSignature)
        {
            long recordAt = (long)U64(locator, 8);
            if (U32(locator, 4) != 0 || recordAt < 0 || recordAt > endAt - 20 - 56)
                throw Corrupted(path, "the zip64 end record locator points outside the archive");
            var record = ReadAt(stream, recordAt, 56);
            if (U32(record, 0) != Zip64EndSignature || (long)U64(record, 4) != endAt - 20 - recordAt - 12)
                throw Corrupted(path, $"the zip64 end record (at byte {recordAt}) is damaged");
            disk = Zip64Value(disk, U32(record, 16), 0xFFFF, path);
            directoryDisk = Zip64Value(directoryDisk, U32(record, 20), 0xFFFF, path);
            onDisk = Zip64Value(onDisk, (long)U64(record, 24), 0xFFFF, path);
            count = Zip64Value(count, (long)U64(record, 32), 0xFFFF, path);
            directorySize = Zip64Value(directorySize, (long)U64(record, 40), 0xFFFFFFFF, path);
            directoryOffset = Zip64Value(directoryOffset, (long)U64(record, 48), 0xFFFFFFFF, path);
            directoryEnd = recordAt;
        }

        if (disk != 0 || directoryDisk != 0)
            throw Invalid(path, "its zip archive spans several disks, which is not supported");
        if (onDisk != count)
            throw Corrupted(path, $"the zip archive's end record counts {onDisk} entries on this disk and {count} in all");
        if (directoryOffset < 0 || directorySize < 0 || directoryOffset + directorySize != directoryEnd)
            throw Corrupted(path, $"the central directory's offset ({directoryOffset}) and size ({directorySize}) do not end where the end record starts (byte {directoryEnd})");
        if (directorySize > MaxInMemoryBytes)
            throw Invalid(path, $"its central directory is {directorySize} bytes long, more than this loader reads into memory");
        if (count > directorySize / CentralHeaderBytes)
            throw Corrupted(path, $"the zip archive's end record counts {count} entries, more than its {directorySize}-byte central directory can hold");

        var directory = ReadAt(stream, directoryOffset, (int)directorySize);
        var records = new List<ZipRecord>((int)count);
        int p = 0;
        for (long i = 0; i < count; i++)
        {
            if (p + CentralHeaderBytes > directory.Length || U32(directory, p) != CentralHeaderSignature)
                throw Corrupted(path, $"central directory record {i + 1} of {count} (at byte {directoryOffset + p}) is damaged");
            int nameLength = U16(directory, p + 28), extraLength = U16(directory, p + 30), commentBytes = U16(directory, p + 32);
            int next = p + CentralHeaderBytes + nameLength + extraLength + commentBytes;
            if (next > directory.Length)
                throw Corrupted(path, $"central directory record {i + 1} of {count} (at byte {directoryOffset + p}) runs past the central directory");
            var name = directory.AsSpan(p + CentralHeaderBytes, nameLength).ToArray();
            var fullName = System.Text.Encoding.UTF8.GetString(name);
            var extra = directory.AsSpan(p + CentralHeaderBytes + nameLength, extraLength);

            long compressed = U32(directory, p + 20), size = U32(directory, p + 24), offset = U32(directory, p + 42);
            if (!ResolveZip64(extra, ref size, ref compressed, ref offset))
                throw Corrupted(path, $"the central directory record of '{fullName}' lacks the zip64 sizes it announces");
            if (compressed < 0 || size < 0 || offset < 0)
                throw Corrupted(path, $"the central directory record of '{fullName}' gives a negative size or offset");
            records.Add(new ZipRecord
            {
                Name = name,
                FullName = fullName,
                Flags = U16(directory, p + 8),
                Method = U16(directory, p + 10),
                Crc = U32(directory, p + 16),
                CompressedSize = compressed,
                Size = size,
                LocalHeader = offset,
            });
            p = next;
        }
        if (p != directory.Length)
            throw Corrupted(path, $"the central directory holds {directory.Length - p} bytes past its {count} records");

        foreach (var record in records) CheckLocalHeader(stream, record, directoryOffset, path);
        var byOffset = records.OrderBy(r => r.LocalHeader).ToList();
        for (int i = 1; i < byOffset.Count; i++)
            if (byOffset[i - 1].End > byOffset[i].LocalHeader)
                throw Corrupted(path, $"the zip entries '{byOffset[i - 1].FullName}' and '{byOffset[i].FullName}' overlap");
        return records;
    }

    /// <summary>Checks an entry's local header against its central directory record; sets <see cref="ZipRecord.End"/>.</summary>
    private static void CheckLocalHeader(Stream stream, ZipRecord record, long entriesEnd, string path)
    {
        string where = $"the local header of '{record.FullName}' (at byte {record.LocalHeader})";
        if (record.LocalHeader > entriesEnd - LocalHeaderBytes)
            throw Corrupted(path, $"{where} lies outside the archive's entries");
        var header = ReadAt(stream, record.LocalHeader, LocalHeaderBytes);
        if (U32(header, 0) != LocalHeaderSignature)
            throw Corrupted(path, $"{where} is missing: the central directory's offset or the header itself is damaged");
        int nameLength = U16(header, 26), extraLength = U16(header, 28);
        long dataStart = record.LocalHeader + LocalHeaderBytes + nameLength + extraLength;
        if (dataStart > entriesEnd)
            throw Corrupted(path, $"{where} runs past the archive's entries");
        var nameAndExtra = ReadAt(stream, record.LocalHeader + LocalHeaderBytes, nameLength + extraLength);
        if (!nameAndExtra.AsSpan(0, nameLength).SequenceEqual(record.Name))
            throw Corrupted(path, $"{where} names '{System.Text.Encoding.UTF8.GetString(nameAndExtra, 0, nameLength)}', not the central directory's '{record.FullName}'");

        ushort flags = U16(header, 6);
        if (((flags | record.Flags) & EncryptedFlag) != 0)
            throw Invalid(path, $"its zip entry '{record.FullName}' is encrypted, which is not supported");
        if ((flags & DataDescriptorFlag) != (record.Flags & DataDescriptorFlag))
            throw Corrupted(path, $"{where} and the central directory disagree on whether a data descriptor follows the data");
        if (U16(header, 8) != record.Method)
            throw Corrupted(path, $"{where} gives compression method {U16(header, 8)} where the central directory gives {record.Method}");
        if (record.Method == StoredMethod && record.CompressedSize != record.Size)
            throw Corrupted(path, $"the stored (uncompressed) zip entry '{record.FullName}' has a size of {record.Size} bytes but occupies {record.CompressedSize}");

        long dataEnd = dataStart + record.CompressedSize;
        if (record.CompressedSize > entriesEnd - dataStart)
            throw Corrupted(path, $"the data of '{record.FullName}' ({record.CompressedSize} bytes from byte {dataStart}) runs past the archive's entries");

        if ((flags & DataDescriptorFlag) == 0)
        {
            long size = U32(header, 22), compressed = U32(header, 18), unused = 0;
            if (!ResolveZip64(nameAndExtra.AsSpan(nameLength), ref size, ref compressed, ref unused))
                throw Corrupted(path, $"{where} lacks the zip64 sizes it announces");
            if (U32(header, 14) != record.Crc || size != record.Size || compressed != record.CompressedSize)
                throw Corrupted(path, $"{where} and the central directory disagree on the entry's CRC-32 or sizes " +
                    $"(0x{U32(header, 14):x8}, {compressed}, {size} against 0x{record.Crc:x8}, {record.CompressedSize}, {record.Size})");
            record.End = dataEnd;
            return;
        }

        // A data descriptor follows the data: CRC-32 and sizes, 4 or 8 bytes each, with or without a signature. The
        // local header's own fields are then 0 (some writers fill them in anyway, or put the zip64 placeholder).
        uint localCrc = U32(header, 14), localCompressed = U32(header, 18), localSize = U32(header, 22);
        if ((localCrc != 0 && localCrc != record.Crc)
            || (localCompressed is not 0 and not 0xFFFFFFFF && localCompressed != record.CompressedSize)
            || (localSize is not 0 and not 0xFFFFFFFF && localSize != record.Size))
            throw Corrupted(path, $"{where} and the central directory disagree on the entry's CRC-32 or sizes " +
                $"(0x{localCrc:x8}, {localCompressed}, {localSize} against 0x{record.Crc:x8}, {record.CompressedSize}, {record.Size})");
        var descriptor = ReadAt(stream, dataEnd, (int)Math.Min(24, entriesEnd - dataEnd));
        foreach (int start in new[] { 4, 0 })
        {
            if (start == 4 && (descriptor.Length < 4 || U32(descriptor, 0) != DataDescriptorSignature)) continue;
            foreach (int width in new[] { 4, 8 })
            {
                int end = start + 4 + 2 * width;
                if (end > descriptor.Length || U32(descriptor, start) != record.Crc) continue;
                long compressed = width == 4 ? U32(descriptor, start + 4) : (long)U64(descriptor, start + 4);
                long size = width == 4 ? U32(descriptor, start + 8) : (long)U64(descriptor, start + 12);
                if (compressed == record.CompressedSize && size == record.Size)
                {
                    record.End = dataEnd + end;
                    return;
                }
            }
        }
        throw Corrupted(path, $"the data descriptor of '{record.FullName}' (at byte {dataEnd}) does not match the central directory's CRC-32 and sizes");
    }

    /// <summary>Replaces the 0xFFFFFFFF placeholders among the three values by those of the zip64 extra field, in the order the format gives.</summary>
    private static bool ResolveZip64(ReadOnlySpan<byte> extra, ref long size, ref long compressed, ref long offset)
    {
        bool needSize = size == 0xFFFFFFFF, needCompressed = compressed == 0xFFFFFFFF, needOffset = offset == 0xFFFFFFFF;
        if (!needSize && !needCompressed && !needOffset) return true;
        for (int i = 0; i + 4 <= extra.Length;)
        {
            int id = BinaryPrimitives.ReadUInt16LittleEndian(extra[i..]);
            int length = BinaryPrimitives.ReadUInt16LittleEndian(extra[(i + 2)..]);
            if (i + 4 + length > extra.Length) break;
            if (id == 1)
            {
                var field = extra.Slice(i + 4, length);
                int at = 0;
                if (needSize) { if (!Take(field, ref at, out size)) return false; }
                if (needCompressed) { if (!Take(field, ref at, out compressed)) return false; }
                if (needOffset) { if (!Take(field, ref at, out offset)) return false; }
                return true;
            }
            i += 4 + length;
        }
        return false;

        static bool Take(ReadOnlySpan<byte> field, ref int at, out long value)
        {
            value = 0;
            if (at + 8 > field.Length) return false;
            value = (long)BinaryPrimitives.ReadUInt64LittleEndian(field[at..]);
            at += 8;
            return true;
        }
    }

    private static long Zip64Value(long value32, long value64, long placeholder, string path)
    {
        if (value32 != placeholder && value32 != value64)
            throw Corrupted(path, "the zip archive's end record and its zip64 end record disagree");
        return value64;
    }

    /// <summary>Reads <c>data.pkl</c> and checks every tensor record; returns name -> dtype and shape of the state_dict.</summary>
    private static Dictionary<string, TensorRecord> CheckTensors(byte[] pickle, string pickleName, List<(string Name, long Length)> entries, string path)
    {
        object? result;
        IReadOnlyList<StateDictPickle.Call> calls;
        try
        {
            (result, calls) = StateDictPickle.Read(pickle);
        }
        catch (FormatException e)
        {
            throw Invalid(path, $"its '{pickleName}' is not a valid pickle: {e.Message}", e);
        }

        var items = new List<KeyValuePair<object?, object?>>();
        switch (result)
        {
            case StateDictPickle.PickleDict dict:
                items.AddRange(dict);
                break;
            case StateDictPickle.Call { Callable: StateDictPickle.Global { Module: "collections", Name: "OrderedDict" } } ordered:
                items.AddRange(ordered.Items);
                // PyBridge's OrderedDict keeps the tensors of a BUILD state too.
                foreach (var state in ordered.States.OfType<StateDictPickle.PickleDict>())
                    items.AddRange(state.Where(kv => kv.Value is StateDictPickle.Call c && IsTensorRecord(c)));
                break;
            default:
                throw Invalid(path, $"its '{pickleName}' holds {StateDictPickle.Describe(result)}, not a state_dict (a dict of tensors); " +
                    "save model.state_dict(), not the module itself");
        }

        // Every tensor record, wherever it is in the pickle, becomes a tensor when PyBridge reads it: check them all,
        // by the name of the state_dict entry where there is one.
        var labels = new Dictionary<StateDictPickle.Call, string>();
        foreach (var (key, value) in items)
            if (key is string name && value is StateDictPickle.Call call) labels.TryAdd(call, $"the tensor '{name}'");
        var checkedCalls = new Dictionary<StateDictPickle.Call, TensorRecord>();
        foreach (var call in calls)
            if (IsTensorRecord(call))
                checkedCalls[call] = CheckTensor(call, labels.GetValueOrDefault(call, "a tensor record outside the state_dict"), entries, path);

        var expected = new Dictionary<string, TensorRecord>(StringComparer.Ordinal);
        foreach (var (key, value) in items)
        {
            if (key is not string name)
                throw Invalid(path, $"it is not a state_dict checkpoint: a key of its dict is {StateDictPickle.Describe(key)}, not a name");
            if (value is not StateDictPickle.Call call || !checkedCalls.TryGetValue(call, out var record))
                throw Invalid(path, $"it is not a state_dict checkpoint: it maps '{name}' to {StateDictPickle.Describe(value)}, not to a tensor");
            expected[name] = record;
        }
        return expected;
    }

    private static bool IsTensorRecord(StateDictPickle.Call call) =>
        call.Callable is StateDictPickle.Global { Module: "torch._utils", Name: "_rebuild_tensor_v2" or "_rebuild_tensor" };

    /// <summary>
    /// Checks <c>_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, ...)</c> against the storage
    /// it names, for the way PyBridge reads it: a tensor of the record's shape and dtype, filled from the start of the
    /// storage's bytes.
    /// </summary>
    private static TensorRecord CheckTensor(StateDictPickle.Call call, string label, List<(string Name, long Length)> entries, string path)
    {
        var args = call.Args;
        if (args.Length < 5 || args[4] is not bool)
            throw Invalid(path, $"{label} has the arguments ({string.Join(", ", args.Select(StateDictPickle.Describe))}), " +
                "not those of torch._utils._rebuild_tensor_v2 (storage, offset, shape, strides, requires_grad, ...)");
        if (args[0] is not StateDictPickle.PersistentId { Value: object?[] storage } || storage.Length < 5
            || storage[0] is not "storage" || storage[1] is not StateDictPickle.Global { Module: "torch" } type
            || storage[2] is not string key || storage[4] is not long elements || elements < 0)
            throw Invalid(path, $"the storage of {label} is not described as ('storage', torch.<Type>Storage, key, location, size)");

        var known = Array.FindIndex(StorageTypes, s => s.Storage == type.Name);
        if (known < 0)
            throw Invalid(path, $"{label} is stored as torch.{type.Name}, a storage type this loader does not read");
        var (_, dtype, elementSize) = StorageTypes[known];

        // PyBridge reads the first entry whose name ends in data/<key>.
        int index = entries.FindIndex(e => e.Name.EndsWith("data/" + key, StringComparison.Ordinal));
        if (index < 0)
            throw Invalid(path, $"{label} refers to the storage '{key}', but the archive has no entry data/{key}");
        var (entryName, entryLength) = entries[index];
        if (elements > entryLength / elementSize || elements * elementSize != entryLength)
            throw Invalid(path, $"the storage '{entryName}' holds {entryLength} bytes, where its record gives {elements} elements of {elementSize} bytes");

        if (args[1] is not long offset || args[2] is not object?[] sizes || args[3] is not object?[] strides
            || sizes.Length != strides.Length
            || !sizes.All(s => s is long and >= 0 and <= int.MaxValue) || !strides.All(s => s is long and >= 0 and <= int.MaxValue))
            throw Invalid(path, $"{label} (storage '{entryName}') has no valid storage offset, shape and strides");
        var shape = sizes.Select(s => (long)s!).ToArray();
        long count = 1;
        foreach (var d in shape)
        {
            if (d != 0 && count > long.MaxValue / d / elementSize)
                throw Invalid(path, $"{label} (storage '{entryName}') has the shape {ModuleState.Shape(shape)}, too large to exist");
            count *= d;
        }
        if (count * elementSize > entryLength)
            throw Invalid(path, $"{label} (storage '{entryName}') has the shape {ModuleState.Shape(shape)}: {count * elementSize} bytes, more than the storage's {entryLength} bytes");

        // Contiguous as PyTorch defines it: strides of a dense row-major layout, with a dimension of 0 or 1 counting as 1
        // (torch.empty(5, 0) has strides (1, 1)); a tensor without elements has no layout to check.
        long expectedStride = 1;
        bool contiguous = true;
        for (int d = shape.Length - 1; d >= 0 && count > 0; d--)
        {
            if (shape[d] != 1 && (long)strides[d]! != expectedStride) contiguous = false;
            expectedStride *= Math.Max(shape[d], 1);
        }
        if (offset != 0 || !contiguous)
            throw Invalid(path, $"{label} (storage '{entryName}') is a view with storage offset {offset} and strides " +
                $"{ModuleState.Shape(strides.Select(s => (long)s!).ToArray())}, a layout this loader does not read; " +
                "save a state_dict of contiguous tensors that own their storage (for example {k: v.contiguous().clone() for k, v in sd.items()})");
        return new TensorRecord(dtype, shape);
    }

    private static byte[] ReadAt(Stream stream, long position, int count)
    {
        var bytes = new byte[count];
        stream.Position = position;
        stream.ReadExactly(bytes);
        return bytes;
    }

    private static ushort U16(byte[] bytes, int at) => BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(at));

    private static uint U32(byte[] bytes, int at) => BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at));

    private static ulong U64(byte[] bytes, int at) => BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at));

    private static InvalidDataException Corrupted(string path, string what, Exception? inner = null) =>
        new($"'{path}' is a corrupted PyTorch checkpoint: {what}. Restore it from a copy, or save the checkpoint again.", inner);

    private static InvalidDataException Invalid(string path, string what, Exception? inner = null) =>
        new($"'{path}' is not a valid PyTorch checkpoint: {what}.", inner);
}

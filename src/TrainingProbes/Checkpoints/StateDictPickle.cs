using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;

namespace TrainingProbes.Checkpoints;

/// <summary>
/// A reader of pickles (protocols 0 to 5) that builds an inert description of what they hold, for checking a
/// PyTorch checkpoint's <c>data.pkl</c> before anything in it is handed to TorchSharp: nothing is constructed, no
/// code runs, every call (<c>REDUCE</c>, <c>NEWOBJ</c>, ...) is only recorded as a <see cref="Call"/>.
/// </summary>
/// <remarks>
/// Values are <c>null</c>, <see cref="bool"/>, <see cref="long"/>, <see cref="BigInteger"/> (integers outside the
/// 64-bit range), <see cref="double"/>, <see cref="string"/>, <c>byte[]</c>, tuples as <c>object?[]</c>, lists and
/// sets as <see cref="PickleList"/>, dicts as <see cref="PickleDict"/>, and the <see cref="Global"/>,
/// <see cref="PersistentId"/> and <see cref="Call"/> records. Any malformed or truncated pickle throws
/// <see cref="FormatException"/> with the byte position; extension-registry and out-of-band buffer opcodes, which
/// torch.save never writes, are refused the same way.
/// </remarks>
internal static class StateDictPickle
{
    /// <summary>A <c>module.name</c> reference (the <c>GLOBAL</c> and <c>STACK_GLOBAL</c> opcodes).</summary>
    internal sealed record Global(string Module, string Name)
    {
        public override string ToString() => $"{Module}.{Name}";
    }

    /// <summary>What a <c>PERSID</c> or <c>BINPERSID</c> opcode refers to (torch.save: a storage record).</summary>
    internal sealed record PersistentId(object? Value);

    /// <summary>A recorded call of <see cref="Callable"/> with <see cref="Args"/>, and what was set on its result.</summary>
    internal sealed class Call(object? callable, object?[] args)
    {
        public object? Callable { get; } = callable;
        public object?[] Args { get; } = args;
        /// <summary>Items added with <c>SETITEM(S)</c> (a dict subclass such as <c>collections.OrderedDict</c>).</summary>
        public PickleDict Items { get; } = new();
        /// <summary>Items added with <c>APPEND(S)</c> or <c>ADDITEMS</c>.</summary>
        public PickleList Appended { get; } = new();
        /// <summary>The states given by <c>BUILD</c>, in order.</summary>
        public List<object?> States { get; } = [];

        public override string ToString() => $"a call of {Callable}";
    }

    /// <summary>A pickled dict: its key/value pairs in order (repeated keys kept, as pickled).</summary>
    internal sealed class PickleDict : List<KeyValuePair<object?, object?>>
    {
        public override string ToString() => "a dict";
    }

    /// <summary>A pickled list or set.</summary>
    internal sealed class PickleList : List<object?>
    {
        public override string ToString() => "a list";
    }

    private sealed class MarkObject
    {
        public static readonly MarkObject Instance = new();
    }

    /// <summary>Reads a whole pickle; returns the object it ends with, and every call it records, in order.</summary>
    /// <exception cref="FormatException">The pickle is malformed, truncated, or uses an opcode not read here.</exception>
    internal static (object? Result, IReadOnlyList<Call> Calls) Read(ReadOnlySpan<byte> pickle)
    {
        var stack = new List<object?>();
        var marks = new Stack<int>();
        var memo = new Dictionary<long, object?>();
        var calls = new List<Call>();
        var reader = new Reader(pickle);

        while (true)
        {
            int at = reader.Position;
            if (reader.AtEnd) throw Malformed(at, "the pickle ends without a STOP opcode");
            byte op = reader.Byte();
            switch (op)
            {
                case 0x80: reader.Byte(); break;                                   // PROTO
                case 0x95: reader.Int64(); break;                                  // FRAME: a length hint only
                case (byte)'.': return (Pop(stack, marks, at), calls);             // STOP
                case (byte)'(': marks.Push(stack.Count); break;                     // MARK
                case (byte)'0': Pop(stack, marks, at); break;                       // POP
                case (byte)'1': PopMark(stack, marks, at); break;                   // POP_MARK
                case (byte)'2': stack.Add(Peek(stack, marks, at)); break;           // DUP

                case (byte)'N': stack.Add(null); break;                             // NONE
                case 0x88: stack.Add(true); break;                                  // NEWTRUE
                case 0x89: stack.Add(false); break;                                 // NEWFALSE
                case (byte)'J': stack.Add((long)reader.Int32()); break;             // BININT
                case (byte)'K': stack.Add((long)reader.Byte()); break;              // BININT1
                case (byte)'M': stack.Add((long)reader.UInt16()); break;            // BININT2
                case 0x8a: stack.Add(Integer(reader.Bytes(reader.Byte()))); break;  // LONG1
                case 0x8b: stack.Add(Integer(reader.Bytes(Length(reader.Int32(), at)))); break; // LONG4
                case (byte)'I': stack.Add(TextInt(reader.Line(), at)); break;       // INT
                case (byte)'L': stack.Add(TextLong(reader.Line(), at)); break;      // LONG
                case (byte)'G': stack.Add(BinaryPrimitives.ReadDoubleBigEndian(reader.Bytes(8))); break; // BINFLOAT
                case (byte)'F': stack.Add(TextFloat(reader.Line(), at)); break;     // FLOAT

                case (byte)'X': stack.Add(Utf8(reader.Bytes(Length(reader.UInt32(), at)), at)); break;  // BINUNICODE
                case 0x8c: stack.Add(Utf8(reader.Bytes(reader.Byte()), at)); break;                     // SHORT_BINUNICODE
                case 0x8d: stack.Add(Utf8(reader.Bytes(Length(reader.Int64(), at)), at)); break;         // BINUNICODE8
                case (byte)'V': stack.Add(RawUnicodeEscape(reader.Line(), at)); break;                  // UNICODE
                case (byte)'T': stack.Add(Encoding.Latin1.GetString(reader.Bytes(Length(reader.UInt32(), at)))); break; // BINSTRING
                case (byte)'U': stack.Add(Encoding.Latin1.GetString(reader.Bytes(reader.Byte()))); break;              // SHORT_BINSTRING
                case (byte)'B': stack.Add(reader.Bytes(Length(reader.UInt32(), at)).ToArray()); break;  // BINBYTES
                case (byte)'C': stack.Add(reader.Bytes(reader.Byte()).ToArray()); break;                // SHORT_BINBYTES
                case 0x8e:                                                                              // BINBYTES8
                case 0x96: stack.Add(reader.Bytes(Length(reader.Int64(), at)).ToArray()); break;        // BYTEARRAY8

                case (byte)')': stack.Add(Array.Empty<object?>()); break;           // EMPTY_TUPLE
                case (byte)'t': stack.Add(PopMark(stack, marks, at).ToArray()); break; // TUPLE
                case 0x85: stack.Add(PopN(stack, marks, 1, at)); break;             // TUPLE1
                case 0x86: stack.Add(PopN(stack, marks, 2, at)); break;             // TUPLE2
                case 0x87: stack.Add(PopN(stack, marks, 3, at)); break;             // TUPLE3
                case (byte)']': stack.Add(new PickleList()); break;                 // EMPTY_LIST
                case 0x8f: stack.Add(new PickleList()); break;                      // EMPTY_SET
                case (byte)'l':                                                     // LIST
                case 0x91:                                                          // FROZENSET
                {
                    var list = new PickleList();
                    list.AddRange(PopMark(stack, marks, at));
                    stack.Add(list);
                    break;
                }
                case (byte)'a': Append(Peek(stack, marks, at, below: 1), [Pop(stack, marks, at)], at); break; // APPEND
                case (byte)'e':                                                     // APPENDS
                case 0x90:                                                          // ADDITEMS
                {
                    var items = PopMark(stack, marks, at);
                    Append(Peek(stack, marks, at), items, at);
                    break;
                }
                case (byte)'}': stack.Add(new PickleDict()); break;                 // EMPTY_DICT
                case (byte)'d':                                                     // DICT
                {
                    var dict = new PickleDict();
                    SetItems(dict, PopMark(stack, marks, at), at);
                    stack.Add(dict);
                    break;
                }
                case (byte)'s':                                                     // SETITEM
                {
                    var value = Pop(stack, marks, at);
                    var key = Pop(stack, marks, at);
                    SetItems(Peek(stack, marks, at), [key, value], at);
                    break;
                }
                case (byte)'u':                                                     // SETITEMS
                {
                    var items = PopMark(stack, marks, at);
                    SetItems(Peek(stack, marks, at), items, at);
                    break;
                }

                case (byte)'c':                                                     // GLOBAL
                {
                    var module = Ascii(reader.Line(), at);
                    stack.Add(new Global(module, Ascii(reader.Line(), at)));
                    break;
                }
                case 0x93:                                                          // STACK_GLOBAL
                {
                    var name = Pop(stack, marks, at) as string;
                    var module = Pop(stack, marks, at) as string;
                    if (module is null || name is null) throw Malformed(at, "STACK_GLOBAL needs two strings");
                    stack.Add(new Global(module, name));
                    break;
                }
                case (byte)'R':                                                     // REDUCE
                {
                    var args = Pop(stack, marks, at) as object?[] ?? throw Malformed(at, "REDUCE needs a tuple of arguments");
                    stack.Add(Record(calls, new Call(Pop(stack, marks, at), args)));
                    break;
                }
                case 0x81:                                                          // NEWOBJ
                {
                    var args = Pop(stack, marks, at) as object?[] ?? throw Malformed(at, "NEWOBJ needs a tuple of arguments");
                    stack.Add(Record(calls, new Call(Pop(stack, marks, at), args)));
                    break;
                }
                case 0x92:                                                          // NEWOBJ_EX
                {
                    var kwargs = Pop(stack, marks, at);
                    var args = Pop(stack, marks, at) as object?[] ?? throw Malformed(at, "NEWOBJ_EX needs a tuple of arguments");
                    stack.Add(Record(calls, new Call(Pop(stack, marks, at), [.. args, kwargs])));
                    break;
                }
                case (byte)'i':                                                     // INST
                {
                    var module = Ascii(reader.Line(), at);
                    var type = new Global(module, Ascii(reader.Line(), at));
                    stack.Add(Record(calls, new Call(type, PopMark(stack, marks, at).ToArray())));
                    break;
                }
                case (byte)'o':                                                     // OBJ
                {
                    var items = PopMark(stack, marks, at);
                    if (items.Count == 0) throw Malformed(at, "OBJ needs a class");
                    stack.Add(Record(calls, new Call(items[0], items.Skip(1).ToArray())));
                    break;
                }
                case (byte)'b':                                                     // BUILD
                {
                    var state = Pop(stack, marks, at);
                    if (Peek(stack, marks, at) is Call call) call.States.Add(state);
                    break;
                }
                case (byte)'Q': stack.Add(new PersistentId(Pop(stack, marks, at))); break;    // BINPERSID
                case (byte)'P': stack.Add(new PersistentId(Ascii(reader.Line(), at))); break; // PERSID

                case (byte)'p': memo[TextLong(reader.Line(), at) is long p ? p : throw Malformed(at, "bad PUT index")] = Peek(stack, marks, at); break; // PUT
                case (byte)'q': memo[reader.Byte()] = Peek(stack, marks, at); break;   // BINPUT
                case (byte)'r': memo[reader.UInt32()] = Peek(stack, marks, at); break; // LONG_BINPUT
                case 0x94: memo[memo.Count] = Peek(stack, marks, at); break;          // MEMOIZE
                case (byte)'g': stack.Add(Get(memo, TextLong(reader.Line(), at) is long g ? g : -1, at)); break; // GET
                case (byte)'h': stack.Add(Get(memo, reader.Byte(), at)); break;       // BINGET
                case (byte)'j': stack.Add(Get(memo, reader.UInt32(), at)); break;     // LONG_BINGET

                default:
                    throw Malformed(at, $"opcode 0x{op:x2} is not one that a torch.save state_dict uses");
            }
        }
    }

    private static Call Record(List<Call> calls, Call call)
    {
        calls.Add(call);
        return call;
    }

    private static void Append(object? target, IReadOnlyList<object?> items, int at)
    {
        switch (target)
        {
            case PickleList list: list.AddRange(items); break;
            case Call call: call.Appended.AddRange(items); break;
            default: throw Malformed(at, $"items are appended to {Describe(target)}");
        }
    }

    private static void SetItems(object? target, IReadOnlyList<object?> items, int at)
    {
        if (items.Count % 2 != 0) throw Malformed(at, "SETITEMS needs key/value pairs");
        var dict = target switch
        {
            PickleDict d => d,
            Call call => call.Items,
            _ => throw Malformed(at, $"items are set on {Describe(target)}"),
        };
        for (int i = 0; i < items.Count; i += 2) dict.Add(new(items[i], items[i + 1]));
    }

    private static object? Get(Dictionary<long, object?> memo, long index, int at) =>
        memo.TryGetValue(index, out var value) ? value : throw Malformed(at, $"memo entry {index} was never stored");

    private static object? Pop(List<object?> stack, Stack<int> marks, int at)
    {
        int floor = marks.Count > 0 ? marks.Peek() : 0;
        if (stack.Count <= floor) throw Malformed(at, "the stack is empty");
        var value = stack[^1];
        stack.RemoveAt(stack.Count - 1);
        return value;
    }

    private static object? Peek(List<object?> stack, Stack<int> marks, int at, int below = 0)
    {
        int floor = marks.Count > 0 ? marks.Peek() : 0;
        if (stack.Count - below <= floor) throw Malformed(at, "the stack is empty");
        return stack[stack.Count - 1 - below];
    }

    private static List<object?> PopMark(List<object?> stack, Stack<int> marks, int at)
    {
        if (marks.Count == 0) throw Malformed(at, "no MARK to pop to");
        int mark = marks.Pop();
        var items = stack.GetRange(mark, stack.Count - mark);
        stack.RemoveRange(mark, stack.Count - mark);
        return items;
    }

    private static object?[] PopN(List<object?> stack, Stack<int> marks, int n, int at)
    {
        var items = new object?[n];
        for (int i = n - 1; i >= 0; i--) items[i] = Pop(stack, marks, at);
        return items;
    }

    /// <summary>A little-endian two's-complement integer (LONG1, LONG4): a <see cref="long"/> when it fits.</summary>
    private static object Integer(ReadOnlySpan<byte> bytes)
    {
        var value = new BigInteger(bytes, isUnsigned: false, isBigEndian: false);
        return value >= long.MinValue && value <= long.MaxValue ? (long)value : value;
    }

    private static object TextInt(ReadOnlySpan<byte> line, int at)
    {
        // Protocol 0 writes True and False as INT "01" and "00".
        if (line.SequenceEqual("01"u8)) return true;
        if (line.SequenceEqual("00"u8)) return false;
        return TextLong(line, at);
    }

    private static object TextLong(ReadOnlySpan<byte> line, int at)
    {
        if (line.Length > 0 && line[^1] == (byte)'L') line = line[..^1];
        if (!BigInteger.TryParse(Encoding.ASCII.GetString(line), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var value))
            throw Malformed(at, "an integer in text form does not parse");
        return value >= long.MinValue && value <= long.MaxValue ? (long)value : value;
    }

    private static double TextFloat(ReadOnlySpan<byte> line, int at) =>
        double.TryParse(Encoding.ASCII.GetString(line), NumberStyles.Float, CultureInfo.InvariantCulture, out var value)
            ? value
            : throw Malformed(at, "a float in text form does not parse");

    private static string Utf8(ReadOnlySpan<byte> bytes, int at)
    {
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Malformed(at, "a string is not valid UTF-8");
        }
    }

    private static string Ascii(ReadOnlySpan<byte> bytes, int at)
    {
        foreach (var b in bytes)
            if (b >= 0x80) throw Malformed(at, "a name is not ASCII");
        return Encoding.ASCII.GetString(bytes);
    }

    /// <summary>Python's raw-unicode-escape: Latin-1, with \uXXXX and \UXXXXXXXX escapes.</summary>
    private static string RawUnicodeEscape(ReadOnlySpan<byte> line, int at)
    {
        var text = new StringBuilder(line.Length);
        for (int i = 0; i < line.Length; i++)
        {
            int digits = line[i] == (byte)'\\' && i + 1 < line.Length ? line[i + 1] switch { (byte)'u' => 4, (byte)'U' => 8, _ => 0 } : 0;
            if (digits == 0)
            {
                text.Append((char)line[i]);
                continue;
            }
            if (i + 2 + digits > line.Length
                || !int.TryParse(Encoding.ASCII.GetString(line.Slice(i + 2, digits)), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int code)
                || code < 0 || code > 0x10FFFF)
                throw Malformed(at, "a UNICODE escape does not parse");
            text.Append(char.ConvertFromUtf32(code));
            i += 1 + digits;
        }
        return text.ToString();
    }

    private static int Length(long length, int at) =>
        length is >= 0 and <= int.MaxValue ? (int)length : throw Malformed(at, $"a length of {length} bytes");

    internal static string Describe(object? value) => value switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        long or BigInteger => $"the integer {value}",
        double => "a float",
        string s => $"the string '{s}'",
        byte[] => "bytes",
        object?[] t => $"a tuple of {t.Length}",
        _ => value.ToString() ?? value.GetType().Name,
    };

    private static FormatException Malformed(int at, string what) => new($"{what} (pickle byte {at})");

    /// <summary>A bounds-checked cursor over the pickle's bytes.</summary>
    private ref struct Reader(ReadOnlySpan<byte> bytes)
    {
        private readonly ReadOnlySpan<byte> _bytes = bytes;

        public int Position { get; private set; }

        public readonly bool AtEnd => Position >= _bytes.Length;

        public ReadOnlySpan<byte> Bytes(int count)
        {
            if (count < 0 || count > _bytes.Length - Position) throw Malformed(Position, "the pickle is truncated");
            var slice = _bytes.Slice(Position, count);
            Position += count;
            return slice;
        }

        public byte Byte() => Bytes(1)[0];

        public ushort UInt16() => BinaryPrimitives.ReadUInt16LittleEndian(Bytes(2));

        public int Int32() => BinaryPrimitives.ReadInt32LittleEndian(Bytes(4));

        public uint UInt32() => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4));

        public long Int64() => BinaryPrimitives.ReadInt64LittleEndian(Bytes(8));

        /// <summary>The bytes up to the next newline (which is consumed, not returned).</summary>
        public ReadOnlySpan<byte> Line()
        {
            int end = _bytes[Position..].IndexOf((byte)'\n');
            if (end < 0) throw Malformed(Position, "the pickle is truncated inside a line of text");
            var line = _bytes.Slice(Position, end);
            Position += end + 1;
            return line;
        }
    }
}

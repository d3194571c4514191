using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using TrainingProbes.Build;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.NativeRepair;

/// <summary>
/// Tests of the build-time libLibTorchSharp.so repair (the patcher of the TrainingProbes.NativeRepair project in
/// src/, the package's task assembly, referenced by this one). The ELF facts are checked with
/// <see cref="MiniElf"/>, a reader written independently of the patcher.
/// </summary>
public sealed class LibTorchSharpRepairTests : IDisposable
{
    private const string OldName = "_ZSt21ios_base_library_initv";
    private const string NewName = "_ZSt15get_new_handlerv";
    private const string Version = "GLIBCXX_3.4.32";

    private readonly string _dir;

    public LibTorchSharpRepairTests()
    {
        _dir = Path.Combine(Path.GetTempPath(), "tpb-repair-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static string PackagesRoot
    {
        get
        {
            string? env = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
            return !string.IsNullOrEmpty(env)
                ? env
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        }
    }

    /// <summary>The repair's one libstdc++ search list, as the build evaluated it for this assembly.</summary>
    private static string[] LibStdCxxSearchPath =>
        (typeof(LibTorchSharpRepairTests).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyMetadataAttribute), false)
            .Cast<System.Reflection.AssemblyMetadataAttribute>()
            .SingleOrDefault(a => a.Key == "TrainingProbesLibStdCxxSearchPath")?.Value ?? string.Empty)
        .Split(';', StringSplitOptions.RemoveEmptyEntries);

    private static string PristineLibrary =>
        Path.Combine(PackagesRoot, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");

    private string CopyToTemp(string source, string? name = null)
    {
        Assert.True(File.Exists(source), "missing test input " + source);
        string destination = Path.Combine(_dir, name ?? Path.GetFileName(source));
        File.Copy(source, destination);
        return destination;
    }

    [Fact]
    public void PristineLibraryIsWhatThePlatformNotesDescribe()
    {
        var elf = new MiniElf(File.ReadAllBytes(PristineLibrary));
        MiniElf.Symbol symbol = Assert.Single(elf.Symbols, s => s.Name == OldName);
        MiniElf.Requirement requirement = Assert.Single(elf.Requirements, r => r.Name == Version);
        Assert.Equal(0, symbol.SectionIndex);
        Assert.Equal(requirement.Index, elf.VersionOf(symbol.Index) & 0x7fff);
        Assert.Equal(0, requirement.Flags & 0x2);
        Assert.Single(elf.Symbols, s => (elf.VersionOf(s.Index) & 0x7fff) == requirement.Index);
    }

    [Fact]
    public void PatchingPristineCopyChangesExactlyTheNameTheVersionEntryAndTheFlags()
    {
        string path = CopyToTemp(PristineLibrary);
        byte[] original = File.ReadAllBytes(path);
        DateTime originalTime = File.GetLastWriteTimeUtc(path);
        UnixFileMode? originalMode = OperatingSystem.IsWindows() ? null : File.GetUnixFileMode(path);

        PatchResult result = LibStdCxxCompatPatcher.Patch(path);

        Assert.Equal(PatchStatus.Patched, result.Status);
        Assert.False(string.IsNullOrWhiteSpace(result.Reason));
        byte[] patched = File.ReadAllBytes(path);
        Assert.Equal(original.Length, patched.Length);
        Assert.Equal(originalTime, File.GetLastWriteTimeUtc(path));
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(originalMode, File.GetUnixFileMode(path));
        }

        Assert.Single(Directory.GetFiles(_dir)); // no temporary file left behind

        // Expected ranges, located in the original by the independent reader.
        var before = new MiniElf(original);
        MiniElf.Symbol symbol = Assert.Single(before.Symbols, s => s.Name == OldName);
        MiniElf.Requirement requirement = Assert.Single(before.Requirements, r => r.Name == Version);
        long nameStart = before.DynStrOffset + symbol.NameOffset;
        long versionEntry = before.VersymOffset + (2L * symbol.Index);
        long flagsField = requirement.AuxOffset + 4;
        var ranges = new (long Start, int Length)[] { (nameStart, OldName.Length), (versionEntry, 2), (flagsField, 2) };

        var changed = new List<long>();
        for (long i = 0; i < original.Length; i++)
        {
            if (original[i] != patched[i])
            {
                changed.Add(i);
            }
        }

        Assert.All(changed, offset => Assert.Contains(ranges, r => offset >= r.Start && offset < r.Start + r.Length));
        Assert.All(ranges, r => Assert.Contains(changed, offset => offset >= r.Start && offset < r.Start + r.Length));

        byte[] expectedName = new byte[OldName.Length];
        Encoding.ASCII.GetBytes(NewName).CopyTo(expectedName, 0);
        Assert.Equal(expectedName, patched.AsSpan((int)nameStart, OldName.Length).ToArray());
        Assert.Equal(0, patched[nameStart + OldName.Length]);
        Assert.Equal(1, patched[versionEntry] | (patched[versionEntry + 1] << 8));
        int flags = patched[flagsField] | (patched[flagsField + 1] << 8);
        Assert.Equal(requirement.Flags | 0x2, flags);

        // And as a loader would see it.
        var after = new MiniElf(patched);
        Assert.DoesNotContain(after.Symbols, s => s.Name == OldName);
        MiniElf.Symbol renamed = Assert.Single(after.Symbols, s => s.Name == NewName);
        Assert.Equal(symbol.Index, renamed.Index);
        Assert.Equal(0, renamed.SectionIndex);
        Assert.Equal(1, after.VersionOf(renamed.Index));
        MiniElf.Requirement weak = Assert.Single(after.Requirements, r => r.Name == Version);
        Assert.Equal(0x2, weak.Flags & 0x2);
        Assert.DoesNotContain(after.Symbols, s => (after.VersionOf(s.Index) & 0x7fff) == weak.Index);

        // The analysis reports exactly these edits.
        Assert.Equal(
            ranges.Select(r => r.Start).OrderBy(x => x),
            result.Edits.Select(e => e.Offset).OrderBy(x => x));
    }

    [Fact]
    public void PatchingAPatchedFileAgainChangesNothingAndDoesNotRewriteIt()
    {
        string path = CopyToTemp(PristineLibrary);
        Assert.Equal(PatchStatus.Patched, LibStdCxxCompatPatcher.Patch(path).Status);
        byte[] once = File.ReadAllBytes(path);
        DateTime fileTime = File.GetLastWriteTimeUtc(path);

        // A rewrite goes through a temporary file renamed into the folder, which would move the folder's time.
        var folderTime = new DateTime(2001, 2, 3, 4, 5, 6, DateTimeKind.Utc);
        Directory.SetLastWriteTimeUtc(_dir, folderTime);

        PatchResult again = LibStdCxxCompatPatcher.Patch(path);

        Assert.Equal(PatchStatus.AlreadyPatched, again.Status);
        Assert.Contains("already patched", again.Reason, StringComparison.OrdinalIgnoreCase);
        Assert.Empty(again.Edits);
        Assert.Equal(once, File.ReadAllBytes(path));
        Assert.Equal(fileTime, File.GetLastWriteTimeUtc(path));
        Assert.Equal(folderTime, Directory.GetLastWriteTimeUtc(_dir));
    }

    [Fact]
    public void PatchingReplacesTheFileInsteadOfWritingThroughALink()
    {
        string target = CopyToTemp(PristineLibrary, "shared.so");
        byte[] original = File.ReadAllBytes(target);
        string link = Path.Combine(_dir, "libLibTorchSharp.so");
        File.CreateSymbolicLink(link, target);

        Assert.Equal(PatchStatus.Patched, LibStdCxxCompatPatcher.Patch(link).Status);

        Assert.Equal(original, File.ReadAllBytes(target));
        Assert.Null(new FileInfo(link).LinkTarget);
        Assert.Equal(PatchStatus.AlreadyPatched, LibStdCxxCompatPatcher.Analyze(File.ReadAllBytes(link)).Status);
    }

    public static TheoryData<string> UnaffectedLibraries()
    {
        var data = new TheoryData<string>();
        string libtorch = Path.Combine(PackagesRoot, "libtorch-cpu-linux-x64");
        if (Directory.Exists(libtorch))
        {
            foreach (string version in Directory.GetDirectories(libtorch))
            {
                string c10 = Path.Combine(version, "runtimes", "linux-x64", "native", "libc10.so");
                if (File.Exists(c10))
                {
                    data.Add(c10);
                }
            }
        }

        string? libstdcxx = SystemLibStdCxx.Locate(LibStdCxxSearchPath);
        if (libstdcxx != null && !SystemLibStdCxx.Contains(File.ReadAllBytes(libstdcxx), Version))
        {
            data.Add(libstdcxx);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(UnaffectedLibraries))]
    public void PatchingAnUnaffectedLibraryChangesNothing(string source)
    {
        string path = CopyToTemp(source, "unaffected.so");
        byte[] original = File.ReadAllBytes(path);
        var folderTime = new DateTime(2001, 2, 3, 4, 5, 6, DateTimeKind.Utc);
        Directory.SetLastWriteTimeUtc(_dir, folderTime);

        PatchResult result = LibStdCxxCompatPatcher.Patch(path);

        Assert.Equal(PatchStatus.NotNeeded, result.Status);
        Assert.Empty(result.Edits);
        Assert.Equal(original, File.ReadAllBytes(path));
        Assert.Equal(folderTime, Directory.GetLastWriteTimeUtc(_dir));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4)]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(4096)]
    [InlineData(1_000_000)]
    [InlineData(-100)] // cuts into the section header table at the end of the file
    public void TruncatedCopyIsAnUnexpectedLayoutAndStaysUntouched(int length)
    {
        byte[] full = File.ReadAllBytes(PristineLibrary);
        int keep = length >= 0 ? length : full.Length + length;
        string path = Path.Combine(_dir, "truncated.so");
        File.WriteAllBytes(path, full.AsSpan(0, keep).ToArray());
        byte[] before = File.ReadAllBytes(path);

        PatchResult result = LibStdCxxCompatPatcher.Patch(path);

        Assert.Equal(PatchStatus.UnexpectedLayout, result.Status);
        Assert.Contains("unexpected layout", result.Reason, StringComparison.OrdinalIgnoreCase);
        Assert.False(result.IsOk);
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    [Fact]
    public void NonElfFileIsAnUnexpectedLayoutAndStaysUntouched()
    {
        string path = Path.Combine(_dir, "libLibTorchSharp.so");
        File.WriteAllText(path, "this is a text file, not a shared library\n" + new string('x', 200));
        byte[] before = File.ReadAllBytes(path);

        PatchResult result = LibStdCxxCompatPatcher.Patch(path);

        Assert.Equal(PatchStatus.UnexpectedLayout, result.Status);
        Assert.Contains("not an ELF file", result.Reason, StringComparison.Ordinal);
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    [Fact]
    public void MissingFileIsReportedNotThrown()
    {
        PatchResult result = LibStdCxxCompatPatcher.Patch(Path.Combine(_dir, "does-not-exist.so"));
        Assert.Equal(PatchStatus.IoError, result.Status);
        Assert.Contains("not found", result.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Elf32AndBigEndianAreRejected()
    {
        byte[] image = File.ReadAllBytes(PristineLibrary);
        byte[] elf32 = (byte[])image.Clone();
        elf32[4] = 1;
        byte[] bigEndian = (byte[])image.Clone();
        bigEndian[5] = 2;

        Assert.Contains("64-bit", LibStdCxxCompatPatcher.Analyze(elf32).Reason, StringComparison.Ordinal);
        Assert.Contains("little-endian", LibStdCxxCompatPatcher.Analyze(bigEndian).Reason, StringComparison.Ordinal);
        Assert.Equal(PatchStatus.UnexpectedLayout, LibStdCxxCompatPatcher.Analyze(elf32).Status);
        Assert.Equal(PatchStatus.UnexpectedLayout, LibStdCxxCompatPatcher.Analyze(bigEndian).Status);
    }

    [Fact]
    public void CorruptedSectionTableIsAnUnexpectedLayout()
    {
        byte[] image = File.ReadAllBytes(PristineLibrary);
        var elf = new MiniElf(image);

        // Point .dynsym far beyond the end of the file.
        byte[] outside = (byte[])image.Clone();
        WriteU64(outside, elf.SectionHeaderOffset(".dynsym") + 24, (ulong)image.Length * 4);
        PatchResult result = LibStdCxxCompatPatcher.Analyze(outside);
        Assert.Equal(PatchStatus.UnexpectedLayout, result.Status);
        Assert.Contains(".dynsym", result.Reason, StringComparison.Ordinal);

        // Random garbage in the whole section header table must not throw either.
        var random = new Random(1234);
        for (int trial = 0; trial < 50; trial++)
        {
            byte[] noisy = (byte[])image.Clone();
            long table = elf.SectionHeaderTable;
            for (int k = 0; k < 16; k++)
            {
                noisy[table + random.Next(elf.SectionCount * 64)] = (byte)random.Next(256);
            }

            PatchResult noisyResult = LibStdCxxCompatPatcher.Analyze(noisy);
            Assert.False(string.IsNullOrWhiteSpace(noisyResult.Reason));
        }
    }

    [Fact]
    public void SharedNameBytesAreRefused()
    {
        byte[] image = File.ReadAllBytes(PristineLibrary);
        var elf = new MiniElf(image);
        MiniElf.Symbol target = Assert.Single(elf.Symbols, s => s.Name == OldName);
        MiniElf.Symbol other = elf.Symbols.First(s => s.Index > 0 && s.Index != target.Index);

        // Another symbol whose name is a suffix of the one to overwrite ("_library_initv").
        byte[] suffix = (byte[])image.Clone();
        WriteU32(suffix, elf.SymbolOffset(other.Index), target.NameOffset + 14);
        PatchResult result = LibStdCxxCompatPatcher.Analyze(suffix);
        Assert.Equal(PatchStatus.UnexpectedLayout, result.Status);
        Assert.Contains("shared", result.Reason, StringComparison.Ordinal);
        Assert.Empty(result.Edits);

        // Another symbol using the very same string.
        byte[] same = (byte[])image.Clone();
        WriteU32(same, elf.SymbolOffset(other.Index), target.NameOffset);
        Assert.Equal(PatchStatus.UnexpectedLayout, LibStdCxxCompatPatcher.Analyze(same).Status);

        // The name to overwrite is itself the tail of a longer string.
        byte[] longer = (byte[])image.Clone();
        longer[elf.DynStrOffset + target.NameOffset - 1] = (byte)'x';
        WriteU32(longer, elf.SymbolOffset(other.Index), target.NameOffset - 1);
        Assert.Equal(PatchStatus.UnexpectedLayout, LibStdCxxCompatPatcher.Analyze(longer).Status);
    }

    [Fact]
    public void AnotherSymbolNeedingTheVersionIsRefused()
    {
        byte[] image = File.ReadAllBytes(PristineLibrary);
        var elf = new MiniElf(image);
        MiniElf.Requirement requirement = Assert.Single(elf.Requirements, r => r.Name == Version);
        MiniElf.Symbol other = elf.Symbols.First(s => s.SectionIndex == 0 && s.Index > 0 && s.Name != OldName && elf.VersionOf(s.Index) > 1);
        long entry = elf.VersymOffset + (2L * other.Index);
        image[entry] = (byte)requirement.Index;
        image[entry + 1] = (byte)(requirement.Index >> 8);

        PatchResult result = LibStdCxxCompatPatcher.Analyze(image);

        Assert.Equal(PatchStatus.UnexpectedLayout, result.Status);
        Assert.Contains(other.Name, result.Reason, StringComparison.Ordinal);
        Assert.Empty(result.Edits);
    }

    [Fact]
    public void TheSearchListIsTheBuildsAndPutsThisArchitectureFirst()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
        {
            return;
        }

        string[] list = LibStdCxxSearchPath;
        Assert.Equal(8, list.Length);
        Assert.Equal(list.Length, list.Distinct(StringComparer.Ordinal).Count());
        Assert.All(list, path => Assert.EndsWith("/libstdc++.so.6", path, StringComparison.Ordinal));
        string triplet = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
        Assert.All(list.Take(2), path => Assert.Contains("/" + triplet + "/", path, StringComparison.Ordinal));
        Assert.Equal(["/usr/lib64", "/lib64", "/usr/lib", "/lib"], list.Skip(2).Take(4).Select(Path.GetDirectoryName));

        // On Debian and Ubuntu (multiarch), the list finds the system's libstdc++.
        if (File.Exists("/etc/debian_version"))
        {
            Assert.NotNull(SystemLibStdCxx.Locate(list));
        }
    }

    [Fact]
    public void LocateTakesTheFirstExistingFileOfTheList()
    {
        string first = Path.Combine(_dir, "a", "libstdc++.so.6");
        string second = Path.Combine(_dir, "b", "libstdc++.so.6");
        Directory.CreateDirectory(Path.GetDirectoryName(first)!);
        Directory.CreateDirectory(Path.GetDirectoryName(second)!);
        File.WriteAllText(second, "GLIBCXX_3.4.30");
        string missing = Path.Combine(_dir, "missing", "libstdc++.so.6");

        Assert.Null(SystemLibStdCxx.Locate([]));
        Assert.Null(SystemLibStdCxx.Locate([missing, ""]));
        Assert.Equal(second, SystemLibStdCxx.Locate([missing, first, second]));
        Assert.True(SystemLibStdCxx.LacksRequiredVersion([missing, second], out string? found));
        Assert.Equal(second, found);

        File.WriteAllText(first, "GLIBCXX_3.4.31\0GLIBCXX_3.4.32\0");
        Assert.Equal(first, SystemLibStdCxx.Locate([missing, first, second]));
        Assert.False(SystemLibStdCxx.LacksRequiredVersion([first, second], out found));
        Assert.Equal(first, found);
        Assert.False(SystemLibStdCxx.LacksRequiredVersion([missing], out found));
        Assert.Null(found);
    }

    [Fact]
    public void ByteSearchFindsTheVersionString()
    {
        byte[] haystack = Encoding.ASCII.GetBytes("\0GLIBCXX_3.4.30\0GLIBCXX_3.4.3\0");
        Assert.False(SystemLibStdCxx.Contains(haystack, Version));
        Assert.True(SystemLibStdCxx.Contains(Encoding.ASCII.GetBytes("..GLIBCXX_3.4.31\0GLIBCXX_3.4.32\0"), Version));
        Assert.True(SystemLibStdCxx.Contains(Encoding.ASCII.GetBytes(Version), Version));
    }

    [Fact]
    public void OutputCopyOfThisTestAssemblyIsRepairedWhenTheSystemNeedsIt()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux) || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return;
        }

        string output = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(output), "missing " + output);
        byte[] bytes = File.ReadAllBytes(output);
        var elf = new MiniElf(bytes);

        if (SystemLibStdCxx.LacksRequiredVersion(LibStdCxxSearchPath, out string? libstdcxx))
        {
            Assert.NotNull(libstdcxx);
            Assert.DoesNotContain(elf.Symbols, s => s.Name == OldName);
            Assert.Equal(0x2, Assert.Single(elf.Requirements, r => r.Name == Version).Flags & 0x2);
            Assert.Equal(PatchStatus.AlreadyPatched, LibStdCxxCompatPatcher.Analyze(bytes).Status);
        }
        else
        {
            Assert.Equal(File.ReadAllBytes(PristineLibrary), bytes);
        }
    }

    [Fact]
    public void DoubleBackwardRunsInProcess()
    {
        using var scope = torch.NewDisposeScope();
        Tensor x = torch.randn(3, dtype: ScalarType.Float64, requires_grad: true);
        Tensor y = x.pow(3).sum();

        IList<Tensor> first = torch.autograd.grad(new[] { y }, new[] { x }, retain_graph: true, create_graph: true);
        Tensor g = first[0];
        IList<Tensor> second = torch.autograd.grad(new[] { g.sum() }, new[] { x });

        double[] xs = x.detach().data<double>().ToArray();
        double[] gs = g.detach().data<double>().ToArray();
        double[] hs = second[0].data<double>().ToArray();
        Assert.Equal(3, hs.Length);
        for (int i = 0; i < xs.Length; i++)
        {
            Assert.Equal(3 * xs[i] * xs[i], gs[i], 1e-12);
            Assert.Equal(6 * xs[i], hs[i], 1e-12);
        }
    }

    private static void WriteU32(byte[] image, long offset, long value)
    {
        for (int i = 0; i < 4; i++)
        {
            image[offset + i] = (byte)(value >> (8 * i));
        }
    }

    private static void WriteU64(byte[] image, long offset, ulong value)
    {
        for (int i = 0; i < 8; i++)
        {
            image[offset + i] = (byte)(value >> (8 * i));
        }
    }

    /// <summary>Just enough ELF64 little-endian reading for these tests, independent of the patcher.</summary>
    private sealed class MiniElf
    {
        private readonly byte[] _image;
        private readonly Dictionary<string, (long HeaderOffset, long Offset, long Size)> _sections = new();

        public MiniElf(byte[] image)
        {
            _image = image;
            Assert.Equal(0x464c457fu, U32(0));
            Assert.Equal(2, image[4]);
            Assert.Equal(1, image[5]);
            SectionHeaderTable = (long)U64(0x28);
            SectionCount = U16(0x3c);
            long names = (long)U64(SectionHeaderTable + (U16(0x3e) * 64L) + 24);
            for (int i = 0; i < SectionCount; i++)
            {
                long header = SectionHeaderTable + (i * 64L);
                _sections[CString(names + U32(header))] = (header, (long)U64(header + 24), (long)U64(header + 32));
            }

            DynStrOffset = _sections[".dynstr"].Offset;
            VersymOffset = _sections[".gnu.version"].Offset;
            (_, long symOffset, long symSize) = _sections[".dynsym"];
            for (int i = 0; i < symSize / 24; i++)
            {
                long entry = symOffset + (24L * i);
                uint name = U32(entry);
                Symbols.Add(new Symbol(i, CString(DynStrOffset + name), name, U16(entry + 6)));
            }

            (_, long need, _) = _sections[".gnu.version_r"];
            while (true)
            {
                long aux = need + U32(need + 8);
                for (int a = 0; a < U16(need + 2); a++)
                {
                    Requirements.Add(new Requirement(CString(DynStrOffset + U32(aux + 8)), U16(aux + 4), U16(aux + 6), aux));
                    aux += U32(aux + 12);
                }

                uint next = U32(need + 12);
                if (next == 0)
                {
                    break;
                }

                need += next;
            }
        }

        public long SectionHeaderTable { get; }

        public int SectionCount { get; }

        public long DynStrOffset { get; }

        public long VersymOffset { get; }

        public List<Symbol> Symbols { get; } = new();

        public List<Requirement> Requirements { get; } = new();

        public int VersionOf(int symbolIndex) => U16(VersymOffset + (2L * symbolIndex));

        public long SymbolOffset(int symbolIndex) => _sections[".dynsym"].Offset + (24L * symbolIndex);

        public long SectionHeaderOffset(string name) => _sections[name].HeaderOffset;

        private ushort U16(long o) => (ushort)(_image[o] | (_image[o + 1] << 8));

        private uint U32(long o) => (uint)(U16(o) | (U16(o + 2) << 16));

        private ulong U64(long o) => U32(o) | ((ulong)U32(o + 4) << 32);

        private string CString(long o)
        {
            int end = Array.IndexOf(_image, (byte)0, (int)o);
            return Encoding.ASCII.GetString(_image, (int)o, end - (int)o);
        }

        public sealed record Symbol(int Index, string Name, uint NameOffset, int SectionIndex);

        public sealed record Requirement(string Name, int Flags, int Index, long AuxOffset);
    }
}

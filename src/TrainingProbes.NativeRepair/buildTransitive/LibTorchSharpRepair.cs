// Build-time repair of TorchSharp's libLibTorchSharp.so for Linux systems whose libstdc++ predates GCC 13.
//
// This file is compiled in three places and must stay compatible with all of them:
//  * by MSBuild's RoslynCodeTaskFactory (see TrainingProbes.NativeRepair.targets), against netstandard 2.0
//    reference assemblies plus Microsoft.Build.Framework / Microsoft.Build.Utilities.Core;
//  * by the test project, with TRAININGPROBES_REPAIR_TESTS defined (no MSBuild references there);
//  * never by the TrainingProbes.NativeRepair project itself (it is excluded from Compile and packed under
//    buildTransitive/).
//
// So: no Span, no newer BCL APIs, no records/init accessors, explicit usings.
//
// What the repair does (see the "TorchSharp 0.107.0 does not load on Debian 12 as shipped" platform note):
// libLibTorchSharp.so 0.107.0 imports exactly one symbol with version GLIBCXX_3.4.32,
// std::ios_base_library_init(), which only exists in GCC 13's libstdc++. On older runtimes the iostreams
// are initialized anyway, so the call can be made harmless. In place, without changing any size or offset:
//  1. the undefined dynamic symbol's name in .dynstr becomes _ZSt15get_new_handlerv (no arguments, no side
//     effects), padded with NUL bytes;
//  2. its .gnu.version entry becomes 1 (global, unversioned);
//  3. the GLIBCXX_3.4.32 entry in .gnu.version_r gets VER_FLG_WEAK, so the loader no longer insists on it.

#nullable enable

using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;

namespace TrainingProbes.Build
{
    /// <summary>Outcome of analyzing or patching one file.</summary>
    public enum PatchStatus
    {
        /// <summary>The file was repaired (or, for an analysis, would be).</summary>
        Patched,

        /// <summary>The file already carries the repair; nothing was written.</summary>
        AlreadyPatched,

        /// <summary>The file does not require GLIBCXX_3.4.32 for the symbol in question; nothing was written.</summary>
        NotNeeded,

        /// <summary>The file is not laid out as expected (not ELF64 little-endian, truncated, missing or inconsistent
        /// sections, shared strings...); nothing was written.</summary>
        UnexpectedLayout,

        /// <summary>The file could not be read or written; nothing was changed.</summary>
        IoError,
    }

    /// <summary>One in-place byte change planned by <see cref="LibStdCxxCompatPatcher.Analyze(byte[])"/>.</summary>
    public sealed class ByteEdit
    {
        /// <summary>Creates an edit.</summary>
        /// <param name="offset">File offset of the first byte to overwrite.</param>
        /// <param name="newBytes">The bytes to write there.</param>
        /// <param name="description">What the edit changes, for messages.</param>
        public ByteEdit(long offset, byte[] newBytes, string description)
        {
            Offset = offset;
            NewBytes = newBytes;
            Description = description;
        }

        /// <summary>File offset of the first byte to overwrite.</summary>
        public long Offset { get; }

        /// <summary>The bytes to write at <see cref="Offset"/>.</summary>
        public byte[] NewBytes { get; }

        /// <summary>What the edit changes.</summary>
        public string Description { get; }
    }

    /// <summary>Result of <see cref="LibStdCxxCompatPatcher.Analyze(byte[])"/> and
    /// <see cref="LibStdCxxCompatPatcher.Patch(string)"/>.</summary>
    public sealed class PatchResult
    {
        /// <summary>Creates a result.</summary>
        /// <param name="status">The outcome.</param>
        /// <param name="reason">Human-readable explanation.</param>
        /// <param name="edits">The in-place edits (empty unless <paramref name="status"/> is
        /// <see cref="PatchStatus.Patched"/>).</param>
        public PatchResult(PatchStatus status, string reason, IReadOnlyList<ByteEdit>? edits = null)
        {
            Status = status;
            Reason = reason;
            Edits = edits ?? Array.Empty<ByteEdit>();
        }

        /// <summary>The outcome.</summary>
        public PatchStatus Status { get; }

        /// <summary>Human-readable explanation of the outcome (why the file was or was not changed).</summary>
        public string Reason { get; }

        /// <summary>The in-place edits that were (or would be) applied; empty when nothing changes.</summary>
        public IReadOnlyList<ByteEdit> Edits { get; }

        /// <summary>True when the file is usable afterwards without the system having GLIBCXX_3.4.32
        /// (patched, already patched, or not needing it).</summary>
        public bool IsOk => Status == PatchStatus.Patched || Status == PatchStatus.AlreadyPatched || Status == PatchStatus.NotNeeded;

        /// <inheritdoc />
        public override string ToString() => Status + ": " + Reason;
    }

    /// <summary>
    /// Repairs a shared library built against GCC 13's libstdc++ so that it loads on an older libstdc++,
    /// when its only GLIBCXX_3.4.32 import is <c>std::ios_base_library_init()</c>. Pure managed ELF64
    /// little-endian editing; sizes and offsets never change.
    /// </summary>
    public static class LibStdCxxCompatPatcher
    {
        /// <summary>The undefined symbol that requires GLIBCXX_3.4.32 (<c>std::ios_base_library_init()</c>).</summary>
        public const string OldSymbol = "_ZSt21ios_base_library_initv";

        /// <summary>Its replacement (<c>std::get_new_handler()</c>): no arguments, no side effects, available
        /// since GLIBCXX_3.4.20.</summary>
        public const string NewSymbol = "_ZSt15get_new_handlerv";

        /// <summary>The version the system libstdc++ lacks.</summary>
        public const string RequiredVersion = "GLIBCXX_3.4.32";

        /// <summary>VER_FLG_WEAK from elf.h.</summary>
        public const ushort VerFlagWeak = 0x2;

        private const uint ShtStrtab = 3;
        private const uint ShtDynamic = 6;
        private const uint ShtNobits = 8;
        private const uint ShtSymtab = 2;
        private const uint ShtDynsym = 11;
        private const uint ShtGnuVerdef = 0x6ffffffd;
        private const uint ShtGnuVerneed = 0x6ffffffe;
        private const uint ShtGnuVersym = 0x6fffffff;
        private const int MaxChainLength = 1 << 16;

        /// <summary>
        /// Repairs the file at <paramref name="path"/> in place if it needs it. Nothing is written when the
        /// file is already patched, does not need patching, or has an unexpected layout. When it is patched,
        /// the new contents go to a temporary file in the same folder that is then renamed over the original,
        /// so a hard link (for instance into the NuGet cache) is replaced, never written through. The
        /// original permissions and last-write time are kept, so MSBuild's incremental copy keeps treating
        /// the file as up to date. Never throws.
        /// </summary>
        /// <param name="path">The shared library to repair.</param>
        /// <returns>What happened, with a human-readable reason.</returns>
        public static PatchResult Patch(string path)
        {
            byte[] image;
            DateTime lastWriteUtc;
            try
            {
                var info = new FileInfo(path);
                if (!info.Exists)
                {
                    return new PatchResult(PatchStatus.IoError, "file not found: " + path);
                }

                if (info.Length > int.MaxValue)
                {
                    return new PatchResult(PatchStatus.UnexpectedLayout, "file is larger than 2 GiB");
                }

                lastWriteUtc = info.LastWriteTimeUtc;
                image = File.ReadAllBytes(path);
            }
            catch (Exception e)
            {
                return new PatchResult(PatchStatus.IoError, "cannot read the file: " + e.Message);
            }

            PatchResult analysis = Analyze(image);
            if (analysis.Status != PatchStatus.Patched)
            {
                return analysis;
            }

            byte[] patched = (byte[])image.Clone();
            Apply(patched, analysis);

            string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
            if (directory == null)
            {
                return new PatchResult(PatchStatus.IoError, "cannot determine the folder of " + path);
            }

            string temp = Path.Combine(directory, "." + Path.GetFileName(path) + ".tpb-" + Guid.NewGuid().ToString("N") + ".tmp");
            try
            {
                // Copying first gives the temporary file the original's permission bits.
                File.Copy(path, temp, true);
                using (var stream = new FileStream(temp, FileMode.Truncate, FileAccess.Write, FileShare.None))
                {
                    stream.Write(patched, 0, patched.Length);
                }

                File.SetLastWriteTimeUtc(temp, lastWriteUtc);

                // On Unix this is rename(2): the directory entry is replaced, the old inode (and any other
                // hard link to it) is left untouched.
                File.Replace(temp, path, null);
            }
            catch (Exception e)
            {
                TryDelete(temp);
                return new PatchResult(PatchStatus.IoError, "cannot write the repaired file: " + e.Message);
            }

            return analysis;
        }

        /// <summary>Writes the edits of a <see cref="PatchStatus.Patched"/> analysis into <paramref name="image"/>.</summary>
        /// <param name="image">The file contents that were analyzed.</param>
        /// <param name="analysis">The result of <see cref="Analyze(byte[])"/> for <paramref name="image"/>.</param>
        public static void Apply(byte[] image, PatchResult analysis)
        {
            if (image == null)
            {
                throw new ArgumentNullException(nameof(image));
            }

            if (analysis == null)
            {
                throw new ArgumentNullException(nameof(analysis));
            }

            foreach (ByteEdit edit in analysis.Edits)
            {
                if (edit.Offset < 0 || edit.Offset + edit.NewBytes.Length > image.Length)
                {
                    throw new ArgumentException("the analysis does not belong to this image", nameof(analysis));
                }

                Buffer.BlockCopy(edit.NewBytes, 0, image, (int)edit.Offset, edit.NewBytes.Length);
            }
        }

        /// <summary>
        /// Decides what the repair would change in <paramref name="image"/>, without changing it. Never throws
        /// for malformed input: any surprise yields <see cref="PatchStatus.UnexpectedLayout"/> with a reason.
        /// </summary>
        /// <param name="image">The complete contents of an ELF file.</param>
        /// <returns>The planned edits and the reason.</returns>
        public static PatchResult Analyze(byte[] image)
        {
            if (image == null)
            {
                return Unexpected("no data");
            }

            try
            {
                return AnalyzeCore(image);
            }
            catch (LayoutException e)
            {
                return Unexpected(e.Message);
            }
            catch (Exception e)
            {
                // Defensive: bounds are checked explicitly, but a malformed file must never escape as an exception.
                return Unexpected("malformed ELF (" + e.GetType().Name + ": " + e.Message + ")");
            }
        }

        private static PatchResult AnalyzeCore(byte[] image)
        {
            var elf = new Elf64(image);

            Section? dynsym = elf.FindSection(".dynsym");
            Section? dynstr = elf.FindSection(".dynstr");
            if (dynsym == null || dynstr == null)
            {
                throw new LayoutException("no .dynsym/.dynstr section: not a dynamically linked ELF file");
            }

            Require(dynsym.Type == ShtDynsym, ".dynsym does not have type SHT_DYNSYM");
            Require(dynstr.Type == ShtStrtab, ".dynstr does not have type SHT_STRTAB");
            Require(dynsym.Link == dynstr.Index, ".dynsym does not use .dynstr as its string table");
            Require(dynsym.EntrySize == 24, ".dynsym entry size is " + dynsym.EntrySize + ", expected 24");
            Require(dynsym.Size % 24 == 0, ".dynsym size is not a multiple of its entry size");
            elf.RequireInFile(dynsym);
            elf.RequireInFile(dynstr);
            int symbolCount = (int)(dynsym.Size / 24);

            // Undefined dynamic symbols named OldSymbol.
            int target = -1;
            for (int i = 1; i < symbolCount; i++)
            {
                long entry = dynsym.Offset + (24L * i);
                ushort shndx = elf.U16(entry + 6);
                if (shndx != 0)
                {
                    continue;
                }

                uint name = elf.U32(entry);
                if (StringEquals(elf, dynstr, name, OldSymbol))
                {
                    Require(target < 0, "more than one undefined dynamic symbol named " + OldSymbol);
                    target = i;
                }
            }

            Section? versym = elf.FindSection(".gnu.version");
            Section? verneed = elf.FindSection(".gnu.version_r");
            if (verneed == null)
            {
                return new PatchResult(PatchStatus.NotNeeded, "the file has no version requirements (.gnu.version_r)");
            }

            Require(verneed.Type == ShtGnuVerneed, ".gnu.version_r does not have type SHT_GNU_verneed");
            Require(verneed.Link == dynstr.Index, ".gnu.version_r does not use .dynstr as its string table");
            elf.RequireInFile(verneed);
            if (versym == null)
            {
                throw new LayoutException("the file has .gnu.version_r but no .gnu.version section");
            }

            Require(versym.Type == ShtGnuVersym, ".gnu.version does not have type SHT_GNU_versym");
            Require(versym.Link == dynsym.Index, ".gnu.version does not belong to .dynsym");
            Require(versym.Size == 2L * symbolCount, ".gnu.version has " + (versym.Size / 2) + " entries for " + symbolCount + " dynamic symbols");
            elf.RequireInFile(versym);

            // Walk the version requirements: find the GLIBCXX_3.4.32 auxiliary entry, collect string offsets.
            var referencedStrings = new List<uint>();
            long auxOffset = -1;
            ushort auxFlags = 0;
            ushort auxIndex = 0;
            long needEnd = verneed.Offset + verneed.Size;
            long need = verneed.Offset;
            int needCount = 0;
            while (true)
            {
                Require(++needCount <= MaxChainLength, ".gnu.version_r chain does not end");
                Require(need >= verneed.Offset && need + 16 <= needEnd, ".gnu.version_r entry lies outside the section");
                ushort vnCount = elf.U16(need + 2);
                referencedStrings.Add(elf.U32(need + 4));
                uint vnAux = elf.U32(need + 8);
                uint vnNext = elf.U32(need + 12);
                long aux = need + vnAux;
                for (int a = 0; a < vnCount; a++)
                {
                    Require(aux >= verneed.Offset && aux + 16 <= needEnd, ".gnu.version_r auxiliary entry lies outside the section");
                    ushort flags = elf.U16(aux + 4);
                    ushort other = elf.U16(aux + 6);
                    uint name = elf.U32(aux + 8);
                    uint next = elf.U32(aux + 12);
                    referencedStrings.Add(name);
                    if (StringEquals(elf, dynstr, name, RequiredVersion))
                    {
                        Require(auxOffset < 0, "more than one " + RequiredVersion + " entry in .gnu.version_r");
                        auxOffset = aux;
                        auxFlags = flags;
                        auxIndex = other;
                    }

                    if (next == 0)
                    {
                        Require(a == vnCount - 1, ".gnu.version_r auxiliary chain is shorter than its count");
                        break;
                    }

                    aux += next;
                }

                if (vnNext == 0)
                {
                    break;
                }

                need += vnNext;
            }

            if (verneed.Info != 0)
            {
                Require(needCount == verneed.Info, ".gnu.version_r has " + needCount + " entries, its header says " + verneed.Info);
            }

            if (auxOffset < 0)
            {
                if (target >= 0)
                {
                    ushort version = (ushort)(elf.U16(versym.Offset + (2L * target)) & 0x7fff);
                    if (version <= 1)
                    {
                        return new PatchResult(PatchStatus.NotNeeded, OldSymbol + " is imported without a version");
                    }

                    throw new LayoutException(OldSymbol + " is imported with version index " + version + ", but the file has no " + RequiredVersion + " requirement");
                }

                return new PatchResult(PatchStatus.NotNeeded, "the file does not require " + RequiredVersion);
            }

            Require(auxIndex > 1, RequiredVersion + " has the reserved version index " + auxIndex);

            // Which other symbols are versioned GLIBCXX_3.4.32? After the repair none may remain.
            int otherUsers = 0;
            string? firstOther = null;
            for (int i = 1; i < symbolCount; i++)
            {
                if (i == target)
                {
                    continue;
                }

                ushort version = (ushort)(elf.U16(versym.Offset + (2L * i)) & 0x7fff);
                if (version == auxIndex)
                {
                    otherUsers++;
                    if (firstOther == null)
                    {
                        firstOther = ReadString(elf, dynstr, elf.U32(dynsym.Offset + (24L * i))) ?? "<unreadable name>";
                    }
                }
            }

            if (otherUsers > 0)
            {
                throw new LayoutException(otherUsers + " other dynamic symbol(s) also need " + RequiredVersion + " (for example " + firstOther + "); renaming " + OldSymbol + " would not be enough");
            }

            bool isWeak = (auxFlags & VerFlagWeak) != 0;
            if (target < 0)
            {
                if (isWeak)
                {
                    return new PatchResult(PatchStatus.AlreadyPatched, "already patched: no " + OldSymbol + " import, " + RequiredVersion + " is a weak requirement");
                }

                // The requirement is there but nothing uses it: making it weak is all that is left to do.
                return new PatchResult(
                    PatchStatus.Patched,
                    RequiredVersion + " is required but unused; marked it weak",
                    new[] { FlagsEdit(auxOffset, auxFlags) });
            }

            long versymEntry = versym.Offset + (2L * target);
            ushort targetVersion = (ushort)(elf.U16(versymEntry) & 0x7fff);
            Require(targetVersion == auxIndex, OldSymbol + " has version index " + targetVersion + ", expected " + auxIndex + " (" + RequiredVersion + ")");

            // Collect every other reference into .dynstr, then make sure none of them can see the renamed bytes.
            uint targetName = elf.U32(dynsym.Offset + (24L * target));
            for (int i = 1; i < symbolCount; i++)
            {
                if (i != target)
                {
                    referencedStrings.Add(elf.U32(dynsym.Offset + (24L * i)));
                }
            }

            CollectDynamicStrings(elf, dynstr, referencedStrings);
            CollectVerdefStrings(elf, dynstr, referencedStrings);
            CollectSymtabStrings(elf, dynstr, dynsym, referencedStrings);

            // The overwritten bytes are [targetName, targetName + OldSymbol.Length). A reference is affected if it
            // points into them, or points earlier into the same NUL-free run (OldSymbol is then a suffix of it).
            long runStart = targetName;
            while (runStart > 0 && elf.Byte(dynstr.Offset + runStart - 1) != 0)
            {
                runStart--;
            }

            long overwriteEnd = targetName + OldSymbol.Length;
            foreach (uint reference in referencedStrings)
            {
                if (reference >= runStart && reference < overwriteEnd)
                {
                    string which = reference == targetName
                        ? "another reference uses the same string"
                        : reference < targetName ? "it is the suffix of a longer string" : "another string is a suffix of it";
                    throw new LayoutException("the name " + OldSymbol + " in .dynstr is shared (" + which + ", at .dynstr offset " + reference + ")");
                }
            }

            var newName = new byte[OldSymbol.Length];
            Encoding.ASCII.GetBytes(NewSymbol, 0, NewSymbol.Length, newName, 0);
            var edits = new List<ByteEdit>
            {
                new ByteEdit(dynstr.Offset + targetName, newName, "rename " + OldSymbol + " to " + NewSymbol + " in .dynstr"),
                new ByteEdit(versymEntry, new byte[] { 1, 0 }, "set the .gnu.version entry of symbol " + target + " to 1 (global)"),
            };
            if (!isWeak)
            {
                edits.Add(FlagsEdit(auxOffset, auxFlags));
            }

            return new PatchResult(
                PatchStatus.Patched,
                "renamed the " + RequiredVersion + " import " + OldSymbol + " to " + NewSymbol + " and made " + RequiredVersion + " a weak requirement",
                edits);
        }

        private static ByteEdit FlagsEdit(long auxOffset, ushort flags)
        {
            ushort weak = (ushort)(flags | VerFlagWeak);
            return new ByteEdit(auxOffset + 4, new[] { (byte)(weak & 0xff), (byte)(weak >> 8) }, "set VER_FLG_WEAK on " + RequiredVersion);
        }

        private static void CollectDynamicStrings(Elf64 elf, Section dynstr, List<uint> references)
        {
            Section? dynamic = elf.FindSection(".dynamic");
            if (dynamic == null)
            {
                throw new LayoutException("no .dynamic section");
            }

            Require(dynamic.Type == ShtDynamic, ".dynamic does not have type SHT_DYNAMIC");
            Require(dynamic.Link == dynstr.Index, ".dynamic does not use .dynstr as its string table");
            elf.RequireInFile(dynamic);
            for (long entry = dynamic.Offset; entry + 16 <= dynamic.Offset + dynamic.Size; entry += 16)
            {
                long tag = (long)elf.U64(entry);
                if (tag == 0)
                {
                    break;
                }

                switch (tag)
                {
                    case 1: // DT_NEEDED
                    case 14: // DT_SONAME
                    case 15: // DT_RPATH
                    case 29: // DT_RUNPATH
                    case 0x6ffffefa: // DT_CONFIG
                    case 0x6ffffefb: // DT_DEPAUDIT
                    case 0x6ffffefc: // DT_AUDIT
                    case 0x7ffffffd: // DT_AUXILIARY
                    case 0x7fffffff: // DT_FILTER
                        ulong value = elf.U64(entry + 8);
                        Require(value < (ulong)dynstr.Size, ".dynamic string offset " + value + " lies outside .dynstr");
                        references.Add((uint)value);
                        break;
                }
            }
        }

        private static void CollectVerdefStrings(Elf64 elf, Section dynstr, List<uint> references)
        {
            Section? verdef = elf.FindSection(".gnu.version_d");
            if (verdef == null)
            {
                return;
            }

            Require(verdef.Type == ShtGnuVerdef, ".gnu.version_d does not have type SHT_GNU_verdef");
            Require(verdef.Link == dynstr.Index, ".gnu.version_d does not use .dynstr as its string table");
            elf.RequireInFile(verdef);
            long end = verdef.Offset + verdef.Size;
            long def = verdef.Offset;
            for (int n = 0; ; n++)
            {
                Require(n < MaxChainLength, ".gnu.version_d chain does not end");
                Require(def >= verdef.Offset && def + 20 <= end, ".gnu.version_d entry lies outside the section");
                ushort count = elf.U16(def + 6);
                uint auxRel = elf.U32(def + 12);
                uint next = elf.U32(def + 16);
                long aux = def + auxRel;
                for (int a = 0; a < count; a++)
                {
                    Require(aux >= verdef.Offset && aux + 8 <= end, ".gnu.version_d auxiliary entry lies outside the section");
                    references.Add(elf.U32(aux));
                    uint auxNext = elf.U32(aux + 4);
                    if (auxNext == 0)
                    {
                        break;
                    }

                    aux += auxNext;
                }

                if (next == 0)
                {
                    return;
                }

                def += next;
            }
        }

        private static void CollectSymtabStrings(Elf64 elf, Section dynstr, Section dynsym, List<uint> references)
        {
            // A .symtab normally has its own .strtab; if some table besides .dynsym shares .dynstr, count its names too.
            foreach (Section section in elf.Sections)
            {
                if (section.Index == dynsym.Index || section.Link != dynstr.Index)
                {
                    continue;
                }

                if (section.Type != ShtSymtab && section.Type != ShtDynsym)
                {
                    continue;
                }

                Require(section.EntrySize == 24 && section.Size % 24 == 0, section.Name + " has an unexpected entry size");
                elf.RequireInFile(section);
                for (long entry = section.Offset; entry < section.Offset + section.Size; entry += 24)
                {
                    references.Add(elf.U32(entry));
                }
            }
        }

        private static bool StringEquals(Elf64 elf, Section table, uint offset, string expected)
        {
            if (offset + (long)expected.Length >= table.Size)
            {
                return false;
            }

            long start = table.Offset + offset;
            for (int i = 0; i < expected.Length; i++)
            {
                if (elf.Byte(start + i) != (byte)expected[i])
                {
                    return false;
                }
            }

            return elf.Byte(start + expected.Length) == 0;
        }

        private static string? ReadString(Elf64 elf, Section table, uint offset)
        {
            if (offset >= table.Size)
            {
                return null;
            }

            var builder = new StringBuilder();
            for (long p = table.Offset + offset; p < table.Offset + table.Size; p++)
            {
                byte b = elf.Byte(p);
                if (b == 0)
                {
                    return builder.ToString();
                }

                builder.Append((char)b);
            }

            return null;
        }

        private static void Require(bool condition, string reason)
        {
            if (!condition)
            {
                throw new LayoutException(reason);
            }
        }

        private static PatchResult Unexpected(string reason) =>
            new PatchResult(PatchStatus.UnexpectedLayout, "unexpected layout: " + reason + "; the file was left unchanged");

        private static void TryDelete(string path)
        {
            try
            {
                File.Delete(path);
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        private sealed class LayoutException : Exception
        {
            public LayoutException(string message)
                : base(message)
            {
            }
        }

        private sealed class Section
        {
            public Section(int index, string name, uint type, ulong offset, ulong size, uint link, uint info, ulong entrySize)
            {
                Index = index;
                Name = name;
                Type = type;
                Offset = (long)offset;
                Size = (long)size;
                Link = link;
                Info = info;
                EntrySize = (long)entrySize;
            }

            public int Index { get; }

            public string Name { get; }

            public uint Type { get; }

            public long Offset { get; }

            public long Size { get; }

            public uint Link { get; }

            public uint Info { get; }

            public long EntrySize { get; }
        }

        /// <summary>Bounds-checked little-endian reads over an ELF64 image, plus its section headers.</summary>
        private sealed class Elf64
        {
            private readonly byte[] _image;

            public Elf64(byte[] image)
            {
                _image = image;
                Require(image.Length >= 64, "file is too short for an ELF header (" + image.Length + " bytes)");
                Require(image[0] == 0x7f && image[1] == (byte)'E' && image[2] == (byte)'L' && image[3] == (byte)'F', "not an ELF file");
                Require(image[4] == 2, "not a 64-bit ELF file (EI_CLASS " + image[4] + ")");
                Require(image[5] == 1, "not a little-endian ELF file (EI_DATA " + image[5] + ")");

                ulong shoff = U64(0x28);
                ushort shentsize = U16(0x3a);
                long shnum = U16(0x3c);
                long shstrndx = U16(0x3e);
                Require(shoff != 0, "the file has no section header table");
                Require(shentsize == 64, "section header size is " + shentsize + ", expected 64");
                Require(shoff <= (ulong)image.Length, "section header table lies beyond the end of the file (truncated?)");
                Require((long)shoff + 64 <= image.Length, "section header table lies beyond the end of the file (truncated?)");

                // Extended numbering: counts that do not fit live in section 0.
                if (shnum == 0)
                {
                    shnum = (long)U64((long)shoff + 32);
                }

                if (shstrndx == 0xffff)
                {
                    shstrndx = U32((long)shoff + 40);
                }

                Require(shnum > 0 && shnum <= MaxChainLength, "implausible number of sections (" + shnum + ")");
                Require((long)shoff + (shnum * 64) <= image.Length, "section header table lies beyond the end of the file (truncated?)");
                Require(shstrndx > 0 && shstrndx < shnum, "section name table index " + shstrndx + " is out of range");

                long namesHeader = (long)shoff + (shstrndx * 64);
                ulong namesOffset = U64(namesHeader + 24);
                ulong namesSize = U64(namesHeader + 32);
                Require(U32(namesHeader + 4) == ShtStrtab, "section name table is not a string table");
                Require(namesOffset <= (ulong)image.Length && namesSize <= (ulong)image.Length - namesOffset, "section name table lies beyond the end of the file (truncated?)");

                var sections = new List<Section>((int)shnum);
                for (int i = 0; i < shnum; i++)
                {
                    long header = (long)shoff + (i * 64L);
                    uint nameOffset = U32(header);
                    string name = ReadName((long)namesOffset, (long)namesSize, nameOffset);
                    sections.Add(new Section(i, name, U32(header + 4), U64(header + 24), U64(header + 32), U32(header + 40), U32(header + 44), U64(header + 56)));
                }

                Sections = sections;
            }

            public IReadOnlyList<Section> Sections { get; }

            public Section? FindSection(string name)
            {
                Section? found = null;
                foreach (Section section in Sections)
                {
                    if (section.Name == name)
                    {
                        Require(found == null, "more than one " + name + " section");
                        found = section;
                    }
                }

                return found;
            }

            public void RequireInFile(Section section)
            {
                Require(section.Type != ShtNobits, section.Name + " has no contents in the file");
                Require(
                    section.Offset >= 0 && section.Size >= 0 && section.Offset <= _image.Length && section.Size <= _image.Length - section.Offset,
                    section.Name + " lies beyond the end of the file (truncated?)");
            }

            public byte Byte(long offset)
            {
                Check(offset, 1);
                return _image[offset];
            }

            public ushort U16(long offset)
            {
                Check(offset, 2);
                return (ushort)(_image[offset] | (_image[offset + 1] << 8));
            }

            public uint U32(long offset)
            {
                Check(offset, 4);
                return _image[offset] | ((uint)_image[offset + 1] << 8) | ((uint)_image[offset + 2] << 16) | ((uint)_image[offset + 3] << 24);
            }

            public ulong U64(long offset) => U32(offset) | ((ulong)U32(offset + 4) << 32);

            private string ReadName(long tableOffset, long tableSize, uint offset)
            {
                if (offset >= tableSize)
                {
                    return string.Empty;
                }

                var builder = new StringBuilder();
                for (long p = tableOffset + offset; p < tableOffset + tableSize; p++)
                {
                    byte b = _image[p];
                    if (b == 0)
                    {
                        break;
                    }

                    builder.Append((char)b);
                }

                return builder.ToString();
            }

            private void Check(long offset, int length)
            {
                if (offset < 0 || offset > _image.Length - length)
                {
                    throw new LayoutException("a read at offset " + offset + " lies beyond the end of the file (truncated?)");
                }
            }
        }
    }

    /// <summary>Finds the system's libstdc++ and tells whether it provides GLIBCXX_3.4.32. The places to look are
    /// the build's one search list (<c>_TrainingProbesLibStdCxxSearchPath</c> in TrainingProbes.NativeRepair.targets,
    /// given to the task as <c>LibStdCxxSearchPath</c>).</summary>
    public static class SystemLibStdCxx
    {
        /// <summary>Returns the first of <paramref name="searchPath"/> that is an existing file, or null when there is
        /// none.</summary>
        /// <param name="searchPath">Paths of <c>libstdc++.so.6</c> candidates, in order of preference.</param>
        /// <returns>The path, or null.</returns>
        public static string? Locate(IEnumerable<string> searchPath)
        {
            foreach (string candidate in searchPath ?? Array.Empty<string>())
            {
                try
                {
                    if (!string.IsNullOrWhiteSpace(candidate) && File.Exists(candidate))
                    {
                        return candidate;
                    }
                }
                catch (Exception)
                {
                    // Unreadable folder: keep looking.
                }
            }

            return null;
        }

        /// <summary>
        /// True when a system libstdc++ was found and its bytes do not contain <c>GLIBCXX_3.4.32</c>, i.e. when
        /// an unpatched libLibTorchSharp.so would fail to load. False when it has the version, or when no
        /// libstdc++ was found or it could not be read (then nothing should be done).
        /// </summary>
        /// <param name="searchPath">Where to look for it, as for <see cref="Locate(IEnumerable{string})"/>.</param>
        /// <param name="libraryPath">The libstdc++ that was examined, or null.</param>
        /// <returns>Whether the repair is needed on this system.</returns>
        public static bool LacksRequiredVersion(IEnumerable<string> searchPath, out string? libraryPath)
        {
            libraryPath = Locate(searchPath);
            if (libraryPath == null)
            {
                return false;
            }

            try
            {
                return !Contains(File.ReadAllBytes(libraryPath), LibStdCxxCompatPatcher.RequiredVersion);
            }
            catch (Exception)
            {
                return false;
            }
        }

        /// <summary>True when <paramref name="haystack"/> contains the ASCII bytes of <paramref name="needle"/>.</summary>
        /// <param name="haystack">Bytes to search.</param>
        /// <param name="needle">ASCII text to look for.</param>
        /// <returns>Whether the text occurs.</returns>
        public static bool Contains(byte[] haystack, string needle)
        {
            byte[] pattern = Encoding.ASCII.GetBytes(needle);
            if (pattern.Length == 0)
            {
                return true;
            }

            int last = haystack.Length - pattern.Length;
            byte first = pattern[0];
            for (int i = 0; i <= last; i++)
            {
                if (haystack[i] != first)
                {
                    continue;
                }

                int j = 1;
                while (j < pattern.Length && haystack[i + j] == pattern[j])
                {
                    j++;
                }

                if (j == pattern.Length)
                {
                    return true;
                }
            }

            return false;
        }
    }

#if !TRAININGPROBES_REPAIR_TESTS
    /// <summary>
    /// MSBuild task: repairs the given copies of libLibTorchSharp.so when running on Linux whose libstdc++ lacks
    /// GLIBCXX_3.4.32. Logs a low-importance message per repaired file and one warning (TPB001) per file that
    /// cannot be repaired. Never fails the build.
    /// </summary>
    public class RepairLibTorchSharp : Microsoft.Build.Utilities.Task
    {
        /// <summary>Candidate files; those that do not exist are ignored.</summary>
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        /// <summary>Folders whose files are never modified (the NuGet package folders).</summary>
        public string[] ProtectedRoots { get; set; } = Array.Empty<string>();

        /// <summary>Where the system libstdc++.so.6 is looked for, in order (the targets' one search list).</summary>
        public string[] LibStdCxxSearchPath { get; set; } = Array.Empty<string>();

        /// <summary>The files that were repaired by this run.</summary>
        [Microsoft.Build.Framework.Output]
        public Microsoft.Build.Framework.ITaskItem[] PatchedFiles { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        /// <summary>The files that need no further work on this system (repaired now or before, not needing it, or
        /// the system does not need the repair); the targets remember their hashes to skip the task next time.</summary>
        [Microsoft.Build.Framework.Output]
        public Microsoft.Build.Framework.ITaskItem[] SettledFiles { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        /// <inheritdoc />
        public override bool Execute()
        {
            if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
            {
                return true;
            }

            var existing = new List<string>();
            foreach (Microsoft.Build.Framework.ITaskItem item in Files ?? Array.Empty<Microsoft.Build.Framework.ITaskItem>())
            {
                string path = item.GetMetadata("FullPath");
                if (!string.IsNullOrEmpty(path) && File.Exists(path) && !existing.Contains(path))
                {
                    existing.Add(path);
                }
            }

            if (existing.Count == 0)
            {
                return true;
            }

            if (!SystemLibStdCxx.LacksRequiredVersion(LibStdCxxSearchPath, out string? libstdcxx))
            {
                Log.LogMessage(
                    Microsoft.Build.Framework.MessageImportance.Low,
                    "TrainingProbes: {0}; libLibTorchSharp.so left as shipped.",
                    libstdcxx == null ? "no system libstdc++.so.6 found" : libstdcxx + " provides " + LibStdCxxCompatPatcher.RequiredVersion);
                SettledFiles = existing.ConvertAll(p => (Microsoft.Build.Framework.ITaskItem)new Microsoft.Build.Utilities.TaskItem(p)).ToArray();
                return true;
            }

            var patched = new List<Microsoft.Build.Framework.ITaskItem>();
            var settled = new List<Microsoft.Build.Framework.ITaskItem>();
            foreach (string path in existing)
            {
                if (IsProtected(path))
                {
                    Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low, "TrainingProbes: not touching {0}: it is inside a package folder.", path);
                    continue;
                }

                PatchResult result = LibStdCxxCompatPatcher.Patch(path);
                switch (result.Status)
                {
                    case PatchStatus.Patched:
                        patched.Add(new Microsoft.Build.Utilities.TaskItem(path));
                        settled.Add(new Microsoft.Build.Utilities.TaskItem(path));
                        Log.LogMessage(
                            Microsoft.Build.Framework.MessageImportance.Low,
                            "TrainingProbes: repaired {0} for {1} (which lacks {2}): {3}.",
                            path,
                            libstdcxx,
                            LibStdCxxCompatPatcher.RequiredVersion,
                            result.Reason);
                        break;
                    case PatchStatus.AlreadyPatched:
                    case PatchStatus.NotNeeded:
                        settled.Add(new Microsoft.Build.Utilities.TaskItem(path));
                        Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low, "TrainingProbes: {0}: {1}.", path, result.Reason);
                        break;
                    default:
                        Log.LogWarning(
                            null,
                            "TPB001",
                            null,
                            path,
                            0,
                            0,
                            0,
                            0,
                            "TrainingProbes could not repair {0} for this system's libstdc++ ({1} lacks {2}): {3}. TorchSharp will probably fail to load it with \"version '{2}' not found\". Set TrainingProbesRepairLibTorchSharp=false to skip this step.",
                            path,
                            libstdcxx,
                            LibStdCxxCompatPatcher.RequiredVersion,
                            result.Reason);
                        break;
                }
            }

            PatchedFiles = patched.ToArray();
            SettledFiles = settled.ToArray();
            return !Log.HasLoggedErrors;
        }

        private bool IsProtected(string path)
        {
            string full = Path.GetFullPath(path);
            foreach (string root in ProtectedRoots ?? Array.Empty<string>())
            {
                if (string.IsNullOrWhiteSpace(root))
                {
                    continue;
                }

                string prefix = Path.GetFullPath(root).TrimEnd('/') + "/";
                if (full.StartsWith(prefix, StringComparison.Ordinal))
                {
                    return true;
                }
            }

            return false;
        }
    }
#endif
}

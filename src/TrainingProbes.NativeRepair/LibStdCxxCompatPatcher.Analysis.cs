// Planning the repair: which bytes of an ELF image change, or why none may (see LibStdCxxCompatPatcher.cs for
// what the repair does). Reads only; never throws for malformed input.

using System;
using System.Collections.Generic;
using System.Text;
using static TrainingProbes.Build.Elf64;

namespace TrainingProbes.Build
{
    public static partial class LibStdCxxCompatPatcher
    {
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
            catch (ElfLayoutException e)
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

            ElfSection? dynsym = elf.FindSection(".dynsym");
            ElfSection? dynstr = elf.FindSection(".dynstr");
            if (dynsym == null || dynstr == null)
            {
                throw new ElfLayoutException("no .dynsym/.dynstr section: not a dynamically linked ELF file");
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
                if (elf.StringEquals(dynstr, name, OldSymbol))
                {
                    Require(target < 0, "more than one undefined dynamic symbol named " + OldSymbol);
                    target = i;
                }
            }

            ElfSection? versym = elf.FindSection(".gnu.version");
            ElfSection? verneed = elf.FindSection(".gnu.version_r");
            if (verneed == null)
            {
                return new PatchResult(PatchStatus.NotNeeded, "the file has no version requirements (.gnu.version_r)");
            }

            Require(verneed.Type == ShtGnuVerneed, ".gnu.version_r does not have type SHT_GNU_verneed");
            Require(verneed.Link == dynstr.Index, ".gnu.version_r does not use .dynstr as its string table");
            elf.RequireInFile(verneed);
            if (versym == null)
            {
                throw new ElfLayoutException("the file has .gnu.version_r but no .gnu.version section");
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
                    if (elf.StringEquals(dynstr, name, RequiredVersion))
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

                    throw new ElfLayoutException(OldSymbol + " is imported with version index " + version + ", but the file has no " + RequiredVersion + " requirement");
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
                        firstOther = elf.ReadString(dynstr, elf.U32(dynsym.Offset + (24L * i))) ?? "<unreadable name>";
                    }
                }
            }

            if (otherUsers > 0)
            {
                throw new ElfLayoutException(otherUsers + " other dynamic symbol(s) also need " + RequiredVersion + " (for example " + firstOther + "); renaming " + OldSymbol + " would not be enough");
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
                    throw new ElfLayoutException("the name " + OldSymbol + " in .dynstr is shared (" + which + ", at .dynstr offset " + reference + ")");
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

        private static PatchResult Unexpected(string reason) =>
            new PatchResult(PatchStatus.UnexpectedLayout, "unexpected layout: " + reason + "; the file was left unchanged");
    }
}

// Every other reference into .dynstr (the dynamic section, version definitions, symbol tables sharing it): the
// analysis renames one string in place only when none of these can see the renamed bytes.

using System.Collections.Generic;
using static TrainingProbes.Build.Elf64;

namespace TrainingProbes.Build
{
    public static partial class LibStdCxxCompatPatcher
    {
        private static void CollectDynamicStrings(Elf64 elf, ElfSection dynstr, List<uint> references)
        {
            ElfSection? dynamic = elf.FindSection(".dynamic");
            if (dynamic == null)
            {
                throw new ElfLayoutException("no .dynamic section");
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

        private static void CollectVerdefStrings(Elf64 elf, ElfSection dynstr, List<uint> references)
        {
            ElfSection? verdef = elf.FindSection(".gnu.version_d");
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

        private static void CollectSymtabStrings(Elf64 elf, ElfSection dynstr, ElfSection dynsym, List<uint> references)
        {
            // A .symtab normally has its own .strtab; if some table besides .dynsym shares .dynstr, count its names too.
            foreach (ElfSection section in elf.Sections)
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
    }
}

// Reading ELF64 little-endian images: bounds-checked reads, section headers, string tables. Anything unexpected is
// an ElfLayoutException, which LibStdCxxCompatPatcher.Analyze turns into PatchStatus.UnexpectedLayout.

using System;
using System.Collections.Generic;
using System.Text;

namespace TrainingProbes.Build
{
    /// <summary>Bounds-checked little-endian reads over an ELF64 image, plus its section headers.</summary>
    internal sealed class Elf64
    {
        internal const uint ShtSymtab = 2;
        internal const uint ShtStrtab = 3;
        internal const uint ShtDynamic = 6;
        internal const uint ShtNobits = 8;
        internal const uint ShtDynsym = 11;
        internal const uint ShtGnuVerdef = 0x6ffffffd;
        internal const uint ShtGnuVerneed = 0x6ffffffe;
        internal const uint ShtGnuVersym = 0x6fffffff;

        /// <summary>Bound on the length of any chain or table walked, against malformed files.</summary>
        internal const int MaxChainLength = 1 << 16;

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

            var sections = new List<ElfSection>((int)shnum);
            for (int i = 0; i < shnum; i++)
            {
                long header = (long)shoff + (i * 64L);
                uint nameOffset = U32(header);
                string name = ReadName((long)namesOffset, (long)namesSize, nameOffset);
                sections.Add(new ElfSection(i, name, U32(header + 4), U64(header + 24), U64(header + 32), U32(header + 40), U32(header + 44), U64(header + 56)));
            }

            Sections = sections;
        }

        public IReadOnlyList<ElfSection> Sections { get; }

        public ElfSection? FindSection(string name)
        {
            ElfSection? found = null;
            foreach (ElfSection section in Sections)
            {
                if (section.Name == name)
                {
                    Require(found == null, "more than one " + name + " section");
                    found = section;
                }
            }

            return found;
        }

        public void RequireInFile(ElfSection section)
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

        /// <summary>Whether the NUL-terminated string at <paramref name="offset"/> in <paramref name="table"/> is <paramref name="expected"/>.</summary>
        public bool StringEquals(ElfSection table, uint offset, string expected)
        {
            if (offset + (long)expected.Length >= table.Size)
            {
                return false;
            }

            long start = table.Offset + offset;
            for (int i = 0; i < expected.Length; i++)
            {
                if (Byte(start + i) != (byte)expected[i])
                {
                    return false;
                }
            }

            return Byte(start + expected.Length) == 0;
        }

        /// <summary>The NUL-terminated string at <paramref name="offset"/> in <paramref name="table"/>, or null when it does not end inside the table.</summary>
        public string? ReadString(ElfSection table, uint offset)
        {
            if (offset >= table.Size)
            {
                return null;
            }

            var builder = new StringBuilder();
            for (long p = table.Offset + offset; p < table.Offset + table.Size; p++)
            {
                byte b = Byte(p);
                if (b == 0)
                {
                    return builder.ToString();
                }

                builder.Append((char)b);
            }

            return null;
        }

        /// <summary>Throws an <see cref="ElfLayoutException"/> with <paramref name="reason"/> unless <paramref name="condition"/> holds.</summary>
        internal static void Require(bool condition, string reason)
        {
            if (!condition)
            {
                throw new ElfLayoutException(reason);
            }
        }

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
                throw new ElfLayoutException("a read at offset " + offset + " lies beyond the end of the file (truncated?)");
            }
        }
    }

    /// <summary>The file is not laid out as the repair expects; the message says how.</summary>
    internal sealed class ElfLayoutException : Exception
    {
        public ElfLayoutException(string message)
            : base(message)
        {
        }
    }

    /// <summary>One section header of an <see cref="Elf64"/> image.</summary>
    internal sealed class ElfSection
    {
        public ElfSection(int index, string name, uint type, ulong offset, ulong size, uint link, uint info, ulong entrySize)
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
}

// What the repair does (see the "TorchSharp 0.107.0 does not load on Debian 12 as shipped" platform note):
// libLibTorchSharp.so 0.107.0 imports exactly one symbol with version GLIBCXX_3.4.32,
// std::ios_base_library_init(), which only exists in GCC 13's libstdc++. On older runtimes the iostreams
// are initialized anyway, so the call can be made harmless. In place, without changing any size or offset:
//  1. the undefined dynamic symbol's name in .dynstr becomes _ZSt15get_new_handlerv (no arguments, no side
//     effects), padded with NUL bytes;
//  2. its .gnu.version entry becomes 1 (global, unversioned);
//  3. the GLIBCXX_3.4.32 entry in .gnu.version_r gets VER_FLG_WEAK, so the loader no longer insists on it.
//
// LibStdCxxCompatPatcher is split by job: this file (the symbols, and writing a planned repair to a file),
// LibStdCxxCompatPatcher.Analysis.cs (planning the edits) and LibStdCxxCompatPatcher.DynstrReferences.cs (proving
// the renamed string is not shared). The ELF reading is Elf64.cs.

using System;
using System.IO;

namespace TrainingProbes.Build
{
    /// <summary>
    /// Repairs a shared library built against GCC 13's libstdc++ so that it loads on an older libstdc++,
    /// when its only GLIBCXX_3.4.32 import is <c>std::ios_base_library_init()</c>. Pure managed ELF64
    /// little-endian editing; sizes and offsets never change.
    /// </summary>
    public static partial class LibStdCxxCompatPatcher
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
    }
}

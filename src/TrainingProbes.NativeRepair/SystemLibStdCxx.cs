// Whether this system needs the repair: finds the system libstdc++ and looks for GLIBCXX_3.4.32 in it.

using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace TrainingProbes.Build
{
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
}

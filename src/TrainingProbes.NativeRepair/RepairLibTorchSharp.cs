// The MSBuild task that TrainingProbes.NativeRepair.targets runs on the output and publish copies of
// libLibTorchSharp.so: decides whether this system needs the repair, applies it, and reports.

using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;

namespace TrainingProbes.Build
{
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
}

// The outcome of analyzing or repairing one libLibTorchSharp.so: a status, a reason and the planned in-place edits.

using System;
using System.Collections.Generic;

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
}

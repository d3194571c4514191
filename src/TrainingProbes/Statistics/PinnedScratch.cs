using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace TrainingProbes.Statistics;

/// <summary>
/// Scratch arrays pinned for the lifetime of their owner, handed out as pointers: the managed window pass allocates
/// them once per layout and reuses them window after window. The owner keeps this object (and so the arrays) alive.
/// </summary>
internal sealed unsafe class PinnedScratch
{
    private readonly List<object> _arrays = [];

    /// <summary>A new zeroed, pinned array of <paramref name="length"/> values.</summary>
    public T* Allocate<T>(int length) where T : unmanaged
    {
        var array = GC.AllocateArray<T>(length, pinned: true);
        _arrays.Add(array);
        return (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
    }
}

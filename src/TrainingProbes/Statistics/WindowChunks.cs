using TorchSharp;
using TrainingProbes.Capture;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// How the window statistics walk a segment's [K, Count] gradients: by chunks of columns, each widened to at least
/// float32. Shared by the first-order family and the whitening, so that both read the same columns in the same dtype.
/// </summary>
internal static class WindowChunks
{
    /// <summary>Elements (K x columns) per chunk on a CPU: 1 MiB of float32, which stays in cache.</summary>
    private const long CpuChunkElements = 1 << 18;

    /// <summary>Elements per chunk on an accelerator: few, large kernels.</summary>
    private const long DeviceChunkElements = 1 << 25;

    /// <summary>Columns per chunk: small enough to stay in cache on a CPU, large (few kernels) on other devices.</summary>
    public static long Columns(WindowSegment segment, int k) =>
        Math.Max(1, (segment.Device.type == DeviceType.CPU ? CpuChunkElements : DeviceChunkElements) / k);

    /// <summary>The window's gradients in columns [offset, offset + length): [K, length], in <see cref="ComputeType"/>.</summary>
    public static Tensor Read(WindowSegment segment, long offset, long length)
    {
        var g = segment.Gradients.narrow(1, offset, length);
        return g.dtype is ScalarType.Float32 or ScalarType.Float64 ? g : g.to(ScalarType.Float32);
    }

    /// <summary>The dtype the statistics compute in for gradients of <paramref name="dtype"/>: float32 or float64.</summary>
    public static ScalarType ComputeType(ScalarType dtype) =>
        dtype is ScalarType.Float32 or ScalarType.Float64 ? dtype : ScalarType.Float32;
}

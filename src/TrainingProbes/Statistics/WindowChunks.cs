using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>How the tensor path walks a [K, P] window: in column chunks small enough for a CPU's cache, large on a device.</summary>
internal static class WindowChunks
{
    private const long CpuChunkElements = 1 << 18;

    private const long DeviceChunkElements = 1 << 25;

    /// <summary>Columns per chunk of a [K, P] window on <paramref name="device"/>.</summary>
    public static long Columns(Device device, int k) =>
        Math.Max(1, (device.type == DeviceType.CPU ? CpuChunkElements : DeviceChunkElements) / k);

    /// <summary>The dtype statistics are computed in: float32 or float64 as stored, float32 for half precision.</summary>
    public static ScalarType ComputeType(ScalarType dtype) =>
        dtype is ScalarType.Float32 or ScalarType.Float64 ? dtype : ScalarType.Float32;
}

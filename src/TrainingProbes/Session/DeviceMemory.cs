using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Session;

/// <summary>The memory available to new allocations on a device, where it can be known.</summary>
internal static class DeviceMemory
{
    /// <summary>
    /// Bytes available on <paramref name="device"/>: on a CPU, Linux's <c>MemAvailable</c> (what can be allocated without
    /// swapping), else what the runtime says the process may use; null on an accelerator (TorchSharp does not report its
    /// free memory).
    /// </summary>
    public static long? Available(Device device)
    {
        if (device.type != DeviceType.CPU) return null;
        try
        {
            if (OperatingSystem.IsLinux() && File.Exists("/proc/meminfo"))
                foreach (var line in File.ReadLines("/proc/meminfo"))
                    if (line.StartsWith("MemAvailable:", StringComparison.Ordinal)
                        && long.TryParse(line["MemAvailable:".Length..].Trim().Split(' ')[0], out long kibibytes))
                        return kibibytes * 1024;
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }
}

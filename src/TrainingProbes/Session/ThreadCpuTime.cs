using System.Runtime.InteropServices;

namespace TrainingProbes.Session;

/// <summary>
/// The processor time the calling thread has used, where the operating system says it: a job's CPU time, unlike its wall
/// time, does not grow when training and the job compete for the cores, so it is what the job took from training.
/// </summary>
internal static partial class ThreadCpuTime
{
    private static bool _unavailable;

    /// <summary>The calling thread's processor time, or null where it cannot be read (then callers use wall time).</summary>
    public static TimeSpan? Now()
    {
        if (_unavailable) return null;
        try
        {
            if (OperatingSystem.IsLinux())
            {
                if (clock_gettime(ThreadCpuClock, out var time) == 0) return TimeSpan.FromTicks(time.Seconds * TimeSpan.TicksPerSecond + time.Nanoseconds / 100);
            }
            else if (OperatingSystem.IsWindows())
            {
                if (GetThreadTimes(GetCurrentThread(), out _, out _, out long kernel, out long user)) return TimeSpan.FromTicks(kernel + user);
            }
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
        }

        _unavailable = true;
        return null;
    }

    private const int ThreadCpuClock = 3;   // CLOCK_THREAD_CPUTIME_ID

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", SetLastError = false)]
    private static partial int clock_gettime(int clock, out TimeSpec time);

    [LibraryImport("kernel32")]
    private static partial nint GetCurrentThread();

    [LibraryImport("kernel32")]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static partial bool GetThreadTimes(nint thread, out long creation, out long exit, out long kernel, out long user);
}

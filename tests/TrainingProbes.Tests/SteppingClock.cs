namespace TrainingProbes.Tests;

/// <summary>A clock that moves by <see cref="Step"/> each time it is read (for the console's minimum gap between windows shown).</summary>
internal sealed class SteppingClock(TimeSpan step) : TimeProvider
{
    private long _ticks;

    public TimeSpan Step { get; set; } = step;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp() => _ticks += Step.Ticks;
}

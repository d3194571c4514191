namespace TrainingProbes.Statistics;

/// <summary>
/// The step of each slot of a ring of windows (<see cref="WindowSmoother"/>, <see cref="MomentPool"/>) and whether it
/// is within <see cref="ProbeOptions.SmoothingSteps"/> of the latest window's step: a window that many steps or more
/// before it is left out, even for a series the latest window left undefined.
/// </summary>
internal sealed class StepSpan
{
    private readonly long _span;
    private readonly long[] _steps;
    private long _now;   // the latest window's step

    /// <param name="slots">Slots of the ring.</param>
    /// <param name="span">Steps a window stays in, at least 1.</param>
    public StepSpan(int slots, long span)
    {
        if (span < 1) throw new ArgumentOutOfRangeException(nameof(span), span, "The span is at least one step.");
        _span = span;
        _steps = new long[slots];
    }

    /// <summary>A window at <paramref name="step"/> arrived: the span now ends there.</summary>
    public void Advance(long step) => _now = Math.Max(_now, step);

    /// <summary>Slot <paramref name="slot"/> holds the window at <paramref name="step"/>.</summary>
    public void Stamp(int slot, long step) => _steps[slot] = step;

    /// <summary>Whether slot <paramref name="slot"/>'s window is within the span.</summary>
    public bool Holds(int slot) => _now - _steps[slot] < _span;

    /// <summary>The slots' steps, to save.</summary>
    public long[] State => (long[])_steps.Clone();

    /// <summary>Whether saved steps fit (null: a state saved before windows had steps, all taken as step 0).</summary>
    public bool Fits(long[]? steps) => steps is null || steps.Length == _steps.Length;

    /// <summary>Restores saved steps (null: all 0).</summary>
    public void Restore(long[]? steps) => (steps ?? new long[_steps.Length]).CopyTo(_steps, 0);
}

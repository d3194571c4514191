namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>Relative parameter drift over the window, <c>||theta_last - theta_first|| / ||theta_first||</c>.</summary>
    public const string ParameterDrift = "parameter.drift";
}

/// <summary>
/// Relative parameter change over the window's captured steps.
/// </summary>
internal sealed class ParameterDriftIndicator() : BuiltInIndicator(IndicatorFamily.Run, 19,
    new(Indicators.ParameterDrift, "1", "Relative parameter change over the window's captured steps."));

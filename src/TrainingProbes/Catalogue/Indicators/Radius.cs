namespace TrainingProbes;

public static partial class Indicators
{
    /// <summary>The radius eps used (fixed-point probe, per geometry).</summary>
    public const string Radius = "radius";
}

/// <summary>
/// the radius eps of the finite-radius measures, in the geometry's units.
/// </summary>
internal sealed class RadiusIndicator() : BuiltInIndicator(IndicatorFamily.FiniteRadius, 28,
    new(Indicators.Radius, "1", "Radius eps of the finite-radius measures.", PerGeometry: true));

using System.Globalization;

namespace TrainingProbes.Stopping;

/// <summary>
/// What the probes read when a rule fires, for its log and console line: the smoothed values, with their run-level
/// spread, of the indicators the evidence matrix found on the expected side most often (cosine and per-example SNR:
/// clean above random labels in 50 of 72 pairs; docs/EVIDENCE.md). A description of the run at the stop, not its cause.
/// </summary>
internal static class StopExplanation
{
    private static readonly (string Name, Geometry Geometry)[] Shown =
    [
        (Indicators.Cosine, Geometry.Euclidean),
        (Indicators.ExampleSnr, Geometry.Euclidean),
        (Indicators.RelativeRegret, Geometry.Fisher),
    ];

    /// <summary>"name value±spread, ..." at the latest window, or "" when no window has been published.</summary>
    public static string Values(ProbeSnapshot? latest)
    {
        if (latest is null) return "";
        var parts = new List<string>();
        foreach (var (name, geometry) in Shown)
        {
            if (!latest.TryGetValue(name + Indicators.SmoothedSuffix, geometry, out double value) || !double.IsFinite(value)) continue;
            string label = geometry == Geometry.None ? name : $"{name}[{geometry.ToName()}]";
            string spread = latest.TryGetValue(name + Indicators.SpreadSuffix, geometry, out double s) && double.IsFinite(s)
                ? "±" + s.ToString("G2", CultureInfo.InvariantCulture) : "";
            parts.Add($"{label} {value.ToString("G3", CultureInfo.InvariantCulture)}{spread}");
        }

        return string.Join(", ", parts);
    }
}

using System.Globalization;
using System.Text;
using TrainingProbes.Probes;

namespace TrainingProbes.Session;

/// <summary>The one line per window that <see cref="ProbeOptions.Output"/> gets: a subscriber of the publisher.</summary>
internal static class ConsoleSummary
{
    public static string Format(ProbeSnapshot s, Geometry geometries)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"[probes] step {s.Step,6}");
        Append(text, "loss", s, Indicators.Loss, Geometry.None);
        Append(text, "drift", s, Indicators.ParameterDrift, Geometry.None);
        Append(text, "gsnr", s, Indicators.Gsnr, Geometry.None);
        foreach (var g in new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive })
        {
            if (!geometries.HasFlag(g)) continue;
            text.Append(" | ").Append(g.ToName()[..3]);
            Append(text, "cos", s, Indicators.Cosine, g);
            Append(text, "regret", s, Indicators.RelativeRegret, g);
            Append(text, "kappa", s, Indicators.ContrastiveFlatness, g);
        }

        // The optimizer's step-to-step agreement: negative while the iterate oscillates across a valley.
        if (s.TryGetValue(GradientStatisticsProbe.Prefix + Indicators.Cosine, Geometry.Euclidean, out _))
        {
            text.Append(" | step");
            Append(text, "cos", s, GradientStatisticsProbe.Prefix + Indicators.Cosine, Geometry.Euclidean);
        }

        return text.ToString();
    }

    /// <summary>Appends <c>label value</c>, with <c>±stderr</c> when the value has a standard error; nothing for an undefined value.</summary>
    private static void Append(StringBuilder text, string label, ProbeSnapshot s, string name, Geometry g)
    {
        if (!s.TryGetValue(name, g, out double v) || double.IsNaN(v)) return;
        text.Append(' ').Append(label).Append(' ').Append(v.ToString("G3", CultureInfo.InvariantCulture));
        if (s.TryGetValue(name + Indicators.StandardErrorSuffix, g, out double error) && double.IsFinite(error))
            text.Append('±').Append(error.ToString("G2", CultureInfo.InvariantCulture));
    }
}

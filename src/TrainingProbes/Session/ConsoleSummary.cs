using System.Globalization;
using System.Text;
using TrainingProbes.Probes;

namespace TrainingProbes.Session;

/// <summary>
/// The one line per window that <see cref="ProbeOptions.Output"/> gets: a subscriber of the publisher. It shows the
/// latest window's values with their standard errors, so that the line follows training as it goes; the means over the
/// last windows (<c>*.smoothed</c>) are for rules and dashboards, where a window that came thousands of steps ago
/// under the overhead budget does not hide what the latest one says.
/// </summary>
internal static class ConsoleSummary
{
    /// <summary>The line printed before the first window's, saying what the numbers are.</summary>
    public static string Legend(ProbeOptions options) =>
        "[probes] " + (options.Storage == WindowStorage.Sketch ? "" : "gsnr, ")
        + $"cos, regret (relative) and kappa (contrastive flatness) of each window come from the K = {options.WindowSize} micro-batches of one "
        + "training step's minibatch at its theta, for minibatches of the trainer's size, "
        + "value±standard error (a 95% interval is about ±2 of them)"
        + (options.SmoothingWindows > 0 ? $"; their means over the last {options.SmoothingWindows} windows are published as *.smoothed" : "")
        + (options.StepStatistics ? "; 'step cos' is the optimizer's step-to-step cosine (negative: oscillation)" : "")
        + ".";

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

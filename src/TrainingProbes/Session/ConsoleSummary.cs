using System.Globalization;
using System.Text;
using TrainingProbes.Probes;

namespace TrainingProbes.Session;

/// <summary>
/// The plain line that <see cref="ProbeOptions.Output"/> gets for a window when it is not a terminal. It shows the
/// smoothed values (<c>*.smoothed</c>, over the last windows) with their standard errors where there are any: a single
/// window sees one minibatch, and its cosine's standard error is typically 0.2 to 0.4.
/// </summary>
internal static class ConsoleSummary
{
    /// <summary>The line printed before the first window's, saying what the numbers are.</summary>
    public static string Legend(ProbeOptions options) =>
        "[probes] " + (options.Storage == WindowStorage.Sketch ? "" : "gsnr, ")
        + $"cos, regret (relative) and kappa (contrastive flatness) come from the K = {options.WindowSize} micro-batches of a "
        + "training step's minibatch at its theta, for minibatches of the trainer's size"
        + (options.SmoothingWindows > 0
            ? $", over the last {options.SmoothingWindows} windows" + (options.SmoothingSteps is { } span ? " of the last " + span.ToString("N0", System.Globalization.CultureInfo.InvariantCulture) + " steps" : "")
                + " (*.smoothed: one window sees one minibatch and is noisy)"
            : ", of the latest window")
        + ", value±standard error (a 95% interval is about ±2 of them)"
        + (options.StepStatistics ? "; 'step cos' is the optimizer's step-to-step cosine of the latest window (negative: oscillation)" : "")
        + ".";

    public static string Format(ProbeSnapshot s, Geometry geometries)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"[probes] step {s.Step,6}");
        Append(text, "loss", s, Indicators.Loss, Geometry.None);
        Append(text, "drift", s, Indicators.ParameterDrift, Geometry.None);
        Append(text, "gsnr", s, Shown(s, Indicators.Gsnr, Geometry.None), Geometry.None);
        foreach (var g in new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive })
        {
            if (!geometries.HasFlag(g)) continue;
            text.Append(" | ").Append(g.ToName()[..3]);
            Append(text, "cos", s, Shown(s, Indicators.Cosine, g), g);
            Append(text, "regret", s, Shown(s, Indicators.RelativeRegret, g), g);
            Append(text, "kappa", s, Shown(s, Indicators.ContrastiveFlatness, g), g);
        }

        // The optimizer's step-to-step agreement: negative while the iterate oscillates across a valley.
        if (s.TryGetValue(GradientStatisticsProbe.Prefix + Indicators.Cosine, Geometry.Euclidean, out _))
        {
            text.Append(" | step");
            Append(text, "cos", s, GradientStatisticsProbe.Prefix + Indicators.Cosine, Geometry.Euclidean);
        }

        return text.ToString();
    }

    /// <summary>The name shown for an indicator: its smoothed series where the window has one, else the window's own.</summary>
    internal static string Shown(ProbeSnapshot s, string name, Geometry g) =>
        s.TryGetValue(name + Indicators.SmoothedSuffix, g, out double v) && !double.IsNaN(v) ? name + Indicators.SmoothedSuffix : name;

    /// <summary>Appends <c>label value</c>, with <c>±stderr</c> when the value has a standard error; nothing for an undefined value.</summary>
    private static void Append(StringBuilder text, string label, ProbeSnapshot s, string name, Geometry g)
    {
        if (!s.TryGetValue(name, g, out double v) || double.IsNaN(v)) return;
        text.Append(' ').Append(label).Append(' ').Append(v.ToString("G3", CultureInfo.InvariantCulture));
        if (s.TryGetValue(name + Indicators.StandardErrorSuffix, g, out double error) && double.IsFinite(error))
            text.Append('±').Append(error.ToString("G2", CultureInfo.InvariantCulture));
    }
}

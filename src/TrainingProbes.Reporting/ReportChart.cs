using ScottPlot;
using SkiaSharp;

namespace TrainingProbes.Reporting;

/// <summary>
/// The report's PNG: a panel per indicator family that has data (agreement and regret, flatness, noise and GSNR,
/// curvature, loss and reported values), two to a row, the training step on every x axis, the stop marked.
/// </summary>
internal static class ReportChart
{
    public const int PanelWidth = 800;
    public const int PanelHeight = 500;
    public const int Columns = 2;
    public const int HeaderHeight = 56;

    /// <summary>A series in a panel; <paramref name="Style"/> picks its line pattern (its colour is its geometry's).</summary>
    // The band is Value +- BandScale x the StandardError series: the window's jackknife error, or 1.96 spreads between windows.
    private sealed record Line(SeriesKey Key, string Label, bool Right, SeriesKey? StandardError, int Style, double BandScale = 1, string BandText = " \u00b1 s.e.");

    /// <summary>A panel; <paramref name="LogLeft"/> draws the left axis on a log scale (values that span decades across geometries).</summary>
    private sealed record Panel(string Title, string LeftLabel, string? RightLabel, IReadOnlyList<Line> Lines, bool LogLeft = false);

    /// <summary>Space between panels, so that one's axis label does not read as its neighbour's.</summary>
    private const int Gap = 14;

    /// <summary>Width and height of the PNG for a number of panels (at least one: an empty run gets a panel that says so).</summary>
    public static (int Width, int Height) Size(int panels)
    {
        int rows = (Math.Max(panels, 1) + Columns - 1) / Columns;
        return (Columns * PanelWidth, HeaderHeight + rows * PanelHeight);
    }

    /// <summary>The panels with data, in the report's order.</summary>
    public static int PanelCount(ReportTable table) => Panels(table).Count;

    public static void Write(ReportTable table, string path)
    {
        var panels = Panels(table);
        var (width, height) = Size(panels.Count);
        using var surface = SKSurface.Create(new SKImageInfo(width, height)) ?? throw new InvalidOperationException("Could not create a drawing surface.");
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        DrawHeader(canvas, table, width);

        for (int i = 0; i < Math.Max(panels.Count, 1); i++)
        {
            var plot = panels.Count == 0 ? Empty() : Draw(panels[i], table);
            // A plot paints its whole canvas: each is drawn on a surface of its own, then placed.
            using var panel = SKSurface.Create(new SKImageInfo(PanelWidth - 2 * Gap, PanelHeight - Gap)) ?? throw new InvalidOperationException("Could not create a drawing surface.");
            plot.Render(panel);
            using var picture = panel.Snapshot();
            canvas.DrawImage(picture, i % Columns * PanelWidth + Gap, HeaderHeight + i / Columns * PanelHeight);
        }

        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        using var file = File.Create(path);
        data.SaveTo(file);
    }

    private static void DrawHeader(SKCanvas canvas, ReportTable table, int width)
    {
        int windows = table.Rows.Count(r => r.Window is not null);
        long last = table.Rows.Count > 0 ? table.Rows[^1].Step : 0;
        int failures = table.Rows.Sum(r => r.Failures.Count);
        string title = $"TrainingProbes report, run {table.RunId}";
        string detail = $"{windows} windows up to step {last}" +
            (table.StopLabel is { } stop ? $"; {stop}" : "; no stop rule fired") +
            (failures > 0 ? $"; {failures} probe failures (see report.csv)" : "") +
            ". Shaded bands: value \u00b1 1 standard error (jackknife over the window's minibatches); in the smoothed panel, \u00b1 1.96 spread between windows (the run-level interval).";
        using var typeface = SKTypeface.FromFamilyName("DejaVu Sans", SKFontStyle.Bold) ?? SKTypeface.Default;
        using var bold = new SKFont(typeface, 20);
        using var regular = new SKFont(SKTypeface.FromFamilyName("DejaVu Sans") ?? SKTypeface.Default, 14);
        using var paint = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        canvas.DrawText(title, 16, 24, SKTextAlign.Left, bold, paint);
        paint.Color = new SKColor(60, 60, 60);
        canvas.DrawText(detail, 16, 46, SKTextAlign.Left, regular, paint);
    }

    private const string Font = "DejaVu Sans";

    private static Plot Empty()
    {
        var plot = new Plot();
        plot.Font.Set(Font);
        plot.Title("No window was published");
        plot.XLabel("training step");
        return plot;
    }

    private static List<Panel> Panels(ReportTable table)
    {
        var present = table.Series.Where(k => k.Layer is null && table.Rows.Any(r => r.Values.TryGetValue(k, out double v) && double.IsFinite(v))).ToHashSet();
        var panels = new List<Panel>();

        void Add(string title, string leftLabel, string? rightLabel, IEnumerable<Line> lines, bool logLeft = false)
        {
            var list = lines.Where(l => present.Contains(l.Key)).ToList();
            if (list.Count == 0) return;
            if (!list.Any(l => l.Right)) rightLabel = null;
            panels.Add(new Panel(title, leftLabel, rightLabel, list, logLeft));
        }

        IEnumerable<Line> PerGeometry(string name, string label, bool right = false, int style = 0) =>
            present.Where(k => k.Name == name).OrderBy(k => k.Geometry).Select(k =>
            {
                var se = new SeriesKey(name + Indicators.StandardErrorSuffix, k.Geometry, null);
                return new Line(k, k.Geometry == Geometry.None ? label : $"{label} ({k.Geometry.ToName()})", right,
                    present.Contains(se) ? se : null, style);
            });

        Add("Agreement and regret between minibatch gradients", "cosine, relative regret (dimensionless)", null,
            [.. PerGeometry(Indicators.Cosine, "cosine"), .. PerGeometry(Indicators.RelativeRegret, "relative regret", style: 1)]);
        Add("Flatness", "ratio (dimensionless)", null,
            [.. PerGeometry(Indicators.JensenRatio, "Jensen ratio"), .. PerGeometry(Indicators.ContrastiveFlatness, "contrastive flatness", style: 1),
             .. PerGeometry(Indicators.FiniteContrastiveFlatness, "contrastive flatness at eps", style: 2)]);
        // The smoothed values with the run-level interval (value +- 1.96 spread between windows), not the window's error.
        IEnumerable<Line> Smoothed(string name, string label, bool right = false, int style = 0) =>
            present.Where(k => k.Name == name + Indicators.SmoothedSuffix).OrderBy(k => k.Geometry).Select(k =>
            {
                var spread = new SeriesKey(name + Indicators.SpreadSuffix, k.Geometry, null);
                return new Line(k, (k.Geometry == Geometry.None ? label : $"{label} ({k.Geometry.ToName()})") + ", smoothed", right,
                    present.Contains(spread) ? spread : null, style, 1.96, " \u00b1 1.96 spread (run level)");
            });
        Add("Smoothed values with the run-level interval", "cosine (dimensionless)", "per-example SNR (dimensionless)",
            [.. Smoothed(Indicators.Cosine, "cosine"), .. Smoothed(Indicators.ExampleSnr, "per-example SNR", right: true, style: 1)]);
        // Noise is a squared gradient norm, in each geometry's own units: decades apart, hence the log scale.
        Add("Gradient noise and GSNR", "noise: trace of gradient covariance (log)", "GSNR (dimensionless)",
            [.. PerGeometry(Indicators.GradientNoise, "noise"), .. PerGeometry(Indicators.Gsnr, "GSNR", right: true, style: 1)], logLeft: true);
        Add("Curvature of the pooled loss", "eigenvalue, trace (loss / parameter\u00b2)", "contrastive curvature (ratio)",
            [.. PerGeometry(Indicators.CurvatureLambdaMax, "largest eigenvalue"), .. PerGeometry(Indicators.CurvatureLambdaMaxMagnitude, "largest |eigenvalue|", style: 2),
             .. present.Where(k => k.Name == Indicators.CurvatureTrace).Select(k => new Line(k, "Hessian trace" + (k.Geometry == Geometry.None ? "" : $" ({k.Geometry.ToName()})"), false,
                 present.Contains(new SeriesKey(Indicators.CurvatureTraceHalfWidth, k.Geometry, null)) ? new SeriesKey(Indicators.CurvatureTraceHalfWidth, k.Geometry, null) : null, 0)),
             .. PerGeometry(Indicators.CurvatureContrastive, "contrastive curvature", right: true, style: 1)]);

        // The training loss and what the trainer reported: losses on the left axis, anything else (accuracy) on the right.
        var reported = table.Reported.Where(present.Contains).OrderBy(k => k.Name, StringComparer.Ordinal).ToList();
        bool IsLoss(SeriesKey k) => k.Name.Contains("loss", StringComparison.Ordinal);
        Add(reported.Count > 0 ? "Loss and reported values" : "Training loss", "loss",
            "reported value (" + string.Join(", ", reported.Where(k => !IsLoss(k)).Select(k => k.Name)) + ")",
            [.. PerGeometry(Indicators.Loss, "training loss (mean over the window)"),
             .. reported.Select(k => new Line(k, (k.Geometry == Geometry.None ? k.Name : $"{k.Name} ({k.Geometry.ToName()})") + " (reported)", !IsLoss(k), null, IsLoss(k) ? 2 : 1))]);
        return panels;
    }

    /// <summary>A colour per geometry, the same in every panel; geometry-free series take the others in turn.</summary>
    private static Color GeometryColour(Geometry geometry) => geometry switch
    {
        Geometry.Euclidean => Color.FromHex("#1f77b4"),
        Geometry.Fisher => Color.FromHex("#d62728"),
        Geometry.Adaptive => Color.FromHex("#2ca02c"),
        _ => Color.FromHex("#7f7f7f"),
    };

    private static readonly Color[] Others = [Color.FromHex("#ff7f0e"), Color.FromHex("#9467bd"), Color.FromHex("#8c564b"), Color.FromHex("#e377c2"), Color.FromHex("#17becf")];

    private static readonly LinePattern[] Patterns = [LinePattern.Solid, LinePattern.Dashed, LinePattern.DenselyDashed];

    private static Plot Draw(Panel panel, ReportTable table)
    {
        var plot = new Plot();
        plot.Font.Set(Font);
        plot.Title(panel.Title, size: 18);
        plot.XLabel("training step", size: 15);
        plot.YLabel(panel.LeftLabel, size: 15);
        if (panel.RightLabel is { } right) plot.Axes.Right.Label.Text = right;

        if (panel.LogLeft)
            plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
            {
                MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
                IntegerTicksOnly = true,
                LabelFormatter = exponent => $"1e{exponent:0}",
            };

        int others = 0;
        for (int i = 0; i < panel.Lines.Count; i++)
        {
            var line = panel.Lines[i];
            var color = line.Key.Geometry == Geometry.None ? Others[others++ % Others.Length] : GeometryColour(line.Key.Geometry);
            bool log = panel.LogLeft && !line.Right;
            var points = table.Rows
                .Where(r => r.Values.TryGetValue(line.Key, out double v) && double.IsFinite(v) && (!log || v > 0))
                .Select(r => (X: (double)r.Step, Y: r.Values[line.Key], Se: line.StandardError is { } se && r.Values.TryGetValue(se, out double e) && double.IsFinite(e) ? line.BandScale * e : double.NaN))
                .ToArray();
            double[] xs = [.. points.Select(p => p.X)], ys = [.. points.Select(p => p.Y)];

            var banded = points.Where(p => double.IsFinite(p.Se)).ToArray();
            if (banded.Length > 1)
            {
                double[] upper = [.. banded.Select(p => p.Y + p.Se)], lower = [.. banded.Select(p => p.Y - p.Se)];
                if (log)
                {
                    // On the log scale a band that reaches zero is cut at a tenth of the value.
                    upper = [.. upper.Select(Math.Log10)];
                    lower = [.. lower.Zip(banded, (l, p) => Math.Log10(Math.Max(l, p.Y / 10)))];
                }

                var band = plot.Add.FillY([.. banded.Select(p => p.X)], upper, lower);
                band.FillStyle.Color = color.WithAlpha(0.18);
                band.LineStyle.Width = 0;
                if (line.Right) band.Axes.YAxis = plot.Axes.Right;
            }

            var scatter = plot.Add.Scatter(xs, log ? [.. ys.Select(Math.Log10)] : ys, color);
            scatter.LegendText = line.Label + (banded.Length > 1 ? line.BandText : "");
            scatter.LineWidth = 2;
            scatter.MarkerSize = xs.Length > 60 ? 0 : 5;
            scatter.LinePattern = Patterns[line.Style % Patterns.Length];
            if (line.Right) scatter.Axes.YAxis = plot.Axes.Right;
        }

        if (table.StopStep is { } stop)
        {
            var marker = plot.Add.VerticalLine(stop, 2, Colors.Black, LinePattern.Dotted);
            marker.LegendText = table.StopLabel ?? "stop";
        }

        plot.Legend.FontSize = 13;
        plot.ShowLegend(Edge.Bottom);   // below the axes, where it hides no data
        return plot;
    }
}

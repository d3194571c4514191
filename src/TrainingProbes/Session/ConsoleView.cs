using System.Globalization;
using System.Text;
using Spectre.Console;
using Spectre.Console.Rendering;
using TrainingProbes.Probes;
using TrainingProbes.Stopping;

namespace TrainingProbes.Session;

/// <summary>
/// What <see cref="ProbeOptions.Output"/> shows at each window, a subscriber of the publisher. On a terminal (the
/// process's console, not redirected, with ANSI support) a small panel (Spectre.Console): the step, the loss, the
/// default indicators with their standard errors and a trend over the last windows, the overhead against its budget,
/// and each stopping rule's state. Anywhere else (a redirected output such as a CI log, a file, a StringWriter) the one
/// plain line of <see cref="ConsoleSummary"/>, which greps well. The panel is printed once per window, below what the
/// trainer printed, never over it.
/// </summary>
internal sealed class ConsoleView
{
    private const int TrendWindows = 24;
    private static readonly char[] Bars = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

    /// <summary>The least time between two windows shown: windows come every few steps, a reader needs a moment.</summary>
    public static readonly TimeSpan MinimumGap = TimeSpan.FromSeconds(1);

    private readonly ProbeOptions _options;
    private readonly IReadOnlyList<StoppingRule> _rules;
    private readonly TextWriter _output;
    private readonly int _width;
    private readonly TimeProvider _clock;
    private long _lastShown;
    private bool _legendShown;

    /// <summary>A view that writes to <paramref name="output"/>: a panel when <paramref name="terminal"/>, else plain lines.</summary>
    /// <param name="options">The session's options.</param>
    /// <param name="output">Where to write.</param>
    /// <param name="terminal">Panels (true) or plain lines.</param>
    /// <param name="width">The panel's width (0: the terminal's).</param>
    /// <param name="clock">The clock of <see cref="MinimumGap"/> (the options' by default).</param>
    /// <param name="rules">The session's rules, whose state the panel shows (the options' by default).</param>
    public ConsoleView(ProbeOptions options, TextWriter output, bool terminal, int width = 0, TimeProvider? clock = null, IReadOnlyList<StoppingRule>? rules = null)
    {
        _options = options;
        _rules = rules ?? options.Stopping;
        _output = output;
        Terminal = terminal;
        _width = width > 0 ? width : TerminalWidth();
        _clock = clock ?? options.TimeProvider;
    }

    /// <summary>Whether the view draws panels (true) or writes plain lines.</summary>
    public bool Terminal { get; }

    /// <summary>True when <paramref name="output"/> is the process's console, not redirected, and the console takes ANSI.</summary>
    public static bool IsTerminal(TextWriter output)
    {
        try
        {
            return ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Ansi;
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException)
        {
            return false;
        }
    }

    /// <summary>
    /// Shows a published window: the first, one when training stopped, and otherwise one at most every
    /// <see cref="MinimumGap"/> (the others are in the history, the meter and the report).
    /// </summary>
    public void Show(ProbeSnapshot snapshot, IReadOnlyList<ProbeSnapshot> history, bool stopped)
    {
        long now = _clock.GetTimestamp();
        if (_legendShown && !stopped && _clock.GetElapsedTime(_lastShown, now) < MinimumGap) return;
        _lastShown = now;
        if (!Terminal)
        {
            if (!_legendShown) _output.WriteLine(ConsoleSummary.Legend(_options));
            _legendShown = true;
            _output.WriteLine(ConsoleSummary.Format(snapshot, _options.Geometries));
            return;
        }

        _legendShown = true;

        _output.Write(RenderToString(Render(snapshot, history, stopped), _width));
        _output.Flush();
    }

    /// <summary>Renders with ANSI colours into a string of the given width.</summary>
    internal static string RenderToString(IRenderable renderable, int width)
    {
        var text = new StringWriter(CultureInfo.InvariantCulture);
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.Yes,
            ColorSystem = ColorSystemSupport.Standard,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(text),
        });
        console.Profile.Width = width;
        console.Write(renderable);
        return text.ToString();
    }

    /// <summary>The panel of one window.</summary>
    internal IRenderable Render(ProbeSnapshot s, IReadOnlyList<ProbeSnapshot> history, bool stopped)
    {
        var recent = history.Count > TrendWindows ? history.Skip(history.Count - TrendWindows).ToList() : history;
        var table = new Table().Border(TableBorder.Simple).Expand();
        table.AddColumn(new TableColumn("[bold]indicator[/]"));
        table.AddColumn(new TableColumn(_options.SmoothingWindows > 0
            ? $"[bold]last {_options.SmoothingWindows} windows{(_options.SmoothingSteps is { } span ? " of " + span.ToString("N0", System.Globalization.CultureInfo.InvariantCulture) + " steps" : "")} ± s.e.[/]" : "[bold]value ± s.e.[/]").RightAligned());
        if (_options.SmoothingWindows > 0) table.AddColumn(new TableColumn("[bold]spread[/]").RightAligned());
        table.AddColumn(new TableColumn($"[bold]trend, {recent.Count} windows[/]"));

        void Row(string label, string name, Geometry g)
        {
            name = ConsoleSummary.Shown(s, name, g);   // the smoothed series where there is one
            if (!s.TryGetValue(name, g, out double value) || double.IsNaN(value)) return;
            string shown = Show(value) + (s.TryGetValue(name + Indicators.StandardErrorSuffix, g, out double error) && double.IsFinite(error) ? " ± " + Show(error) : "");
            if (_options.SmoothingWindows == 0)
            {
                table.AddRow(Markup.Escape(label), shown, Trend(recent, name, g));
                return;
            }

            // The run-level scatter of one window's value (successive differences), beside the smoothed value's error.
            string raw = name.EndsWith(Indicators.SmoothedSuffix, StringComparison.Ordinal) ? name[..^Indicators.SmoothedSuffix.Length] : name;
            string spread = s.TryGetValue(raw + Indicators.SpreadSuffix, g, out double sp) && double.IsFinite(sp) ? Show(sp) : "";
            table.AddRow(Markup.Escape(label), shown, spread, Trend(recent, name, g));
        }

        Row("training loss", Indicators.Loss, Geometry.None);
        Row("gradient gsnr", Indicators.Gsnr, Geometry.None);
        foreach (var g in new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive })
        {
            if (!_options.Geometries.HasFlag(g)) continue;
            Row($"cosine [{g.ToName()}]", Indicators.Cosine, g);
            Row($"relative regret [{g.ToName()}]", Indicators.RelativeRegret, g);
        }

        Row("step cosine (optimizer)", GradientStatisticsProbe.Prefix + Indicators.Cosine, Geometry.Euclidean);
        Row("parameter drift", Indicators.ParameterDrift, Geometry.None);

        var lines = new List<IRenderable> { table };
        if (_options.SmoothingWindows > 0)
            lines.Add(new Markup("[dim]spread: one window's scatter between windows, the run-level error (value ± 1.96 spread)[/]"));
        var budget = new StringBuilder();
        if (s.TryGetValue(Indicators.ProbeOverheadTotal, Geometry.None, out double overhead) && double.IsFinite(overhead))
            budget.Append(CultureInfo.InvariantCulture, $"overhead {overhead:P1}")
                .Append(_options.OverheadBudget is { } b ? string.Create(CultureInfo.InvariantCulture, $" of a {b:P0} budget") : " (no budget)");
        if (s.TryGetValue(Indicators.ProbeInterval, Geometry.None, out double interval))
            budget.Append(budget.Length > 0 ? ", " : "").Append(CultureInfo.InvariantCulture, $"next window in {interval:N0} steps");
        if (budget.Length > 0) lines.Add(new Markup("[grey]" + Markup.Escape(budget.ToString()) + "[/]"));
        foreach (var rule in _rules)
            lines.Add(new Markup(RuleLine(rule)));
        if (s.Failures.Count > 0)
            lines.Add(new Markup($"[yellow]{s.Failures.Count} failure(s) in this window: {Markup.Escape(string.Join("; ", s.Failures.Select(f => $"{f.Probe} ({f.Reason})").Distinct()))}[/]"));

        string header = string.Create(CultureInfo.InvariantCulture, $"TrainingProbes · run {s.RunId} · step {s.Step:N0} · window {s.Window}") + (stopped ? " · stopped" : "");
        return new Panel(new Rows(lines)).Header(Markup.Escape(header)).Border(BoxBorder.Rounded).Expand();
    }

    private static string RuleLine(StoppingRule rule)
    {
        string state = rule.Stopped ? "[red]fired[/]" : rule.Evaluations == 0 ? "[grey]not evaluated yet[/]" : "[green]watching[/]";
        return $"rule {Markup.Escape(rule.Name)}: {state}" + (rule.Evaluations > 0 ? $" [grey]({rule.Evaluations} evaluations)[/]" : "");
    }

    /// <summary>A sparkline of the series over the windows that have it (blank where a window lacks it).</summary>
    internal static string Trend(IReadOnlyList<ProbeSnapshot> windows, string name, Geometry g)
    {
        var values = windows.Select(w => w.TryGetValue(name, g, out double v) && double.IsFinite(v) ? v : double.NaN).ToArray();
        var finite = values.Where(double.IsFinite).ToArray();
        if (finite.Length < 2) return "";
        double low = finite.Min(), high = finite.Max();
        var line = new StringBuilder(values.Length);
        foreach (var v in values)
            line.Append(double.IsNaN(v) ? ' ' : Bars[high > low ? (int)Math.Round((v - low) / (high - low) * (Bars.Length - 1)) : Bars.Length / 2]);
        return Markup.Escape(line.ToString()) + $" [grey]{Show(low)}..{Show(high)}[/]";
    }

    private static string Show(double value) => value.ToString("G3", CultureInfo.InvariantCulture);

    private static int TerminalWidth()
    {
        try
        {
            return Math.Clamp(Console.WindowWidth, 60, 140);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or PlatformNotSupportedException)
        {
            return 100;
        }
    }
}

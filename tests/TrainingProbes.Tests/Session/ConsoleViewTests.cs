using System.Text.RegularExpressions;
using TorchSharp;
using TrainingProbes.Session;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Session;

/// <summary>The console view in both modes: a panel on a terminal, plain lines when the output is redirected.</summary>
public sealed partial class ConsoleViewTests
{
    private static (ProbeOptions Options, IReadOnlyList<ProbeSnapshot> History, IReadOnlyList<StoppingRule> Rules) ShortRun()
    {
        torch.manual_seed(6);
        var model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3));
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        var options = new ProbeOptions
        {
            WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null, RunId = "view", Loss = (o, t) => nn.functional.cross_entropy(o, t), StepStatistics = true,
            Stopping = [StoppingRule.Parse("gradient.gsnr < 0.0001 for 3")],
        };
        using var session = ProbeSession.Attach(model, options, optimizer);
        Train(model, optimizer, 60, seed: 9, onStep: (loss, x, y) => session.Step(loss, x, y), task: new Classification(Batch: 24));

        session.Flush();
        return (options, session.History, session.Rules);
    }

    [Fact]
    public void On_a_terminal_each_window_is_a_panel_with_values_errors_trends_budget_and_rules()
    {
        var (options, history, rules) = ShortRun();
        var output = new StringWriter();
        var view = new ConsoleView(options, output, terminal: true, width: 100, rules: rules);
        view.Show(history[^1], history, stopped: false);
        string text = output.ToString();

        Assert.Contains("\u001b[", text);   // coloured
        string plain = Ansi().Replace(text, "");
        Assert.Contains($"TrainingProbes · run view · step {history[^1].Step:N0} · window {history[^1].Window}", plain);
        foreach (var label in new[] { "training loss", "gradient gsnr", "cosine [euclidean]", "relative regret [fisher]", "cosine [adaptive]", "step cosine (optimizer)" })
            Assert.Contains(label, plain);
        Assert.Contains(" ± ", plain);
        Assert.Contains("spread: one window's scatter between windows", plain);   // the legend of the run-level column
        Assert.Matches("[▁▂▃▄▅▆▇█]{3,}", plain);   // a trend over the six windows
        Assert.Contains("overhead", plain);
        Assert.Contains("rule gradient.gsnr < 0.0001 for 3: watching (6 evaluations)", plain);
        Assert.All(plain.Split('\n'), line => Assert.True(line.TrimEnd('\r').Length <= 100, $"a line wider than the 100 columns: '{line}'"));
    }

    [Fact]
    public void Redirected_each_window_is_one_plain_line_of_smoothed_values_after_a_legend()
    {
        var (options, history, _) = ShortRun();
        var output = new StringWriter();
        var view = new ConsoleView(options, output, terminal: false, clock: new SteppingClock(TimeSpan.FromSeconds(2)));
        foreach (var snapshot in history) view.Show(snapshot, history, stopped: false);
        var lines = output.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);

        Assert.Equal(history.Count + 1, lines.Length);   // the legend, then a line per window (two seconds apart)
        Assert.StartsWith("[probes] gsnr, cos, regret", lines[0]);
        Assert.Contains($"over the last {options.SmoothingWindows} windows", lines[0]);
        for (int i = 0; i < history.Count; i++)
        {
            Assert.StartsWith($"[probes] step {history[i].Step,6}", lines[i + 1]);
            Assert.DoesNotContain('\u001b', lines[i + 1]);
            string cosine = history[i].Get(Indicators.Cosine + Indicators.SmoothedSuffix, Geometry.Euclidean).ToString("G3", System.Globalization.CultureInfo.InvariantCulture);
            Assert.Contains($"| euc cos {cosine}", lines[i + 1]);
        }
    }

    [Fact]
    public void Windows_closer_than_the_minimum_gap_are_not_shown_except_the_first_and_a_stop()
    {
        var (options, history, _) = ShortRun();
        var output = new StringWriter();
        var clock = new SteppingClock(ConsoleView.MinimumGap / 4);
        var view = new ConsoleView(options, output, terminal: false, clock: clock);
        for (int i = 0; i < 5; i++) view.Show(history[i], history, stopped: false);   // a quarter of the gap apart
        view.Show(history[5], history, stopped: true);
        var lines = output.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);

        // The legend and window 0; window 4, a full gap after it; and the stop.
        Assert.Equal(["legend", history[0].Step, history[4].Step, history[5].Step],
            lines.Select(l => l.StartsWith("[probes] step", StringComparison.Ordinal) ? (object)long.Parse(l[14..20]) : "legend"));
    }

    [Fact]
    public void A_string_writer_is_not_a_terminal() => Assert.False(ConsoleView.IsTerminal(new StringWriter()));

    [Fact]
    public void The_trend_spans_the_eight_bar_heights_from_the_lowest_value_to_the_highest()
    {
        var windows = Enumerable.Range(0, 8)
            .Select(i => new ProbeSnapshot("t", 10 * i, i, DateTimeOffset.UnixEpoch, [new IndicatorValue(Indicators.Gsnr, Geometry.None, "gradient", i * 0.5)]))
            .ToList();
        windows.Insert(3, new ProbeSnapshot("t", 25, 99, DateTimeOffset.UnixEpoch, []));   // a window without the value: a gap
        Assert.Equal("▁▂▃ ▄▅▆▇█ [grey]0..3.5[/]", ConsoleView.Trend(windows, Indicators.Gsnr, Geometry.None));
    }

    [GeneratedRegex("\u001b\\[[0-9;]*m")]
    private static partial Regex Ansi();
}

using System.Text.Json;
using System.Text.RegularExpressions;

namespace TrainingProbes.IntegrationTests;

/// <summary>Files of the repository the tests check against: the README's instrument table, the dashboard, the alert rules.</summary>
internal static partial class RepositoryFiles
{
    public static string Root
    {
        get
        {
            for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
                if (File.Exists(Path.Combine(directory.FullName, "TrainingProbes.sln"))) return directory.FullName;
            throw new InvalidOperationException($"No TrainingProbes.sln above {AppContext.BaseDirectory}.");
        }
    }

    public static string PathOf(string relative) => System.IO.Path.Combine(Root, relative);

    /// <summary>
    /// The Prometheus names in the README's instrument tables (the column headed "Prometheus name"): the first table
    /// (a default session's instruments) when <paramref name="firstTableOnly"/>, else all of them.
    /// </summary>
    public static IReadOnlyList<string> ReadmeInstruments(bool firstTableOnly = false)
    {
        var lines = File.ReadAllLines(PathOf("docs/REFERENCE.md"));
        var names = new List<string>();
        for (int header = 0; header < lines.Length; header++)
        {
            if (!(lines[header].StartsWith('|') && lines[header].Contains("Prometheus name"))) continue;
            var columns = lines[header].Split('|').Select(c => c.Trim()).ToList();
            int column = columns.IndexOf("Prometheus name");
            for (int i = header + 2; i < lines.Length && lines[i].StartsWith('|'); i++)
                names.AddRange(BacktickPattern().Matches(lines[i].Split('|')[column]).Select(m => m.Groups[1].Value));
            if (firstTableOnly) break;
        }

        if (names.Count == 0) throw new InvalidOperationException("docs/REFERENCE.md has no table with a 'Prometheus name' column.");
        return names;
    }

    /// <summary>Every target expression of every panel of the dashboard (rows included).</summary>
    public static IReadOnlyList<(string Panel, string Expression)> DashboardExpressions()
    {
        using var document = JsonDocument.Parse(File.ReadAllText(PathOf("examples/grafana/dashboards/trainingprobes.json")));
        var found = new List<(string, string)>();
        Walk(document.RootElement.GetProperty("panels"));
        return found;

        void Walk(JsonElement panels)
        {
            foreach (var panel in panels.EnumerateArray())
            {
                if (panel.TryGetProperty("panels", out var nested)) Walk(nested);
                if (!panel.TryGetProperty("targets", out var targets)) continue;
                string title = panel.TryGetProperty("title", out var t) ? t.GetString() ?? "" : "";
                foreach (var target in targets.EnumerateArray())
                    if (target.TryGetProperty("expr", out var expr) && !string.IsNullOrWhiteSpace(expr.GetString()))
                        found.Add((title, expr.GetString()!));
            }
        }
    }

    /// <summary>Grafana's variables replaced by values a plain Prometheus query accepts.</summary>
    public static string Substitute(string expression, string run) => expression
        .Replace("${run}", run).Replace("$run", run)
        .Replace("${geometry}", ".*").Replace("$geometry", ".*")
        .Replace("$__rate_interval", "1m").Replace("${__rate_interval}", "1m")
        .Replace("$__interval", "15s").Replace("${__interval}", "15s")
        .Replace("$__range", "1h").Replace("${__range}", "1h");

    /// <summary>The alert rules' expressions (each on one line, as the rules file keeps them).</summary>
    public static IReadOnlyList<(string Alert, string Expression)> AlertExpressions()
    {
        var result = new List<(string, string)>();
        string alert = "";
        foreach (var raw in File.ReadAllLines(PathOf("examples/grafana/alerts.yml")))
        {
            var line = raw.Trim();
            if (line.StartsWith("- alert:", StringComparison.Ordinal)) alert = line["- alert:".Length..].Trim();
            else if (line.StartsWith("expr:", StringComparison.Ordinal))
            {
                var expression = line["expr:".Length..].Trim();
                if (expression is "|" or ">" or "|-" or ">-")
                    throw new InvalidOperationException($"Alert {alert}: keep each expr on one line in alerts.yml.");
                result.Add((alert, expression.Trim('\'', '"')));
            }
        }

        return result;
    }

    /// <summary>The TrainingProbes metric names an expression reads (histogram suffixes kept).</summary>
    public static IEnumerable<string> MetricsIn(string expression) =>
        MetricPattern().Matches(expression).Select(m => m.Value).Distinct();

    [GeneratedRegex("`([a-z_:][a-z0-9_:]*)`")]
    private static partial Regex BacktickPattern();

    [GeneratedRegex("trainingprobes_[a-z0-9_]+")]
    private static partial Regex MetricPattern();
}

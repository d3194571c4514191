using System.Globalization;
using System.Text;

namespace TrainingProbes.Reporting;

/// <summary>One published series: an indicator in a geometry, for the whole model or one layer.</summary>
internal readonly record struct SeriesKey(string Name, Geometry Geometry, string? Layer)
{
    /// <summary>The CSV column: <c>name</c>, <c>name[geometry]</c>, with <c>@layer</c> for a per-layer value.</summary>
    public string Column => (Geometry == Geometry.None ? Name : $"{Name}[{Geometry.ToName()}]") + (Layer is null ? "" : "@" + Layer);
}

/// <summary>One row of the report: a window, or a step at which the trainer reported values and no window closed.</summary>
internal sealed class ReportRow(int? window, long step, DateTimeOffset timestamp)
{
    public int? Window { get; } = window;
    public long Step { get; } = step;
    public DateTimeOffset Timestamp { get; set; } = timestamp;
    public Dictionary<SeriesKey, double> Values { get; } = [];
    public List<ProbeFailure> Failures { get; } = [];
}

/// <summary>
/// The session's history as a table: a row per window (its snapshot's values), and the values the trainer reported
/// (<see cref="ProbeSession.Report"/>, which snapshots do not hold) in the row of the window that closed at the same
/// step, or in a row of their own (no window) at their step.
/// </summary>
internal sealed class ReportTable
{
    public const string UserProbe = "user";

    private ReportTable(IReadOnlyList<ReportRow> rows, IReadOnlyList<SeriesKey> series, IReadOnlySet<SeriesKey> reported,
        IReadOnlyList<FiredRule> fired, long? stopStep, string? stopLabel, string runId)
    {
        Rows = rows;
        Series = series;
        Reported = reported;
        Fired = fired;
        StopStep = stopStep;
        StopLabel = stopLabel;
        RunId = runId;
    }

    public IReadOnlyList<ReportRow> Rows { get; }

    /// <summary>Every series, in column order: the snapshots' by name, geometry and layer, then the reported ones.</summary>
    public IReadOnlyList<SeriesKey> Series { get; }

    /// <summary>The series the trainer reported.</summary>
    public IReadOnlySet<SeriesKey> Reported { get; }

    public IReadOnlyList<FiredRule> Fired { get; }

    /// <summary>The step at which the first stop rule fired, or null when none did.</summary>
    public long? StopStep { get; }

    public string? StopLabel { get; }

    public string RunId { get; }

    public static ReportTable From(ProbeSession session)
    {
        var rows = new List<ReportRow>();
        var probeSeries = new HashSet<SeriesKey>();
        foreach (var snapshot in session.History)
        {
            var row = new ReportRow(snapshot.Window, snapshot.Step, snapshot.Timestamp);
            foreach (var value in snapshot.Values)
            {
                var key = new SeriesKey(value.Name, value.Geometry, value.Layer);
                row.Values[key] = value.Value;
                probeSeries.Add(key);
            }

            row.Failures.AddRange(snapshot.Failures);
            rows.Add(row);
        }

        // A reported value joins the window that closed at its step; otherwise a row of its own. A value reported twice
        // at one step keeps the last, as the gauge does. Reports older than the oldest window kept are left out with it.
        long first = rows.Count > 0 ? rows[0].Step : long.MinValue;
        var reported = new HashSet<SeriesKey>();
        var byStep = rows.GroupBy(r => r.Step).ToDictionary(g => g.Key, g => g.Last());
        foreach (var report in session.ReportedValues)
        {
            if (report.Step < first && session.History.Count >= session.Options.HistoryCapacity) continue;
            if (!byStep.TryGetValue(report.Step, out var row))
            {
                row = new ReportRow(null, report.Step, report.Timestamp);
                byStep[report.Step] = row;
                rows.Add(row);
            }

            var key = new SeriesKey(report.Value.Name, report.Value.Geometry, report.Value.Layer);
            row.Values[key] = report.Value.Value;
            reported.Add(key);
        }

        rows = [.. rows.OrderBy(r => r.Step).ThenBy(r => r.Window ?? int.MaxValue)];
        var series = probeSeries.Except(reported)
            .OrderBy(k => k.Layer is not null).ThenBy(k => k.Name, StringComparer.Ordinal).ThenBy(k => k.Geometry).ThenBy(k => k.Layer, StringComparer.Ordinal)
            .Concat(reported.OrderBy(k => k.Name, StringComparer.Ordinal).ThenBy(k => k.Geometry))
            .ToList();

        var fired = session.FiredRules;
        var stop = fired.FirstOrDefault(f => f.Action == Stopping.RuleAction.Stop);
        long? stopStep = null;
        string? stopLabel = null;
        if (stop.Rule is not null)
        {
            stopStep = stop.Step;
            stopLabel = $"stop at step {stop.Step}: {stop.Rule}";
        }
        else if (session.ShouldStop && session.History.Count > 0)
        {
            // Fired before this session recorded it (a restored stopping state): the last window is where the run stopped.
            stopStep = session.History[^1].Step;
            stopLabel = $"stopped (step {stopStep})";
        }

        return new ReportTable(rows, series, reported, fired, stopStep, stopLabel, session.RunId);
    }

    /// <summary>
    /// The CSV: <c>window,step,timestamp</c>, a column per series, then <c>failures</c> (a count) and
    /// <c>failure_reasons</c> (<c>probe:reason</c>, separated by <c>;</c>). Invariant culture, round-trip numbers, an empty
    /// cell where a row lacks a value.
    /// </summary>
    public string ToCsv()
    {
        var text = new StringBuilder();
        text.AppendJoin(',', ["window", "step", "timestamp", .. Series.Select(s => Quote(s.Column)), "failures", "failure_reasons"]).Append('\n');
        foreach (var row in Rows)
        {
            text.Append(row.Window?.ToString(CultureInfo.InvariantCulture)).Append(',')
                .Append(row.Step.ToString(CultureInfo.InvariantCulture)).Append(',')
                .Append(row.Timestamp.ToString("O", CultureInfo.InvariantCulture));
            foreach (var key in Series)
            {
                text.Append(',');
                if (row.Values.TryGetValue(key, out double value)) text.Append(value.ToString("R", CultureInfo.InvariantCulture));
            }

            text.Append(',').Append(row.Failures.Count.ToString(CultureInfo.InvariantCulture)).Append(',')
                .Append(Quote(string.Join(";", row.Failures.Select(f => $"{f.Probe}:{f.Reason}")))).Append('\n');
        }

        return text.ToString();
    }

    private static string Quote(string cell) =>
        cell.IndexOfAny([',', '"', '\n', '\r']) < 0 ? cell : "\"" + cell.Replace("\"", "\"\"") + "\"";
}

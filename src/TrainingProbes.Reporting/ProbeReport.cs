namespace TrainingProbes.Reporting;

/// <summary>
/// The end-of-run report of a <see cref="ProbeSession"/>: <c>report.csv</c>, every published value per window, and
/// <c>report.png</c>, a panel per indicator family with the stop marked.
/// </summary>
public static class ProbeReport
{
    /// <summary>Name of the CSV the report writes.</summary>
    public const string CsvFileName = "report.csv";

    /// <summary>Name of the PNG the report writes.</summary>
    public const string PngFileName = "report.png";

    /// <summary>
    /// Writes the report of the session's <see cref="ProbeSession.History"/> into <paramref name="folder"/> (created if
    /// needed; files of an earlier report there are replaced). <c>report.csv</c> has a row per window (<c>window</c>,
    /// <c>step</c>, <c>timestamp</c>, a column per series named like <c>gradient.cosine[euclidean]</c>, per-layer values as
    /// <c>name[geometry]@layer</c>, then <c>failures</c> and <c>failure_reasons</c>); values the trainer reported with
    /// <see cref="ProbeSession.Report"/> join the window closed at their step, or get a row with no window. Invariant
    /// culture; a cell is empty where a row lacks the value. <c>report.png</c> plots agreement and regret, flatness, noise
    /// and GSNR, curvature, and the loss with the reported values, over the training step, with standard-error bands and a
    /// line where a stop rule fired; a family with no data gets no panel. With
    /// <see cref="ProbeOptions.BackgroundStatistics"/>, call it after <see cref="ProbeSession.Flush"/> (or use
    /// <see cref="ReportProbe"/>, which writes it when the session is disposed).
    /// </summary>
    /// <param name="session">The session.</param>
    /// <param name="folder">Where to write.</param>
    /// <returns>The paths written: the CSV, then the PNG.</returns>
    public static IReadOnlyList<string> WriteReport(this ProbeSession session, string folder)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        Directory.CreateDirectory(folder);
        var table = ReportTable.From(session);
        string csv = Path.GetFullPath(Path.Combine(folder, CsvFileName));
        string png = Path.GetFullPath(Path.Combine(folder, PngFileName));
        WriteAtomically(csv, path => File.WriteAllText(path, table.ToCsv()));
        WriteAtomically(png, path => ReportChart.Write(table, path));
        return [csv, png];
    }

    private static void WriteAtomically(string path, Action<string> write)
    {
        string temporary = path + ".tmp";
        try
        {
            write(temporary);
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }
}

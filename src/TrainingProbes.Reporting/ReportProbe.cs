namespace TrainingProbes.Reporting;

/// <summary>
/// Writes the session's report (<see cref="ProbeReport.WriteReport"/>) into a folder when the session is disposed:
/// put it in <see cref="ProbeOptions.Probes"/>. A failure to write is logged and counted like any probe's.
/// </summary>
/// <param name="folder">Where to write <c>report.csv</c> and <c>report.png</c>.</param>
public sealed class ReportProbe(string folder) : TrainingProbe
{
    private ProbeSession? _session;

    /// <inheritdoc />
    public override string Name => "report";

    /// <summary>Where the report goes.</summary>
    public string Folder { get; } = !string.IsNullOrWhiteSpace(folder) ? folder : throw new ArgumentException("The report needs a folder.", nameof(folder));

    /// <summary>The paths written when the session ended (the CSV, then the PNG); empty before.</summary>
    public IReadOnlyList<string> Written { get; private set; } = [];

    /// <inheritdoc />
    public override void OnSessionStart(ProbeSession session) => _session = session;

    /// <inheritdoc />
    public override void OnSessionEnd()
    {
        if (_session is { } session) Written = session.WriteReport(Folder);
    }
}

using TrainingProbes.Checkpoints;
using static TorchSharp.torch;

namespace TrainingProbes;

/// <summary>
/// Writes the gradients of every <c>every</c>-th window to a safetensors file, for offline analysis in Python
/// (<c>safetensors.torch.load_file</c>): one tensor per watched parameter, shaped [K, ...parameter shape], named as in
/// <c>named_parameters()</c>, with the run id, window and step in the file's metadata. Files are
/// <c>window-000012.safetensors</c> in the given folder. Each export copies K x P numbers to the host.
/// </summary>
public sealed class GradientExportProbe : TrainingProbe
{
    private readonly string _directory;
    private readonly int _every;

    /// <summary>Creates the probe; add it to <see cref="ProbeOptions.Probes"/>.</summary>
    /// <param name="directory">The folder to write to; it is created, with its parents, when the session starts if it does not exist.</param>
    /// <param name="every">Export every this-many windows (default 1).</param>
    public GradientExportProbe(string directory, int every = 1)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (every < 1) throw new ArgumentOutOfRangeException(nameof(every), every, "every must be at least 1 (1 exports every window).");
        _directory = directory;
        _every = every;
    }

    /// <inheritdoc />
    public override string Name => "gradient_export";

    /// <summary>Files written so far.</summary>
    public IReadOnlyList<string> Files => _files;

    private readonly List<string> _files = [];

    /// <inheritdoc />
    public override void OnSessionStart(ProbeSession session)
    {
        if (session.Options.Storage == WindowStorage.Sketch)
            throw new ProbeConfigurationException("GradientExportProbe writes the window's gradients, which ProbeOptions.Storage = Sketch does not keep; use Storage = Full or BFloat16.");
        if (File.Exists(_directory))
            throw new ProbeConfigurationException($"GradientExportProbe: '{_directory}' is a file, not a folder; choose a folder to write the windows to.");
        try
        {
            Directory.CreateDirectory(_directory);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            throw new ProbeConfigurationException($"GradientExportProbe: cannot create the folder '{_directory}' ({ex.Message}); choose a folder this process may write to.", ex);
        }
    }

    /// <inheritdoc />
    public override void OnWindowClosed(ProbeWindowContext window)
    {
        if (window.Window % _every != 0) return;
        var tensors = window.ParameterNames.ToDictionary(name => name, window.Gradients);
        var metadata = new Dictionary<string, string>
        {
            ["run_id"] = window.Session.RunId,
            ["window"] = window.Window.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["step"] = window.Step.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["k"] = window.WindowSize.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        string path = Path.Combine(_directory, $"window-{window.Window:D6}.safetensors");
        CheckpointFile.SaveTensors(tensors, path, metadata);
        _files.Add(path);
    }
}

using Microsoft.Extensions.Logging;
using TrainingProbes.Probes;

namespace TrainingProbes.Session;

/// <summary>What a new session says and starts besides wiring its parts: the built-in probes, the log lines, the warm-up.</summary>
internal static class SessionStartup
{
    /// <summary>The built-in probes the options ask for, in the order they run.</summary>
    public static TrainingProbe[] BuiltInProbes(ProbeOptions options) =>
        !options.BuiltInProbes ? []
        : options.StepStatistics
            ? [new LossProbe(), new ParameterDriftProbe(), new GradientStatisticsProbe(options), new OneThetaGradientProbe(options)]
            : [new LossProbe(), new ParameterDriftProbe(), new OneThetaGradientProbe(options)];

    /// <summary>Shows each published snapshot in the console panel when the options name an output.</summary>
    public static void ShowOnConsole(ProbeOptions options, SnapshotPublisher publisher, Stopping.StoppingController stopping)
    {
        if (options.Output is not { } output) return;
        var view = new ConsoleView(options, output, ConsoleView.IsTerminal(output), rules: stopping.Rules);
        publisher.Subscribe("console", snapshot => view.Show(snapshot, publisher.History, stopping.ShouldStop));
    }

    /// <summary>Says, on the console and in the log, what sketch storage gives up.</summary>
    public static void AnnounceStorage(ProbeOptions options, ILogger logger)
    {
        if (options.Storage != WindowStorage.Sketch) return;
        string sketch = $"[probes] Storage = Sketch: a window's gradients are kept as CountSketches of {options.SketchDimension} numbers where they need a K x P buffer; the Gram indicators " +
            $"are then estimated from them in the {options.Geometries} geometries, and GSNR, EB, per-layer values, the fisher geometry and the raw gradients are not available.";
        options.Output?.WriteLine(sketch);
        logger.LogInformation("{Message}", sketch);
    }

    /// <summary>Compiles the window pass's code on the worker now, not when the first window's statistics need it.</summary>
    public static void WarmUp(StatisticsWorker worker, ProbeOptions options)
    {
        if (!options.BuiltInProbes || !options.BackgroundStatistics) return;
        worker.Run(() =>
        {
            try
            {
                Statistics.WindowKernel.WarmUp(options.WindowSize);
            }
            catch (Exception)
            {
                // Only a head start: a window whose pass fails reports it as the probe's failure.
            }
        });
    }

    /// <summary>The run's first log line: what is watched, how often, in which geometries.</summary>
    public static void LogStart(ILogger logger, string runId, SessionWindows windows, ProbeOptions options) =>
        logger.LogInformation(
            "TrainingProbes run {RunId}: watching {Parameters} parameters in {Tensors} tensors, K={K} micro-batches per window, {Schedule}, geometries {Geometries}.",
            runId, windows.Layout.ParameterCount, windows.Layout.Parameters.Count, options.WindowSize,
            options.OverheadBudget is { } budget ? $"windows as often as a {budget:P0} overhead budget allows" : $"a window every {options.Interval} steps",
            options.Geometries);
}

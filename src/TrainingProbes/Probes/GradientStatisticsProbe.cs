using TrainingProbes.Statistics;

namespace TrainingProbes.Probes;

/// <summary>The first-order family of each passive window (the trainer's own step gradients).</summary>
internal sealed class GradientStatisticsProbe(ProbeOptions options) : TrainingProbe
{
    private FirstOrderFamily? _family;

    public override string Name => "gradient";

    public override void OnSessionStart(ProbeSession session) =>
        _family = new FirstOrderFamily(options, options.Geometries, session.Window, prefix: "", options.LayerMetrics);

    public override void OnWindowClosed(ProbeWindowContext window) => _family!.Compute(window);

    public override void OnSessionEnd() => _family?.Dispose();
}

using TrainingProbes.Statistics;

namespace TrainingProbes.Probes;

/// <summary>
/// The optimizer's step-to-step statistics (with <see cref="ProbeOptions.StepStatistics"/>): the first-order family of
/// the trainer's own K consecutive step gradients, each from a different theta, published as <c>step.*</c>. They
/// describe the trajectory, not generalization: a negative <c>step.gradient.cosine</c> means consecutive steps
/// overshoot across a valley (oscillation, compare Cohen et al. 2021 on the edge of stability).
/// </summary>
internal sealed class GradientStatisticsProbe(ProbeOptions options) : TrainingProbe, IStatefulPart
{
    /// <summary>Prefix of the names this probe reports.</summary>
    public const string Prefix = "step.";

    private FirstOrderFamily? _family;
    private Capture.GradientWindow? _steps;

    public override string Name => "step";

    public override void OnSessionStart(ProbeSession session)
    {
        _steps = session.Windows.Steps ?? throw new InvalidOperationException("The step family needs the session's ring of step gradients (StepStatistics).");
        _family = new FirstOrderFamily(options, options.Geometries, session.Windows.Layout, options.WindowSize, microBatches: false,
            session.Windows.Theta, Prefix, layerCount: 0, sketched: _steps.Sketch is not null);
    }

    public override void OnWindowClosed(ProbeWindowContext window) => _family!.Compute(window, _steps!);

    public override void OnSessionEnd() => _family?.Dispose();

    public string StateKey => Name;

    public void Save(SessionStateWriter state) => _family?.Save(state.For("family"));

    public Action Prepare(SessionStateReader state) =>
        _family?.Prepare(state.For("family")) ?? throw new InvalidDataException($"The probe '{Name}' did not start, so it has no state to restore.");
}

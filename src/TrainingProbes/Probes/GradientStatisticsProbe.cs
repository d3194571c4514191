using TrainingProbes.Statistics;

namespace TrainingProbes.Probes;

/// <summary>
/// The optimizer's step-to-step statistics: the first-order family of each passive window (the trainer's own step
/// gradients, each from a different theta), published as <c>step.*</c>. They describe the trajectory, not
/// generalization: a negative <c>step.gradient.cosine</c> means consecutive steps overshoot across a valley
/// (oscillation, compare Cohen et al. 2021 on the edge of stability).
/// </summary>
internal sealed class GradientStatisticsProbe(ProbeOptions options) : TrainingProbe, Session.IStatefulPart
{
    /// <summary>Prefix of the names this probe reports.</summary>
    public const string Prefix = "step.";

    private FirstOrderFamily? _family;

    public override string Name => "step";

    public override void OnSessionStart(ProbeSession session) =>
        _family = new FirstOrderFamily(options, options.Geometries, session.Window, Prefix, layerCount: 0);

    public override void OnWindowClosed(ProbeWindowContext window) => _family!.Compute(window);

    /// <summary>The parameters at the close of the current window, copied by this probe's whitening (null without the adaptive geometry).</summary>
    public Capture.FlatParameterBuffer? ThetaAtClose => _family?.Whitening.Theta;

    public override void OnSessionEnd() => _family?.Dispose();

    public string StateKey => Name;

    public void Save(Session.SessionStateWriter state) => _family?.Save(state.For("family"));

    public Action Prepare(Session.SessionStateReader state) =>
        _family?.Prepare(state.For("family")) ?? throw new InvalidDataException($"The probe '{Name}' did not start, so it has no state to restore.");
}

using TrainingProbes.Statistics;

namespace TrainingProbes.Probes;

/// <summary>
/// The default indicators: the first-order family (gradient agreement, regret, contrastive flatness, noise, GSNR and
/// EB, with their standard errors) of the K micro-batch gradients of the closing step's minibatch, taken by the session
/// at the step's parameters (<see cref="Capture.MicroBatchWindow"/>), reported for minibatches of the trainer's size.
/// </summary>
/// <remarks>
/// Step gradients come from K different parameter vectors: plain SGD overshoots across valleys, consecutive
/// step gradients anti-correlate, and their statistics measure the optimizer (<see cref="ProbeOptions.StepStatistics"/>).
/// At one theta the micro-batches differ only in their data, which is what generalization is about. Without the step's
/// batch and loss function (<c>model.Probe(loss, optimizer, input, target, lossFunction.call)</c> or
/// <see cref="ProbeOptions.Loss"/>) the session says once what it misses and this probe publishes nothing.
/// </remarks>
internal sealed class OneThetaGradientProbe(ProbeOptions options) : TrainingProbe, IStatefulPart
{
    private FirstOrderFamily? _family;

    /// <summary>The probe's name: the <c>probe</c> attribute of the default indicators.</summary>
    public const string ProbeName = "gradient";

    public override string Name => ProbeName;

    public override void OnSessionStart(ProbeSession session) =>
        _family = new FirstOrderFamily(options, options.Geometries, session.Windows.Layout, options.WindowSize, microBatches: true,
            session.Windows.Theta, prefix: "", options.LayerMetrics, options.SmoothingWindows);

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        if (window.MicroBatches is { } source) _family!.Compute(window, source);
    }

    public override void OnSessionEnd() => _family?.Dispose();

    public string StateKey => Name;

    public void Save(SessionStateWriter state) => _family?.Save(state.For("family"));

    public Action Prepare(SessionStateReader state) =>
        _family?.Prepare(state.For("family")) ?? throw new InvalidDataException($"The probe '{Name}' did not start, so it has no state to restore.");
}

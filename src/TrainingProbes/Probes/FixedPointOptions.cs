using static TorchSharp.torch;

namespace TrainingProbes;

/// <summary>
/// Settings of a <see cref="FixedPointProbe"/>. Each property checks its value when it is set.
/// </summary>
public sealed class FixedPointOptions
{
    private int _windowSize = 4;
    private int _every = 10;
    private double _radius = 1e-3;
    private Geometry _geometries = Geometry.All;
    private int _powerIterations = 20;
    private double _powerTolerance = 1e-3;
    private int _traceSamples = 30;
    private double _traceTolerance = 0.05;

    /// <summary>
    /// The loss of one minibatch, from the model's output and the target: the same mean loss the trainer uses
    /// (for example <c>(output, target) =&gt; nn.functional.cross_entropy(output, target)</c>). Required.
    /// </summary>
    public required Func<Tensor, Tensor, Tensor> Loss { get; init; }

    /// <summary>The model's forward pass from an input; null calls the model itself (it must then be a <c>Module&lt;Tensor, Tensor&gt;</c>).</summary>
    public Func<Tensor, Tensor>? Forward { get; init; }

    /// <summary>
    /// Where the K minibatches come from: a source that is enumerated (and restarted when it ends) K items per
    /// fixed-point window. Null splits the batch of the step that closes the window into K micro-batches; that step must
    /// then pass its input and target to the step call (<c>model.Probe(loss, optimizer, input, target)</c>).
    /// </summary>
    public IEnumerable<(Tensor Input, Tensor Target)>? Batches { get; init; }

    /// <summary>K, the number of minibatches a fixed-point window evaluates at the same parameters (at least 2, default 4); the K of <see cref="ProbeOptions.WindowSize"/> for this probe's windows.</summary>
    public int WindowSize
    {
        get => _windowSize;
        init => _windowSize = value >= 2 ? value
            : throw new ArgumentOutOfRangeException(nameof(WindowSize), value, "WindowSize (K) must be at least 2: pairwise indicators need two gradients.");
    }

    /// <summary>
    /// A fixed-point window runs at every this-many windows (default 10; the first at window Every - 1).
    /// With an overhead budget, the session stretches the interval between windows to pay for it.
    /// </summary>
    public int Every
    {
        get => _every;
        init => _every = value >= 1 ? value
            : throw new ArgumentOutOfRangeException(nameof(Every), value, "Every must be at least 1 (1 runs a fixed-point window at every window).");
    }

    /// <summary>
    /// The radius eps of the finite-radius regret and flatness. Relative by default: eps = Radius x the norm of the
    /// parameters measured in the geometry (||theta|| euclidean, ||D^-1 theta|| otherwise, so that it is invariant
    /// too). Default 1e-3.
    /// </summary>
    public double Radius
    {
        get => _radius;
        init => _radius = value > 0 && double.IsFinite(value) ? value
            : throw new ArgumentOutOfRangeException(nameof(Radius), value, "Radius must be a positive finite number, for example 1e-3 (relative) or 0.05 (absolute).");
    }

    /// <summary>Whether <see cref="Radius"/> is relative to the parameters' norm (default true) or absolute.</summary>
    public bool RadiusIsRelative { get; init; } = true;

    /// <summary>Geometries of the fixed-point family (default all three).</summary>
    public Geometry Geometries
    {
        get => _geometries;
        init => _geometries = value != Geometry.None && (value & ~Geometry.All) == 0 ? value
            : throw new ArgumentOutOfRangeException(nameof(Geometries), value, "Geometries must name at least one of Euclidean, Fisher, Adaptive.");
    }

    /// <summary>Whether to evaluate the finite-radius regret and flatness (K^2 + 2K forward passes per geometry; default true).</summary>
    public bool FiniteRadius { get; init; } = true;

    /// <summary>Whether to estimate curvature by Hessian-vector products (default true).</summary>
    public bool Curvature { get; init; } = true;

    /// <summary>Most power iterations per eigenvalue (default 20; PyHessian uses 100).</summary>
    public int PowerIterations
    {
        get => _powerIterations;
        init => _powerIterations = value >= 1 ? value
            : throw new ArgumentOutOfRangeException(nameof(PowerIterations), value, "PowerIterations must be at least 1.");
    }

    /// <summary>Power iteration stops when the eigenvalue changes by less than this, relatively (default 1e-3, as PyHessian).</summary>
    public double PowerTolerance
    {
        get => _powerTolerance;
        init => _powerTolerance = value is > 0 and < 1 ? value
            : throw new ArgumentOutOfRangeException(nameof(PowerTolerance), value, "PowerTolerance must be in (0, 1), for example 1e-3.");
    }

    /// <summary>Most Rademacher samples of the Hutchinson trace (default 30).</summary>
    public int TraceSamples
    {
        get => _traceSamples;
        init => _traceSamples = value >= 2 ? value
            : throw new ArgumentOutOfRangeException(nameof(TraceSamples), value, "TraceSamples must be at least 2 (a confidence interval needs two samples).");
    }

    /// <summary>Hutchinson stops when the 95% confidence half-width falls below this fraction of |trace| (default 0.05).</summary>
    public double TraceTolerance
    {
        get => _traceTolerance;
        init => _traceTolerance = value is > 0 and < 1 ? value
            : throw new ArgumentOutOfRangeException(nameof(TraceTolerance), value, "TraceTolerance must be in (0, 1), for example 0.05.");
    }

    /// <summary>Seed of the probe's own random generator (probe vectors); the training's generators are never used.</summary>
    public ulong Seed { get; init; } = 0x7472_6169_6e;

    /// <summary>
    /// Evaluate in evaluation mode (dropout off, batch norm on running statistics) instead of the model's current mode
    /// (default false). Either way the mode, the buffers and the CPU random state are restored afterwards.
    /// </summary>
    public bool EvaluationMode { get; init; }

    /// <summary>
    /// Start each window's power iterations from the previous window's top eigenvector of the pooled Hessian (default
    /// true): when theta moved little between windows it is nearly converged already, so the curvature costs a few
    /// Hessian-vector products instead of up to <see cref="PowerIterations"/>. False starts every estimate from a
    /// random vector of the probe's own seeded stream.
    /// </summary>
    public bool WarmStart { get; init; } = true;
}

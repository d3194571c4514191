using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Capture;
using TrainingProbes.Curvature;
using TrainingProbes.Interop;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes;

/// <summary>
/// Fixed-point windows: K minibatches evaluated at the same parameters theta, where the step windows' gradients
/// come from parameters that drift. At every <see cref="FixedPointOptions.Every"/>-th window close it computes, at the
/// current theta and without disturbing training:
/// the first-order family of the K minibatch gradients (names prefixed <c>fixed_point.</c>); the finite-radius regret
/// <c>R_ij = f_j(theta - eps u_i) - f_j(theta - eps u_j)</c> and contrastive flatness at radius eps, from real loss
/// evaluations, per geometry; and curvature by Hessian-vector products: the Hutchinson trace of the pooled loss, its
/// top eigenvalue, the contrastive curvature <c>mean_i lambda_max(H_i) / lambda_max(Hbar)</c>, and the invariant top
/// eigenvalue of <c>D Hbar D</c> in the Fisher and adaptive geometries.
/// </summary>
/// <remarks>
/// Gradients are taken with <c>torch.autograd.grad</c>, so the parameters' <c>.grad</c> is never touched; parameters
/// perturbed for loss evaluations are copied back exactly; the model's mode, its buffers (batch norm statistics) and
/// the CPU random state are restored; the probe draws its random vectors from its own generator. A training run with
/// this probe ends with bit-identical parameters to the same run without it (tested on CPU). On CUDA, TorchSharp
/// offers no way to save the CUDA random state, so a model with dropout sees another dropout stream after a fixed-point
/// window unless <see cref="FixedPointOptions.EvaluationMode"/> is set. A watched parameter that no longer requires a
/// gradient (frozen after the session started) gets none: the values are those of the parameters that still train;
/// when none does, or the loss has no graph, the window fails with a message (logged and counted by the session).
/// </remarks>
public sealed class FixedPointProbe : TrainingProbe, IStatefulPart
{
    /// <summary>Prefix of the names this probe reports.</summary>
    public const string Prefix = "fixed_point.";

    private readonly FixedPointOptions _options;
    private nn.Module? _model;
    private Func<Tensor, Tensor>? _forward;
    private GradientWindow? _buffer;
    private FirstOrderFamily? _family;
    private FlatParameterBuffer? _theta;
    private FlatParameterBuffer? _work;
    private Generator? _generator;
    private IEnumerator<(Tensor Input, Tensor Target)>? _source;
    private Parameter[] _parameters = [];
    private CurvatureWindow? _curvature;
    private int _windowsSeen;

    /// <summary>Creates the probe; add it to <see cref="ProbeOptions.Probes"/>.</summary>
    /// <param name="options">What to compute and on which minibatches.</param>
    public FixedPointProbe(FixedPointOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(options.Loss, nameof(options.Loss));
        _options = options;
    }

    /// <summary>
    /// Runs one fixed-point window at the model's current parameters, outside any training loop (for example on a
    /// checkpoint), and returns its values: the fixed-point family, and nothing else. The model's parameters, gradients,
    /// buffers and mode are left as they were.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="options">What to compute; <see cref="FixedPointOptions.Batches"/> is required here.</param>
    /// <param name="settings">Geometry settings (Fisher decay, eta, regret quantile, parameter filter); defaults when null.</param>
    /// <exception cref="ArgumentException">No batches were given.</exception>
    public static ProbeSnapshot Measure(nn.Module model, FixedPointOptions options, ProbeOptions? settings = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Batches is null)
            throw new ArgumentException("Measure needs FixedPointOptions.Batches: there is no training step to split a batch from.", nameof(options));
        settings ??= new ProbeOptions();
        string runId = settings.RunId ?? "measure";
        var probe = new FixedPointProbe(options);
        var started = Stopwatch.GetTimestamp();
        try
        {
            // What a session does for the probe at a window's close, without a session: bind it, run it in a dispose
            // scope with gradients off, and read its values back in one transfer.
            probe.Bind(model, settings, (ILogger?)settings.LoggerFactory?.CreateLogger<FixedPointProbe>() ?? NullLogger.Instance, runId);
            var window = new ProbeWindowContext(null, probe._layout!, options.WindowSize) { CurrentProbe = probe.Name };
            window.Begin(step: 0, window: 0);
            using (torch.NewDisposeScope())
            using (torch.no_grad())
                probe.Run(window, probe.NextBatches(window));
            window.Resolve((_, exception) => throw exception);
            var seconds = new Dictionary<string, double> { [probe.Name] = Stopwatch.GetElapsedTime(started).TotalSeconds };
            return new ProbeSnapshot(runId, 0, 0, DateTimeOffset.UtcNow, [.. window.Values], seconds);
        }
        catch (Exception ex) when (ex is not (ArgumentException or ProbeConfigurationException or OutOfMemoryException))
        {
            throw new InvalidOperationException($"The fixed-point measurement failed: {ex.Message}", ex);
        }
        finally
        {
            probe.OnSessionEnd();
        }
    }

    internal Exception? LastError { get; private set; }

    /// <inheritdoc />
    public override string Name => "fixed_point";

    /// <summary>Number of fixed-point windows run so far.</summary>
    public int Runs { get; private set; }

    /// <inheritdoc />
    public override void OnSessionStart(ProbeSession session)
    {
        ArgumentNullException.ThrowIfNull(session);
        Bind(session.Model, session.Options, session.Logger, session.RunId);
    }

    /// <summary>Makes the probe's buffers for <paramref name="model"/>'s watched parameters (a session's start, or <see cref="Measure"/>).</summary>
    private void Bind(nn.Module model, ProbeOptions settings, ILogger logger, string runId)
    {
        _model = model;
        _forward = _options.Forward ?? (model is nn.Module<Tensor, Tensor> module
            ? module.call
            : throw new ProbeConfigurationException(
                $"FixedPointProbe cannot call the model ({model.GetType().Name} is not a Module<Tensor, Tensor>): set FixedPointOptions.Forward."));
        _layout = new ParameterLayout(model, settings.ParameterFilter);
        _buffer = new GradientWindow(_layout, _options.WindowSize);
        _parameters = _buffer.Parameters.Select(p => p.Parameter).ToArray();
        _theta = _layout.CreateFlatBuffer();
        _work = _layout.CreateFlatBuffer();
        _family = new FirstOrderFamily(settings, _options.Geometries, _layout, _options.WindowSize, microBatches: false, _theta, Prefix, layerCount: 0);
        _generator = new Generator(_options.Seed, _parameters[0].device);
        _curvature = new CurvatureWindow(_options, logger, runId, _parameters, _buffer!, _family!.Whitening, _generator, LossAt);
    }

    private ParameterLayout? _layout;

    /// <inheritdoc />
    public override void OnWindowClosed(ProbeWindowContext window)
    {
        // At windows Every-1, 2 Every-1, ...: the first ordinary windows come first and give the overhead budget its
        // first measure of the training's pace before an expensive fixed-point window is charged to it.
        int every = _options.Every;
        if (_windowsSeen++ % every != every - 1) return;
        try
        {
            var batches = NextBatches(window);
            Run(window, batches);
            Runs++;
        }
        catch (Exception ex)
        {
            LastError = ex;
            throw;
        }
    }

    private List<(Tensor Input, Tensor Target)> NextBatches(ProbeWindowContext window)
    {
        int k = _options.WindowSize;
        if (_options.Batches is null)
        {
            if (window.Input is null || window.Target is null)
                throw new InvalidOperationException(
                    "FixedPointProbe has no minibatches: set FixedPointOptions.Batches, or pass the step's input and target to the step call (model.Probe(loss, optimizer, input, target)).");
            if (window.Input.shape[0] < k)
                throw new InvalidOperationException($"The batch of {window.Input.shape[0]} samples cannot be split into {k} micro-batches; lower FixedPointOptions.WindowSize.");
            var inputs = window.Input.detach().chunk(k, 0);
            var targets = window.Target.detach().chunk(k, 0);
            return inputs.Zip(targets).Take(k).ToList();
        }

        var result = new List<(Tensor, Tensor)>(k);
        _source ??= _options.Batches.GetEnumerator();
        bool restarted = false;
        while (result.Count < k)
        {
            if (_source.MoveNext())
            {
                result.Add(_source.Current);
                continue;
            }

            if (restarted) throw new InvalidOperationException("FixedPointOptions.Batches yields no minibatch.");
            _source.Dispose();
            _source = _options.Batches.GetEnumerator();
            restarted = true;
        }

        return result;
    }

    private Tensor LossAt((Tensor Input, Tensor Target) batch) => _options.Loss(_forward!(batch.Input), batch.Target);

    private void Run(ProbeWindowContext window, List<(Tensor Input, Tensor Target)> batches)
    {
        var model = _model!;
        int k = batches.Count;
        using var state = new ModelStateGuard(model);
        _theta!.LoadParameters();
        if (_options.EvaluationMode) model.eval();
        try
        {
            // 1. The K minibatch losses and gradients at theta (autograd.grad: the parameters' .grad stays as it is).
            var losses = new Tensor[k];
            using (torch.enable_grad())
            {
                for (int i = 0; i < k; i++)
                {
                    using var scope = torch.NewDisposeScope();
                    var loss = LossAt(batches[i]);
                    // Only the watched parameters that still require a gradient (one frozen after attach gets none).
                    _buffer!.Store(i, WatchedGradients.Of(loss, _parameters, "FixedPointProbe"));
                    losses[i] = loss.detach().reshape([]).to(ScalarType.Float64).MoveToOuterDisposeScope();
                }
            }

            _family!.Compute(window, _buffer!, defer: false);   // the finite-radius and curvature steps below read its updated whitening
            var atTheta = torch.stack(losses);

            // 2. Finite-radius regret and contrastive flatness, per geometry, from loss evaluations.
            if (_options.FiniteRadius)
                foreach (var geometry in new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive })
                    if (_options.Geometries.HasFlag(geometry))
                        FiniteRadius(window, batches, geometry, atTheta);

            // 3. Curvature by Hessian-vector products.
            if (_options.Curvature) _curvature!.Estimate(window, batches, Runs);
        }
        finally
        {
            _theta.StoreToParameters();
        }
    }

    /// <summary>Sets the parameters to theta + step * u, with u given per segment (flat).</summary>
    private void MoveTo(Tensor[] direction, Tensor step)
    {
        using var scope = torch.NewDisposeScope();
        for (int s = 0; s < direction.Length; s++)
            _work!.Segments[s].copy_(_theta!.Segments[s].add(step.to(direction[s].dtype).mul(direction[s]), Scalars.One));
        _work!.StoreToParameters();
    }

    private void FiniteRadius(ProbeWindowContext window, List<(Tensor Input, Tensor Target)> batches, Geometry geometry, Tensor atTheta)
    {
        int k = batches.Count;
        var segments = _buffer!.Segments;
        using var noGrad = torch.no_grad();

        // u = D^2 g / ||D g||, per minibatch and for the mean gradient; eps = Radius * ||D^-1 theta|| (D > 0 only).
        var d = Enumerable.Range(0, segments.Count).Select(s => _family!.Whitening.Segment(geometry, s)).ToArray();
        Tensor Direction(Func<int, Tensor> gradientOfSegment, out Tensor[] perSegment)
        {
            var scaled = Enumerable.Range(0, segments.Count).Select(s => d[s] is null ? gradientOfSegment(s) : gradientOfSegment(s) * d[s]!).ToArray();
            var norm = torch.stack(scaled.Select(h => h.mul(h).sum(ScalarType.Float64)).ToArray()).sum().sqrt();
            perSegment = Enumerable.Range(0, segments.Count)
                .Select(s => (d[s] is null ? scaled[s] : scaled[s] * d[s]!) / norm.to(scaled[s].dtype)).ToArray();
            return norm;
        }

        var thetaNorm = torch.stack(Enumerable.Range(0, segments.Count).Select(s =>
        {
            var theta = _theta!.Segments[s];
            var inverse = d[s] is null ? theta : (theta / d[s]!).masked_fill_(d[s]!.le(Scalars.Zero), Scalars.Zero);
            return inverse.mul(inverse).sum(ScalarType.Float64);
        }).ToArray()).sum().sqrt();
        using var scalars = new ScalarScope();   // an implicit scalar can be finalized during the native call (see Scalars)
        var eps = _options.RadiusIsRelative ? thetaNorm.mul(scalars[_options.Radius]) : torch.tensor(_options.Radius, dtype: ScalarType.Float64);

        var descent = new Tensor[k][];
        for (int i = 0; i < k; i++)
        {
            int slot = i;
            Direction(s => _buffer.SegmentGradients(s)[slot], out descent[i]);
        }

        Direction(s => _buffer.SegmentGradients(s).mean([0]), out var pooled);

        // L[i, j] = f_j(theta - eps u_i); ascent[i] = f_i(theta + eps u_i); pooledAscent = mean_j f_j(theta + eps ubar).
        var table = new Tensor[k * k];
        var ascent = new Tensor[k];
        for (int i = 0; i < k; i++)
        {
            MoveTo(descent[i], -eps);
            for (int j = 0; j < k; j++) table[i * k + j] = LossAt(batches[j]).detach().reshape([]).to(ScalarType.Float64);
            MoveTo(descent[i], eps);
            ascent[i] = LossAt(batches[i]).detach().reshape([]).to(ScalarType.Float64);
        }

        MoveTo(pooled, eps);
        var pooledAscent = torch.stack(batches.Select(b => LossAt(b).detach().reshape([]).to(ScalarType.Float64)).ToArray()).mean();
        _theta!.StoreToParameters();

        var values = torch.cat([torch.stack(table), torch.stack(ascent), atTheta, pooledAscent.reshape(1), eps.reshape(1)]);
        window.Fetch(values, host =>
        {
            var l = host[..(k * k)];
            var up = host.Slice(k * k, k);
            var f = host.Slice(k * k + k, k);
            double fbarUp = host[k * k + 2 * k], radius = host[k * k + 2 * k + 1];
            double regret = 0;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    if (i != j) regret += l[i * k + j] - l[j * k + j];
            double meanSharpness = 0, fbar = 0;
            for (int i = 0; i < k; i++)
            {
                meanSharpness += (up[i] - f[i]) / k;
                fbar += f[i] / k;
            }

            double pooledSharpness = fbarUp - fbar;
            window.Report(Prefix + Indicators.FiniteRegret, regret / (k * (k - 1)) / radius, geometry);
            window.Report(Prefix + Indicators.Sharpness, pooledSharpness, geometry);
            window.Report(Prefix + Indicators.FiniteContrastiveFlatness, meanSharpness / pooledSharpness, geometry);
            window.Report(Prefix + Indicators.Radius, radius, geometry);
        });
    }

    /// <inheritdoc />
    public override void OnSessionEnd()
    {
        _family?.Dispose();
        _theta?.Dispose();
        _work?.Dispose();
        _buffer?.Dispose();
        _generator?.Dispose();
        _source?.Dispose();
        _curvature?.Dispose();
    }

    string IStatefulPart.StateKey => Name;

    void IStatefulPart.Save(SessionStateWriter state)
    {
        state.Set("runs", Runs);
        state.Set("windows_seen", _windowsSeen);
        _family?.Save(state.For("family"));
        if (_curvature?.Eigenvector is { } eigenvector)
            for (int i = 0; i < eigenvector.Length; i++) state.SetTensor($"eigenvector.{i}", eigenvector[i]);
    }

    Action IStatefulPart.Prepare(SessionStateReader state)
    {
        int runs = state.Get<int>("runs"), windowsSeen = state.Get<int>("windows_seen");
        var family = _family?.Prepare(state.For("family")) ?? (() => { });
        Tensor[]? eigenvector = state.Has("eigenvector.0")
            ? _parameters.Select((p, i) => state.GetTensor($"eigenvector.{i}", p.shape, p.dtype)).ToArray()
            : null;
        return () =>
        {
            Runs = runs;
            _windowsSeen = windowsSeen;
            family();
            if (eigenvector is null) return;
            _curvature?.LoadEigenvector(eigenvector);
        };
    }
}

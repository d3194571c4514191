using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The first-order family of a window's K gradients, in each enabled geometry, and the GSNR with the EB criterion; per
/// layer too for the first watched parameters. One read of the window (<see cref="CoordinateSums"/>, or
/// <see cref="WindowKernel"/> on a CPU) gives a K x K Gram matrix per geometry, the GSNR sums and the fold of the Fisher
/// average, parameter by parameter; the O(K^2) formulas of <see cref="FirstOrderStatistics"/> and
/// <see cref="GsnrStatistics"/> then run on the host, with jackknife standard errors over the K gradients.
/// </summary>
internal sealed class FirstOrderFamily : IDisposable
{
    private static readonly Geometry[] Order = [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive];

    private readonly ProbeOptions _options;
    private readonly ParameterLayout _parameters;
    private readonly int _k;
    private readonly bool _microBatches;
    private readonly string _prefix;
    private readonly int _layers;
    private readonly CoordinateSums.Layout _layout;
    private readonly IndicatorDefinition[] _definitions;   // the catalogue's first-order indicators
    private readonly IndicatorDefinition[] _layerDefinitions;
    private readonly GramSummary _summary;
    private readonly GramSummary _leftOut;
    private readonly double[] _leaveOneOut;               // per definition, its K values with one gradient left out
    private readonly WindowSmoother? _smoother;
    private readonly MomentPool? _pool;                   // micro-batch windows: the moment-form values' smoothing
    private readonly double[] _synthetic;                 // a K x K matrix with the pooled moments
    private readonly double[] _pooledLeaveOneOut;         // per definition, the pooled values leaving one window out
    private readonly double[] _pooledValues, _pooledErrors;   // per definition, of the geometry being published
    private readonly FirstOrderPass _pass;
    private readonly bool _sketched;
    private double[] _total = [];
    private int _partsPending;
    private ProbeWindowContext? _window;
    private double _examples = double.NaN;                // examples behind each of the window's gradients

    /// <param name="options">Geometries' settings, GSNR epsilon, regret quantile.</param>
    /// <param name="geometries">The geometries to compute.</param>
    /// <param name="parameters">The watched parameters.</param>
    /// <param name="k">K, gradients per window.</param>
    /// <param name="microBatches">Whether the K gradients are micro-batches of one minibatch (values at the minibatch's size).</param>
    /// <param name="theta">The window's parameters, for the adaptive geometry.</param>
    /// <param name="prefix">Prefix of the reported names ("" for the default family).</param>
    /// <param name="layerCount">Per-layer values for this many parameters (the first ones).</param>
    /// <param name="smoothing">Also publish each value's mean over this many windows as <c>&lt;name&gt;.smoothed</c> (0: none).</param>
    /// <param name="sketched">Whether the windows are CountSketches, whitened when sketched (no per-coordinate state here).</param>
    public FirstOrderFamily(ProbeOptions options, Geometry geometries, ParameterLayout parameters, int k, bool microBatches,
        FlatParameterBuffer? theta, string prefix, int layerCount, int smoothing = 0, bool sketched = false)
    {
        _options = options;
        _parameters = parameters;
        _k = k;
        _microBatches = microBatches;
        _prefix = prefix;
        _layers = Math.Min(layerCount, parameters.Parameters.Count);
        _layout = new CoordinateSums.Layout(k, Order.Where(g => geometries.HasFlag(g)).ToArray());
        _sketched = sketched;
        Whitening = new Whitening(options, sketched ? Geometry.None : geometries, parameters, theta);
        _definitions = IndicatorCatalogue.FirstOrder();
        _layerDefinitions = _definitions.Where(d => d.PerLayer).ToArray();
        _summary = new GramSummary(k, options.RegretQuantile);
        _leftOut = new GramSummary(k, options.RegretQuantile);
        _leaveOneOut = new double[k * _definitions.Length];
        _pass = new FirstOrderPass(_layout, options.GsnrEpsilon, parameters, Whitening);
        long span = options.SmoothingSteps is { } steps ? steps : long.MaxValue;
        if (smoothing > 0) _smoother = new WindowSmoother(_layout.Geometries.Count * _definitions.Length + 2, smoothing, span);
        if (smoothing > 0 && microBatches) _pool = new MomentPool(_layout.Geometries.Count, smoothing, span);
        _synthetic = new double[k * k];
        _pooledLeaveOneOut = new double[_definitions.Length * Math.Max(smoothing, 1)];
        _pooledValues = new double[_definitions.Length];
        _pooledErrors = new double[_definitions.Length];
    }

    /// <summary>
    /// The indicators that depend on a micro-batch window only through its mean diagonal and mean off-diagonal Gram
    /// entries: their smoothed values come from pooled moments (<see cref="MomentPool"/>).
    /// </summary>
    internal static readonly HashSet<string> MomentForm =
    [
        Indicators.GradientNorm, Indicators.MeanGradientNorm, Indicators.Cosine, Indicators.Regret, Indicators.RelativeRegret,
        Indicators.ContrastiveFlatness, Indicators.GradientNoise, Indicators.Disparity, Indicators.NormTest,
        Indicators.NoiseScale, Indicators.ExampleNoise, Indicators.ExampleSnr,
    ];

    /// <summary>The indicators that scale by the examples behind each gradient: not published when the source does not know them.</summary>
    private static readonly HashSet<string> PerExample = [Indicators.NoiseScale, Indicators.ExampleNoise, Indicators.ExampleSnr];

    /// <summary>D of each geometry, as the last window used it; its state is this family's.</summary>
    public Whitening Whitening { get; }

    /// <summary>s of the window's values: the trainer's batch over one gradient's for micro-batches (K), else null.</summary>
    private double? Scale(int k) => _microBatches ? k : null;

    /// <summary>
    /// Computes the family of <paramref name="source"/>'s K gradients and reports it through <paramref name="window"/>.
    /// It reads only the source and this family's state (the window's theta is the session's copy), so it is deferred
    /// (<see cref="ProbeWindowContext.Defer"/>): with <see cref="ProbeOptions.BackgroundStatistics"/> it runs on the
    /// session's worker while training goes on.
    /// </summary>
    /// <param name="window">The closed window.</param>
    /// <param name="source">The window's gradients.</param>
    /// <param name="defer">False computes everything now (for a caller that reads the updated whitening right after).</param>
    public void Compute(ProbeWindowContext window, IWindowSource source, bool defer = true)
    {
        if (source.K != _k) throw new ArgumentException($"The family was made for K = {_k}, the window has {source.K} gradients.", nameof(source));
        _window = window;
        _examples = source.ExamplesPerGradient;   // read now: the next capture changes it
        if (defer) window.Defer(() => ComputeFrom(source));
        else ComputeFrom(source);
    }

    private void ComputeFrom(IWindowSource source)
    {
        _total = new double[_layout.Length];
        _partsPending = 1;   // this method's own part, released at its end
        if (source is GradientWindow { Sketch: { } sketch } sketched) ComputeSketched(sketched, sketch);
        else ComputeCoordinates(source);
        AddPart([]);
    }

    /// <summary>Gram matrices of the [K, d] sketches: unbiased estimates of the full ones. No GSNR, no per-layer values.</summary>
    private void ComputeSketched(GradientWindow sketched, GradientSketch sketch)
    {
        for (int s = 0; s < sketched.Segments.Count; s++)
        {
            var sums = torch.zeros(_layout.Length, dtype: ScalarType.Float64, device: sketched.Segments[s].Device);
            for (int i = 0; i < _layout.Geometries.Count; i++)
            {
                var h = sketch.Windows[sketch.IndexOf(_layout.Geometries[i])][s].to(ScalarType.Float64);
                sums.narrow(0, _layout.Gram(i), _k * _k).view(_k, _k).add_(h.mm(h.t()), Scalars.One);
            }

            _partsPending++;
            _window!.Fetch(sums, AddPart);
        }
    }

    /// <summary>The per-coordinate read, parameter by parameter: host sums add at once, device sums after one transfer per device.</summary>
    private void ComputeCoordinates(IWindowSource source)
    {
        var window = _window!;
        bool first = Whitening.NeedsFirstFloors;
        Whitening.Begin();
        if (first)
            for (int q = 0; q < _parameters.Parameters.Count; q++)
                Whitening.SetFirstFloor(q, _pass.SumOfSquares(source, q), _k);

        var deviceTotals = new Dictionary<(DeviceType, int), Tensor>();
        var fisherSums = new List<(int Parameter, Tensor Sum)>();
        for (int q = 0; q < _parameters.Parameters.Count; q++)
        {
            _pass.Run(source, q);
            if (_pass.Host is { } host)
            {
                for (int i = 0; i < host.Length; i++) _total[i] += host[i];
                Whitening.EndParameter(q, _pass.FisherHost);
            }

            if (_pass.Device is { } device)
            {
                var key = (device.device_type, device.device_index);
                if (deviceTotals.TryGetValue(key, out var total)) total.add_(device, Scalars.One);
                else deviceTotals[key] = device.clone();
                if (_pass.FisherDevice is { } fisher) fisherSums.Add((q, fisher.clone()));
            }

            if (q < _layers) PublishLayerWhenRead(q);
        }

        _pass.Release();
        foreach (var total in deviceTotals.Values)
        {
            _partsPending++;
            window.Fetch(total, AddPart);
        }

        if (fisherSums.Count > 0)
            window.Fetch(torch.cat(fisherSums.Select(f => f.Sum.reshape(1)).ToArray()), host =>
            {
                for (int i = 0; i < fisherSums.Count; i++) Whitening.EndParameter(fisherSums[i].Parameter, host[i]);
            });
    }

    /// <summary>A layer's values, from the pass that just read it: at once from host sums, or after the transfer.</summary>
    private void PublishLayerWhenRead(int parameter)
    {
        string name = _parameters.Parameters[parameter].Name;
        var host = _pass.Host is { } h ? (double[])h.Clone() : new double[_layout.Length];
        if (_pass.Device is not { } device)
        {
            PublishLayer(host, name);
            return;
        }

        _window!.Fetch(device.clone(), values =>
        {
            for (int i = 0; i < host.Length; i++) host[i] += values[i];
            PublishLayer(host, name);
        });
    }

    /// <summary>Adds a part of the whole window's sums; publishes when the last has arrived.</summary>
    private void AddPart(ReadOnlySpan<double> values)
    {
        for (int i = 0; i < values.Length; i++) _total[i] += values[i];
        if (--_partsPending > 0) return;

        var window = _window!;
        int k = _k;
        int n = _definitions.Length;
        ThrowIfNotFinite(_total.AsSpan(0, k * k), k);
        for (int index = 0; index < _layout.Geometries.Count; index++)
        {
            var geometry = _layout.Geometries[index];
            var gram = _total.AsSpan(_layout.Gram(index), k * k);
            _summary.Load(gram, k, Scale(k), _examples);
            // Jackknife over the K gradients: each value recomputed from the Gram matrix that leaves gradient i out (no
            // device work), se = sqrt((K-1)/K sum_i (v_(i) - mean v_(i))^2); NaN below K = 3.
            if (k >= 3)
            {
                for (int i = 0; i < k; i++)
                {
                    _leftOut.LoadLeavingOut(gram, k, i, Scale(k - 1), _examples);
                    for (int f = 0; f < n; f++) _leaveOneOut[f * k + i] = _definitions[f].FromGram!(_leftOut);
                }
            }

            if (_pool is not null)
            {
                var (d, s) = MomentPool.Moments(gram, k);
                _pool.Add(index, d, s, window.Step);
                Pool(index);
            }

            for (int f = 0; f < n; f++)
            {
                if (double.IsNaN(_examples) && PerExample.Contains(_definitions[f].Name)) continue;   // needs the micro-batch size
                Publish(window, index * n + f, _definitions[f].Name, _definitions[f].FromGram!(_summary),
                    k >= 3 ? Jackknife.StandardError(_leaveOneOut.AsSpan(f * k, k)) : double.NaN, geometry,
                    _pool is not null && MomentForm.Contains(_definitions[f].Name) ? (_pooledValues[f], _pooledErrors[f]) : null);
            }
        }

        if (!(_total[_layout.Gsnr + 2] > 0)) return;   // sketches: no per-coordinate values
        double scale = Scale(k) ?? 1;
        var (gsnr, gsnrError) = GsnrStatistics.FromSums(_total.AsSpan(_layout.Gsnr), k, scale);
        int series = _layout.Geometries.Count * n;
        Publish(window, series, Indicators.Gsnr, gsnr, gsnrError, Geometry.None);
        double eb = k / scale;   // EB tests the mean of the K gradients: K units of one gradient's GSNR
        Publish(window, series + 1, Indicators.EbCriterion, -eb * gsnr, eb * gsnrError, Geometry.None);
    }

    /// <summary>
    /// The moment-form indicators of one geometry over the pooled moments of the windows held, into
    /// <see cref="_pooledValues"/> and <see cref="_pooledErrors"/> (per definition; NaN for the others): a jackknife over
    /// the windows (NaN below three). One matrix per left-out window serves every definition.
    /// </summary>
    private void Pool(int geometry)
    {
        int k = _k, m = _pool!.Count(geometry), n = _definitions.Length;
        void Load(int leftOut)
        {
            var (d, s) = _pool.Pooled(geometry, leftOut);
            MomentPool.Synthesize(d, s, k, _synthetic);
            _leftOut.Load(_synthetic, k, Scale(k), _examples);
        }

        Load(-1);
        for (int f = 0; f < n; f++) _pooledValues[f] = MomentForm.Contains(_definitions[f].Name) ? _definitions[f].FromGram!(_leftOut) : double.NaN;
        if (m < 3)
        {
            _pooledErrors.AsSpan().Fill(double.NaN);
            return;
        }

        for (int w = 0; w < m; w++)
        {
            Load(w);
            for (int f = 0; f < n; f++)
                if (MomentForm.Contains(_definitions[f].Name)) _pooledLeaveOneOut[f * _pool.Capacity + w] = _definitions[f].FromGram!(_leftOut);
        }

        for (int f = 0; f < n; f++)
            _pooledErrors[f] = MomentForm.Contains(_definitions[f].Name) ? Jackknife.StandardError(_pooledLeaveOneOut.AsSpan(f * _pool.Capacity, m)) : double.NaN;
    }

    /// <summary>
    /// Reports a value and its standard error, and with smoothing their mean over the last windows (or the
    /// <paramref name="pooled"/> value given for it) and the value's between-window spread.
    /// </summary>
    private void Publish(ProbeWindowContext window, int series, string name, double value, double error, Geometry geometry,
        (double Value, double Error)? pooled = null)
    {
        window.Report(_prefix + name, value, geometry);
        window.Report(_prefix + name + Indicators.StandardErrorSuffix, error, geometry);
        if (_smoother is null) return;
        var (mean, meanError) = _smoother.Add(series, value, error, window.Step);   // also holds the values for the spread
        if (pooled is { } p) (mean, meanError) = p;
        window.Report(_prefix + name + Indicators.SmoothedSuffix, mean, geometry);
        window.Report(_prefix + name + Indicators.SmoothedSuffix + Indicators.StandardErrorSuffix, meanError, geometry);
        window.Report(_prefix + name + Indicators.SpreadSuffix, _smoother.Spread(series), geometry);
    }

    /// <summary>
    /// A window with a NaN or infinite gradient publishes none of the family's values: each would be computed from the
    /// non-finite gradient, and a smoothed mean would carry it for windows. The squared norms on the first Gram's
    /// diagonal are non-finite exactly then. The failure is logged, counted and listed in the snapshot; the Fisher
    /// average kept its old value for those coordinates.
    /// </summary>
    private void ThrowIfNotFinite(ReadOnlySpan<double> gram, int k)
    {
        for (int i = 0; i < k; i++)
            if (!double.IsFinite(gram[i * k + i]))
                throw new NonFiniteGradientException(
                    $"Gradient {i + 1} of the window's {k} is not finite (NaN or infinite): the window's {_prefix}values are not published. " +
                    "Check the loss and the learning rate; a trainer that skips such steps may still pass them to the probes.");
    }

    private void PublishLayer(ReadOnlySpan<double> sums, string layer)
    {
        var window = _window!;
        int k = _k;
        for (int index = 0; index < _layout.Geometries.Count; index++)
        {
            _summary.Load(sums.Slice(_layout.Gram(index), k * k), k, Scale(k), _examples);
            foreach (var definition in _layerDefinitions)
                window.Report(_prefix + definition.Name, definition.FromGram!(_summary), _layout.Geometries[index], layer);
        }

        window.Report(_prefix + Indicators.Gsnr, GsnrStatistics.FromSums(sums[_layout.Gsnr..], k, Scale(k) ?? 1).Value, Geometry.None, layer);
    }

    /// <summary>Saves what carries from window to window: the whitening's Fisher average, floors and update count, and the smoother.</summary>
    public void Save(SessionStateWriter state)
    {
        state.Set("whitening.updates", Whitening.Updates);
        state.Set("whitening.floors", Whitening.Floors);
        state.Set("whitening.floors_in_use", Whitening.FloorsInUse);
        var tensors = Whitening.StateTensors;
        for (int i = 0; i < tensors.Count; i++) state.SetTensor($"whitening.{i}", tensors[i]);
        if (_smoother is not null) SaveWindows(state, "smoother", "values", "variances", _smoother.State);
        if (_pool is not null) SaveWindows(state, "pool", "d", "s", _pool.State);
    }

    /// <summary>Saves the windows a smoother or a pool holds: two columns of values, the counts, next slots and steps.</summary>
    private static void SaveWindows(SessionStateWriter state, string prefix, string first, string second,
        (double[], double[], int[], int[], long[]) windows)
    {
        state.Set($"{prefix}.{first}", windows.Item1);
        state.Set($"{prefix}.{second}", windows.Item2);
        state.Set($"{prefix}.count", windows.Item3);
        state.Set($"{prefix}.next", windows.Item4);
        state.Set($"{prefix}.steps", windows.Item5);
    }

    /// <summary>Reads what <see cref="SaveWindows"/> saved into <paramref name="prepare"/> (steps null: saved before windows had steps).</summary>
    private static Action PrepareWindows(SessionStateReader state, string prefix, string first, string second,
        Func<double[], double[], int[], int[], long[]?, Action> prepare) =>
        prepare(state.Get<double[]>($"{prefix}.{first}"), state.Get<double[]>($"{prefix}.{second}"), state.Get<int[]>($"{prefix}.count"),
            state.Get<int[]>($"{prefix}.next"), state.Has($"{prefix}.steps") ? state.Get<long[]>($"{prefix}.steps") : null);

    /// <summary>Checks <see cref="Save"/>'s state against this family; returns what restores it.</summary>
    public Action Prepare(SessionStateReader state)
    {
        long updates = state.Get<long>("whitening.updates");
        double[] floors = state.Get<double[]>("whitening.floors"), inUse = state.Get<double[]>("whitening.floors_in_use");
        if (floors.Length != _parameters.Parameters.Count || inUse.Length != floors.Length)
            throw new InvalidDataException($"The saved whitening has floors for {floors.Length} parameter tensors; this session watches {_parameters.Parameters.Count}.");
        var targets = Whitening.StateTensors;
        var saved = targets.Select((t, i) => state.GetTensor($"whitening.{i}", t.shape, t.dtype)).ToArray();
        if (state.Has($"whitening.{targets.Count}"))
            throw new InvalidDataException("The saved whitening state has more tensors than this session's geometries use: it was saved with other Geometries.");
        Action smoother = _smoother is null ? () => { } : PrepareWindows(state, "smoother", "values", "variances", _smoother.Prepare);
        Action pool = _pool is null ? () => { } : PrepareWindows(state, "pool", "d", "s", _pool.Prepare);
        return () =>
        {
            using (torch.no_grad())
                for (int i = 0; i < targets.Count; i++) targets[i].copy_(saved[i]);
            Whitening.Updates = updates;
            Whitening.Floors = floors;
            Whitening.FloorsInUse = inUse;
            smoother();
            pool();
        };
    }

    public void Dispose() => Whitening.Dispose();
}

/// <summary>A window's gradients hold a NaN or an infinity (the failure's reason: <c>non_finite_gradient</c>).</summary>
internal sealed class NonFiniteGradientException(string message) : Exception(message);

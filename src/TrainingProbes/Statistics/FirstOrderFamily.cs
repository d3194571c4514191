using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The first-order family of the K gradients held in a <see cref="GradientWindow"/>, in each enabled geometry, and the
/// mean GSNR with the EB criterion; per layer too for the given parameters. Passive windows (the trainer's step
/// gradients) and active windows (K minibatches at one theta) both use it, each with its own <see cref="Whitening"/>
/// (the Fisher average), which it updates at every window and which gives D for every geometry.
/// On the device, in the parameters' dtype (at least float32), chunk by chunk: one K x K Gram matrix per
/// geometry and two GSNR sums, accumulated across chunks in float64.
/// On the host: the O(K^2) formulas of <see cref="FirstOrderStatistics"/>.
/// </summary>
internal sealed class FirstOrderFamily : IDisposable
{
    private static readonly Geometry[] Order = [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive];


    private readonly ProbeOptions _options;
    private readonly Geometry[] _geometries;
    private readonly GradientWindow _buffer;
    private readonly string _prefix;
    private CapturedParameter[] _layers = [];
    private double[] _hostSums = [];
    private readonly IndicatorDefinition[] _definitions;   // the catalogue's first-order indicators
    private readonly IndicatorDefinition[] _layerDefinitions;
    private readonly GramSummary _summary;
    private readonly GramSummary _leftOut;
    private readonly double[] _leaveOneOut;               // per definition, its K values with one minibatch left out
    private readonly WindowSmoother? _smoother;
    private int _segmentsPending;
    private ProbeWindowContext? _window;

    /// <param name="options">Geometries, Fisher decay, eta, GSNR epsilon, regret quantile.</param>
    /// <param name="geometries">The geometries to compute.</param>
    /// <param name="buffer">Where the K gradients are.</param>
    /// <param name="prefix">Prefix of the reported names ("" for passive windows).</param>
    /// <param name="layerCount">Per-layer values for this many parameters (the first ones).</param>
    /// <param name="smoothing">Also publish each value's mean over this many windows as <c>&lt;name&gt;.smoothed</c> (0: none).</param>
    public FirstOrderFamily(ProbeOptions options, Geometry geometries, GradientWindow buffer, string prefix, int layerCount, int smoothing = 0)
    {
        _options = options;
        _geometries = Order.Where(g => geometries.HasFlag(g)).ToArray();
        _buffer = buffer;
        _prefix = prefix;
        var window = buffer;
        // With sketches each gradient was whitened when it was sketched: no per-coordinate state here.
        Whitening = new Whitening(options, buffer.Sketch is null ? geometries : Geometry.None, window);
        _layers = window.Parameters.Take(layerCount).ToArray();
        _hostSums = new double[SumsLength(window.K)];
        _definitions = IndicatorCatalogue.FirstOrder();
        _layerDefinitions = _definitions.Where(d => d.PerLayer).ToArray();
        _summary = new GramSummary(window.K, options.RegretQuantile);
        _leftOut = new GramSummary(window.K, options.RegretQuantile);
        _leaveOneOut = new double[window.K * _definitions.Length];
        if (smoothing > 0) _smoother = new WindowSmoother(_geometries.Length * _definitions.Length + 2, smoothing);
    }

    /// <summary>D of each geometry, as the last <see cref="Compute"/> used it; its state is this family's.</summary>
    public Whitening Whitening { get; }

    // Per geometry a K x K Gram matrix, then the GSNR sums: R, U, N, then R_(i) and U_(i) for each left-out i
    // (see AccumulateGsnr).
    private int SumsLength(int k) => _geometries.Length * k * k + 3 + 2 * k;

    /// <summary>
    /// Computes the family on the device and reports it through <paramref name="window"/> after the window's transfer.
    /// Only the adaptive geometry's copy of theta is taken now (call at the window's theta); the rest reads the window's
    /// buffer and this family's state only, and is deferred (<see cref="ProbeWindowContext.Defer"/>): with
    /// <see cref="ProbeOptions.BackgroundStatistics"/> it runs on the session's worker while training goes on.
    /// </summary>
    /// <param name="window">The closed window.</param>
    /// <param name="defer">False computes everything now (for a caller that reads the updated whitening right after).</param>
    public void Compute(ProbeWindowContext window, bool defer = true)
    {
        _window = window;
        Whitening.LoadTheta();
        if (defer) window.Defer(ComputeFromBuffer);
        else ComputeFromBuffer();
    }

    private void ComputeFromBuffer()
    {
        var window = _window!;
        var buffer = _buffer;
        int k = buffer.K;
        Whitening.Fold();   // the whole window first: each tensor's floor needs the tensor's new average

        Array.Clear(_hostSums);
        _segmentsPending = buffer.Segments.Count;
        if (buffer.Sketch is { } sketch)
        {
            // Gram matrices of the [K, d] sketches: unbiased estimates of the full ones. No GSNR, no per-layer values.
            for (int s = 0; s < buffer.Segments.Count; s++)
            {
                var sums = torch.zeros(SumsLength(k), dtype: ScalarType.Float64, device: buffer.Segments[s].Device);
                for (int i = 0; i < _geometries.Length; i++)
                {
                    var h = sketch.Windows[sketch.IndexOf(_geometries[i])][s].to(ScalarType.Float64);
                    sums.narrow(0, i * k * k, k * k).view(k, k).add_(h.mm(h.t()), Scalars.One);
                }

                window.Fetch(sums, AddSegment);
            }

            return;
        }

        for (int s = 0; s < buffer.Segments.Count; s++)
        {
            var sums = torch.zeros(SumsLength(k), dtype: ScalarType.Float64, device: buffer.Segments[s].Device);
            Accumulate(buffer, s, 0, buffer.Segments[s].Count, sums);
            window.Fetch(sums, AddSegment);
        }

        // Per-layer values read the D of the whole window.
        foreach (var layer in _layers)
        {
            var sums = torch.zeros(SumsLength(k), dtype: ScalarType.Float64, device: buffer.Segments[layer.Segment].Device);
            Accumulate(buffer, layer.Segment, layer.Offset, layer.Count, sums);
            string name = layer.Name;
            window.Fetch(sums, host => PublishLayer(host, name));
        }
    }

    /// <summary>
    /// Adds the Gram matrices (one per geometry) and the GSNR sum and count of columns
    /// [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) of a segment into <paramref name="sums"/>.
    /// </summary>
    private void Accumulate(GradientWindow buffer, int s, long start, long count, Tensor sums)
    {
        int k = buffer.K;
        var segment = buffer.Segments[s];

        // On a CPU, float32: one managed pass over the buffer, read in place, for every Gram matrix and the GSNR sums.
        if (WindowKernel.Supports(segment.Gradients))
        {
            var host = new double[SumsLength(k)];
            WindowKernel.Accumulate(segment.Gradients, s, start, count, Whitening, _geometries, _options.GsnrEpsilon, host);
            using var add = torch.tensor(host, ScalarType.Float64, sums.device);
            sums.add_(add, Scalars.One);
            return;
        }

        var grams = new Tensor[_geometries.Length];
        for (int i = 0; i < grams.Length; i++) grams[i] = sums.narrow(0, i * k * k, k * k).view(k, k);
        var gsnr = sums.narrow(0, _geometries.Length * k * k, 3 + 2 * k);
        long chunk = WindowChunks.Columns(segment, k);
        for (long offset = start; offset < start + count; offset += chunk)
        {
            using var scope = torch.NewDisposeScope();
            long length = Math.Min(chunk, start + count - offset);
            var g = WindowChunks.Read(segment, offset, length);
            for (int i = 0; i < _geometries.Length; i++)
            {
                var d = Whitening.Chunk(_geometries[i], s, offset, length, g.dtype);
                var h = d is null ? g : g.mul(d);
                grams[i].add_(h.mm(h.t()), Scalars.One);
            }

            AccumulateGsnr(g, gsnr, k, segment.Gradients.dtype, _options.GsnrEpsilon);
        }
    }

    /// <summary>
    /// Adds the GSNR sums of a chunk [K, columns] of gradients. Per coordinate c, with m_c the mean and v_c the unbiased
    /// variance of its K values: <c>R = sum_c m_c^2 / (v_c + epsilon)</c> over the coordinates whose K values are not all
    /// equal, <c>U</c> their count, <c>N</c> the count of all coordinates; and the same R_(i), U_(i) with minibatch i
    /// left out (its K - 1 values), for the jackknife. A coordinate whose values are all exactly equal (a dead unit's
    /// zeros), or so close that their variance underflows to 0 in the gradients' dtype, has no noise to compare with:
    /// it is counted in N and contributes 0. With minibatch i left out, a
    /// coordinate is taken as constant when its other K - 1 values are all zero, or when their variance is not above
    /// the rounding of their mean.
    /// </summary>
    internal static void AccumulateGsnr(Tensor g, Tensor gsnr, int k, ScalarType stored, double epsilon)
    {
        // Everything per coordinate in float64: squares of large float32 gradients overflow (inf / inf is NaN). Two
        // passes by hand: torch's var over the leading dimension of [K, P] is ~20x slower on CPU.
        // Every scalar is explicit and kept alive until the end (see Scalars); call inside a dispose scope.
        using var scalars = new ScalarScope();
        var g64 = g.to(ScalarType.Float64);
        var sum = g64.sum([0]);
        var mean = sum.div(scalars[k]);
        var centered = g64.sub(mean);
        var squares = centered.mul_(centered);
        var sumSquares = squares.sum([0]);
        // A coordinate varies when its K values are not all equal and their spread is above the rounding of the
        // gradients' dtype (K values one ulp apart are rounding, and would give a ratio of 1 / eps^2).
        var rounding = mean.abs().mul_(scalars[RoundingFactor * Epsilon(stored)]);
        rounding.mul_(rounding);
        var varies = g.amax([0]).ne_(g.amin([0])).logical_and_(sumSquares.gt(rounding.mul(scalars[k - 1])));
        var variance = sumSquares.div(scalars[k - 1]).add_(scalars[epsilon], Scalars.One);
        var ratio = mean.mul(mean).div_(variance).masked_fill_(varies.logical_not(), Scalars.Zero);

        // Leave-one-out: the mean and the sum of squares of the other K - 1 values, summed directly (a downdate of the
        // full sums, m_(i) = (sum - g_i) / (K - 1), cancels when minibatch i is an outlier or the only nonzero value).
        var looMeans = new Tensor[k];
        var looSquares = new Tensor[k];
        for (int i = 0; i < k; i++)
        {
            var others = torch.cat([g64.narrow(0, 0, i), g64.narrow(0, i + 1, k - 1 - i)]);
            looMeans[i] = others.mean([0]);
            var deviations = others.sub_(looMeans[i]);
            looSquares[i] = deviations.mul_(deviations).sum([0]);
        }

        var looMean = torch.stack(looMeans);
        var looVariance = torch.stack(looSquares).div_(scalars[Math.Max(k - 2, 1)]);
        var looRounding = looMean.abs().mul_(scalars[RoundingFactor * Epsilon(stored)]);
        looRounding.mul_(looRounding);
        // Other K - 1 values all 0 give a variance of exactly 0, which is not above the threshold: no noise.
        var looVaries = looVariance.gt(looRounding).logical_and_(varies);
        var looRatio = looMean.mul_(looMean).div_(looVariance.add_(scalars[epsilon], Scalars.One)).masked_fill_(looVaries.logical_not(), Scalars.Zero);

        gsnr.add_(torch.cat([
            torch.stack([ratio.sum(), varies.sum().to(ScalarType.Float64), torch.tensor((double)g.shape[1], ScalarType.Float64, g.device)]),
            looRatio.sum([1]),
            looVaries.sum([1]).to(ScalarType.Float64),
        ]), Scalars.One);
    }

    /// <summary>How many units of the dtype's rounding (eps |mean|) a coordinate's standard deviation must exceed to count as noise.</summary>
    private const double RoundingFactor = 8;

    /// <summary>
    /// The machine epsilon of the dtype the gradients are stored in: their rounding, which a coordinate's spread must
    /// exceed (bfloat16 storage rounds float32 gradients to 8 significant bits).
    /// </summary>
    private static double Epsilon(ScalarType stored) => stored switch
    {
        ScalarType.Float64 => Math.Pow(2, -52),
        ScalarType.BFloat16 => Math.Pow(2, -7),
        ScalarType.Float16 => Math.Pow(2, -10),
        _ => Math.Pow(2, -23),
    };

    private void AddSegment(ReadOnlySpan<double> values)
    {
        for (int i = 0; i < values.Length; i++) _hostSums[i] += values[i];
        if (--_segmentsPending > 0) return;

        var window = _window!;
        int k = _buffer.K;
        int n = _definitions.Length;
        ThrowIfNotFinite(_hostSums.AsSpan(0, k * k), k);
        for (int index = 0; index < _geometries.Length; index++)
        {
            var geometry = _geometries[index];
            var gram = _hostSums.AsSpan(index * k * k, k * k);
            _summary.Load(gram, k);
            // Jackknife over the K minibatches: each value recomputed from the Gram matrix that leaves minibatch i out
            // (no device work), se = sqrt((K-1)/K sum_i (v_(i) - mean v_(i))^2); NaN below K = 3.
            if (k >= 3)
            {
                for (int i = 0; i < k; i++)
                {
                    _leftOut.LoadLeavingOut(gram, k, i);
                    for (int f = 0; f < n; f++) _leaveOneOut[f * k + i] = _definitions[f].FromGram!(_leftOut);
                }
            }

            for (int f = 0; f < n; f++)
                Publish(window, index * n + f, _definitions[f].Name, _definitions[f].FromGram!(_summary), k >= 3 ? Jackknife.StandardError(_leaveOneOut.AsSpan(f * k, k)) : double.NaN, geometry);
        }

        if (_buffer.Sketch is not null) return;   // per-coordinate values need the gradients themselves
        var (gsnr, gsnrError) = Gsnr(_hostSums, k);
        int series = _geometries.Length * n;
        Publish(window, series, Indicators.Gsnr, gsnr, gsnrError, Geometry.None);
        Publish(window, series + 1, Indicators.EbCriterion, -k * gsnr, k * gsnrError, Geometry.None);
    }

    /// <summary>Reports a value and its standard error, and with smoothing their mean over the last windows.</summary>
    private void Publish(ProbeWindowContext window, int series, string name, double value, double error, Geometry geometry)
    {
        window.Report(_prefix + name, value, geometry);
        window.Report(_prefix + name + Indicators.StandardErrorSuffix, error, geometry);
        if (_smoother is null) return;
        var (mean, meanError) = _smoother.Add(series, value, error);
        window.Report(_prefix + name + Indicators.SmoothedSuffix, mean, geometry);
        window.Report(_prefix + name + Indicators.SmoothedSuffix + Indicators.StandardErrorSuffix, meanError, geometry);
    }

    /// <summary>
    /// A window with a NaN or infinite gradient publishes none of the family's values: each would be computed from the
    /// non-finite minibatch or silently leave it out (a cosine skips pairs without a norm), and a smoothed mean would
    /// carry it for windows. The squared norms on the first Gram's diagonal are non-finite exactly then. The failure is
    /// logged, counted and listed in the snapshot; the Fisher average kept its old value for those coordinates.
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
        int k = _buffer.K;
        for (int index = 0; index < _geometries.Length; index++)
        {
            var geometry = _geometries[index];
            _summary.Load(sums.Slice(index * k * k, k * k), k);
            foreach (var definition in _layerDefinitions)
                window.Report(_prefix + definition.Name, definition.FromGram!(_summary), geometry, layer);
        }

        window.Report(_prefix + Indicators.Gsnr, Gsnr(sums, k).Value, Geometry.None, layer);
    }

    /// <summary>
    /// The mean GSNR over all coordinates, corrected for finite K, and its jackknife standard error (see
    /// <see cref="GsnrStatistics"/>).
    /// </summary>
    private (double Value, double StandardError) Gsnr(ReadOnlySpan<double> sums, int k) =>
        GsnrStatistics.FromSums(sums[(_geometries.Length * k * k)..], k);

    /// <summary>Saves what carries from window to window: the whitening's Fisher average and its update count, and the smoother.</summary>
    public void Save(Session.SessionStateWriter state)
    {
        state.Set("whitening.updates", Whitening.Updates);
        var tensors = Whitening.StateTensors;
        for (int i = 0; i < tensors.Count; i++) state.SetTensor($"whitening.{i}", tensors[i]);
        if (_smoother is not null)
        {
            var (values, variances, count, next) = _smoother.State;
            state.Set("smoother.values", values);
            state.Set("smoother.variances", variances);
            state.Set("smoother.count", count);
            state.Set("smoother.next", next);
        }
    }

    /// <summary>Checks <see cref="Save"/>'s state against this family; returns what restores it.</summary>
    public Action Prepare(Session.SessionStateReader state)
    {
        long updates = state.Get<long>("whitening.updates");
        var targets = Whitening.StateTensors;
        var saved = targets.Select((t, i) => state.GetTensor($"whitening.{i}", t.shape, t.dtype)).ToArray();
        if (state.Has($"whitening.{targets.Count}"))
            throw new InvalidDataException("The saved whitening state has more tensors than this session's geometries use: it was saved with other Geometries or FisherFloor.");
        Action smoother = () => { };
        if (_smoother is not null)
            smoother = _smoother.Prepare(state.Get<double[]>("smoother.values"), state.Get<double[]>("smoother.variances"),
                state.Get<int[]>("smoother.count"), state.Get<int[]>("smoother.next"));
        return () =>
        {
            using (torch.no_grad())
                for (int i = 0; i < targets.Count; i++) targets[i].copy_(saved[i]);
            Whitening.Updates = updates;
            smoother();
        };
    }

    public void Dispose() => Whitening.Dispose();
}

/// <summary>A window's gradients hold a NaN or an infinity (the failure's reason: <c>non_finite_gradient</c>).</summary>
internal sealed class NonFiniteGradientException(string message) : Exception(message);

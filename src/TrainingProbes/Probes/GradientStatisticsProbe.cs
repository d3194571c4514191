using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Probes;

/// <summary>
/// The first-order family of a window in each enabled geometry, and the mean GSNR with the EB criterion.
/// On the device, in the parameters' dtype (at least float32), chunk by chunk: one K x K Gram matrix per
/// geometry and two GSNR sums, accumulated across chunks in float64.
/// On the host: the O(K^2) formulas of <see cref="FirstOrderStatistics"/>.
/// </summary>
internal sealed class GradientStatisticsProbe : TrainingProbe
{
    private static readonly Geometry[] Order = [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive];

    private readonly ProbeOptions _options;
    private readonly Geometry[] _geometries;
    private FlatParameterBuffer? _fisher;     // running average of squared gradients, float64
    private FlatParameterBuffer? _theta;      // parameters at window close, for the adaptive geometry
    private int _windows;
    private double[] _hostSums = [];
    private double[] _scratch = [];
    private int _segmentsPending;

    public GradientStatisticsProbe(ProbeOptions options)
    {
        _options = options;
        _geometries = Order.Where(g => options.Geometries.HasFlag(g)).ToArray();
    }

    public override string Name => "gradient";

    public override void OnSessionStart(ProbeSession session)
    {
        var window = session.Window;
        // The Fisher average is kept in float64: squares of small float32 gradients (below about 1e-19) are
        // subnormal in float32, which is both inexact and, on CPUs, two orders of magnitude slower.
        if (_options.Geometries.HasFlag(Geometry.Fisher)) _fisher = window.CreateFlatBuffer(minimum: ScalarType.Float64);
        if (_options.Geometries.HasFlag(Geometry.Adaptive)) _theta = window.CreateFlatBuffer();
        int k = window.K;
        _hostSums = new double[_geometries.Length * k * k + 2];
        _scratch = new double[k * (k - 1)];
    }

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        CurrentWindow = window;
        var buffer = window.Buffer;
        int k = buffer.K;
        _windows++;
        _theta?.LoadParameters();
        double decay = _options.FisherDecay;
        double biasCorrection = 1.0 / (1.0 - Math.Pow(decay, _windows));

        Array.Clear(_hostSums);
        _segmentsPending = buffer.Segments.Count;
        for (int s = 0; s < buffer.Segments.Count; s++)
        {
            var segment = buffer.Segments[s];
            // Accumulators for this segment: one K x K Gram matrix per geometry, then the GSNR sum and count.
            var sums = torch.zeros(_geometries.Length * k * k + 2, dtype: ScalarType.Float64, device: segment.Device);
            var grams = _geometries.Select((_, i) => sums.narrow(0, i * k * k, k * k).view(k, k)).ToArray();
            var gsnr = sums.narrow(0, _geometries.Length * k * k, 2);

            // Columns are processed in chunks small enough to stay in cache on a CPU, so the float64 temporaries are
            // reused from the allocator rather than faulted in page by page; on other devices the chunks are large.
            long chunk = Math.Max(1, (segment.Device.type == DeviceType.CPU ? CpuChunkElements : DeviceChunkElements) / k);
            for (long offset = 0; offset < segment.Count; offset += chunk)
            {
                using var scope = torch.NewDisposeScope();
                long length = Math.Min(chunk, segment.Count - offset);
                var g = segment.Gradients.narrow(1, offset, length);     // [K, length]
                if (!IsWideEnough(g.dtype)) g = g.to(ScalarType.Float32);
                for (int i = 0; i < _geometries.Length; i++)
                {
                    var h = _geometries[i] switch
                    {
                        Geometry.Euclidean => g,
                        Geometry.Fisher => g * FisherWhitening(g, _fisher!.Segments[s].narrow(0, offset, length), decay, biasCorrection),
                        Geometry.Adaptive => g * (_theta!.Segments[s].narrow(0, offset, length).to(g.dtype).abs() + _options.AdaptiveEta),
                        var other => throw new InvalidOperationException(other.ToString()),
                    };
                    grams[i].add_(h.mm(h.t()));
                }

                // GSNR per coordinate over the K gradients; coordinates with zero variance are left out.
                // (Two passes by hand: torch's var over the leading dimension of [K, P] is ~20x slower on CPU.)
                var mean = g.mean([0]);
                var centered = g - mean;
                var variance = centered.mul_(centered).sum([0]).div_(k - 1);
                var used = variance > 0;
                var ratio = (mean.square() / (variance + _options.GsnrEpsilon)).masked_fill(used.logical_not(), 0);
                gsnr.add_(torch.stack([ratio.sum(ScalarType.Float64), used.sum().to(ScalarType.Float64)]));
            }

            window.Fetch(sums, Accumulate);
        }
    }

    private static bool IsWideEnough(ScalarType type) => type is ScalarType.Float32 or ScalarType.Float64;

    /// <summary>Elements (K x columns) per chunk on a CPU: 1 MiB of float32.</summary>
    private const long CpuChunkElements = 1 << 18;

    /// <summary>Elements per chunk on an accelerator: few, large kernels.</summary>
    private const long DeviceChunkElements = 1 << 25;

    private static Tensor FisherWhitening(Tensor g, Tensor fisher, double decay, double biasCorrection)
    {
        // F <- decay F + (1 - decay) mean_i g_i^2, then D = 1/sqrt(F / (1 - decay^w)) where F > 0, 0 elsewhere,
        // in float64, then D in the gradients' dtype (D of a tiny gradient is large, not subnormal).
        // (to() returns the tensor itself when it is float64 already: square out of place then, never in the buffer.)
        var squares = g.dtype == ScalarType.Float64 ? g.square() : g.to(ScalarType.Float64);
        if (g.dtype != ScalarType.Float64) squares.mul_(squares);
        fisher.mul_(decay).add_(squares.mean([0]), alpha: 1 - decay);
        var d = (fisher * biasCorrection).rsqrt_();
        return d.masked_fill_(fisher <= 0, 0).to(g.dtype);
    }

    private void Accumulate(ReadOnlySpan<double> values)
    {
        for (int i = 0; i < values.Length; i++) _hostSums[i] += values[i];
        if (--_segmentsPending > 0) return;
        Publish();
    }

    private void Publish()
    {
        var window = CurrentWindow!;
        int k = window.WindowSize;
        for (int index = 0; index < _geometries.Length; index++)
        {
            var geometry = _geometries[index];
            var s = FirstOrderStatistics.FromGram(_hostSums.AsSpan(index * k * k, k * k), k, _options.RegretQuantile, _scratch);
            window.Report(Indicators.GradientNorm, s.MeanNorm, geometry);
            window.Report(Indicators.MeanGradientNorm, s.MeanGradientNorm, geometry);
            window.Report(Indicators.Cosine, s.Cosine, geometry);
            window.Report(Indicators.Regret, s.Regret, geometry);
            window.Report(Indicators.RegretUpper, s.RegretUpper, geometry);
            window.Report(Indicators.RelativeRegret, s.RelativeRegret, geometry);
            window.Report(Indicators.JensenRatio, s.JensenRatio, geometry);
            window.Report(Indicators.ContrastiveFlatness, s.ContrastiveFlatness, geometry);
            window.Report(Indicators.GradientNoise, s.Noise, geometry);
            window.Report(Indicators.Coherence, s.Coherence, geometry);
            window.Report(Indicators.Disparity, s.Disparity, geometry);
            window.Report(Indicators.NormTest, s.NormTest, geometry);
            window.Report(Indicators.InnerProductTest, s.InnerProductTest, geometry);
            window.Report(Indicators.OrthogonalityTest, s.OrthogonalityTest, geometry);
        }

        int tail = _geometries.Length * k * k;
        double gsnrSum = _hostSums[tail], used = _hostSums[tail + 1];
        double gsnr = used > 0 ? gsnrSum / used : double.NaN;
        window.Report(Indicators.Gsnr, gsnr);
        window.Report(Indicators.EbCriterion, 1 - k * gsnr);
    }

    private ProbeWindowContext? CurrentWindow { get; set; }

    public override void OnSessionEnd()
    {
        _fisher?.Dispose();
        _theta?.Dispose();
    }
}

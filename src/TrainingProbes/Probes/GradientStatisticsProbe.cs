using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Probes;

/// <summary>
/// The first-order family of a window in each enabled geometry, and the mean GSNR with the EB criterion.
/// On the device: one K x K Gram matrix per geometry (float64 accumulation) and two GSNR sums.
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
        if (_options.Geometries.HasFlag(Geometry.Fisher)) _fisher = window.CreateFlatBuffer(ScalarType.Float64);
        if (_options.Geometries.HasFlag(Geometry.Adaptive)) _theta = window.CreateFlatBuffer();
        int k = window.K;
        _hostSums = new double[_geometries.Length * k * k + 2];
        _scratch = new double[k * (k - 1)];
    }

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        CurrentWindow = window;
        var buffer = window.Buffer;
        _windows++;
        _theta?.LoadParameters();
        double decay = _options.FisherDecay;
        double biasCorrection = 1.0 / (1.0 - Math.Pow(decay, _windows));

        Array.Clear(_hostSums);
        _segmentsPending = buffer.Segments.Count;
        for (int s = 0; s < buffer.Segments.Count; s++)
        {
            var g = buffer.Segments[s].Gradients.to(ScalarType.Float64);    // [K, P]
            var parts = new List<Tensor>(_geometries.Length + 1);
            foreach (var geometry in _geometries)
            {
                var h = geometry switch
                {
                    Geometry.Euclidean => g,
                    Geometry.Fisher => g * FisherWhitening(g, _fisher!.Segments[s], decay, biasCorrection),
                    Geometry.Adaptive => g * (_theta!.Segments[s].to(ScalarType.Float64).abs() + _options.AdaptiveEta),
                    _ => throw new InvalidOperationException(geometry.ToString()),
                };
                parts.Add(h.mm(h.t()).flatten());
            }

            // GSNR per coordinate over the K gradients; coordinates with zero variance are left out.
            var mean = g.mean([0]);
            var variance = g.var(0, unbiased: true, keepdim: false);
            var used = variance > 0;
            var ratio = (mean.square() / (variance + _options.GsnrEpsilon)).masked_fill(used.logical_not(), 0);
            parts.Add(torch.stack([ratio.sum(), used.sum().to(ScalarType.Float64)]));

            window.Fetch(torch.cat(parts.ToArray(), 0), Accumulate);
        }
    }

    private static Tensor FisherWhitening(Tensor g, Tensor fisher, double decay, double biasCorrection)
    {
        // F <- decay F + (1 - decay) mean_i g_i^2, then D = 1/sqrt(F / (1 - decay^w)) where F > 0, 0 elsewhere.
        fisher.mul_(decay).add_(g.square().mean([0]), alpha: 1 - decay);
        var d = (fisher * biasCorrection).rsqrt();
        return d.masked_fill_(fisher <= 0, 0);
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

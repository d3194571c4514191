using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Probes;

/// <summary>
/// How far the parameters moved while a passive window was captured:
/// <c>||theta_last - theta_first|| / ||theta_first||</c>, with theta read when the first and the last
/// gradient of the window were captured (before their optimizer steps). One copy of the parameters is kept (theta at
/// the first step). On a CPU with float32 parameters both sums come from one managed pass over that copy and the step
/// family's copy of theta at the close (its adaptive geometry's), deferred to the session's worker; without the
/// adaptive geometry, over the parameters themselves at the close. Elsewhere the last theta is copied too and the sums
/// are tensor reductions. With <see cref="WindowStorage.Sketch"/> no copy is kept: both norms are estimated from
/// CountSketches of theta (d numbers each; relative standard deviation of a squared norm at most sqrt(2 / d), 0.6% at
/// the default d).
/// </summary>
internal sealed class ParameterDriftProbe : TrainingProbe
{
    private GradientWindow? _window;
    private FlatParameterBuffer? _first;
    private FlatParameterBuffer? _last;
    private bool _managed;
    private double _moved;
    private double _norm;
    private int _pending;
    private Tensor[]? _firstSketch;   // with sketch storage: per segment, the sketch of theta at the first step
    private Tensor[]? _lastSketch;

    public override string Name => "drift";

    public override void OnSessionStart(ProbeSession session)
    {
        _window = session.Window;
        if (_window.Sketch is { } sketch)
        {
            Tensor[] Sketches() => _window.Segments.Select(s => torch.zeros(sketch.Dimension, ScalarType.Float32, s.Device).DetachFromDisposeScope()).ToArray();
            _firstSketch = Sketches();
            _lastSketch = Sketches();
            return;
        }

        _stepProbe = session.RunningProbes.OfType<GradientStatisticsProbe>().FirstOrDefault();

        _first = session.Window.CreateFlatBuffer();
        _managed = _first.Segments.All(s => s.device_type == DeviceType.CPU && s.dtype == ScalarType.Float32);
        if (!_managed) _last = session.Window.CreateFlatBuffer();
    }

    public override void OnStep(ProbeStepContext step)
    {
        if (step.WindowSlot != 0) return;
        if (_firstSketch is not null) _window!.Sketch!.SketchParameters(_firstSketch);
        else _first!.LoadParameters();
    }

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        if (_firstSketch is not null)
        {
            _window!.Sketch!.SketchParameters(_lastSketch!);
            FetchSums(window, _firstSketch, _lastSketch!);
            return;
        }

        // The step family copies theta at the close for its adaptive geometry: read that copy on the worker, after the
        // probes, rather than the parameters now (which keeps the managed sums off the training thread).
        if (_managed && _stepProbe?.ThetaAtClose is { } atClose)
        {
            window.Defer(() =>
            {
                double moved = 0, norm = 0;
                for (int s = 0; s < _first!.Segments.Length; s++)
                {
                    var (m, n) = Sums(_first.Segments[s], atClose.Segments[s]);
                    moved += m;
                    norm += n;
                }

                Report(window, moved, norm);
            });
            return;
        }

        if (_managed && ManagedSums() is var (managedMoved, managedNorm))
        {
            Report(window, managedMoved, managedNorm);
            return;
        }

        _last ??= _window!.CreateFlatBuffer();
        _last.LoadParameters();
        FetchSums(window, _first!.Segments, _last.Segments);
    }

    /// <summary>
    /// Queues <c>sum (last - first)^2</c> and <c>sum first^2</c> of each segment (one fetch per segment: segments may live
    /// on different devices) and reports the drift when the last one is on the host.
    /// </summary>
    private void FetchSums(ProbeWindowContext window, Tensor[] first, Tensor[] last)
    {
        _moved = 0;
        _norm = 0;
        _pending = first.Length;
        for (int s = 0; s < first.Length; s++)
        {
            var moved = last[s].sub(first[s]);
            window.Fetch(torch.stack([moved.mul_(moved).sum(ScalarType.Float64), first[s].mul(first[s]).sum(ScalarType.Float64)]), host =>
            {
                _moved += host[0];
                _norm += host[1];
                if (--_pending == 0) Report(window, _moved, _norm);
            });
        }
    }

    private static void Report(ProbeWindowContext window, double moved, double norm) =>
        window.Report(Indicators.ParameterDrift, norm > 0 ? Math.Sqrt(moved / norm) : double.NaN);

    /// <summary>The two sums of a copy of theta at the first step and theta now, CPU float32, read in place.</summary>
    private static (double Moved, double Norm) Sums(Tensor first, Tensor now) =>
        Statistics.VectorSums.DriftSums(
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(first.bytes),
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(now.bytes));

    private GradientStatisticsProbe? _stepProbe;

    /// <summary>
    /// The two sums over every watched parameter, read in place: the copy of theta at the first step and the parameters
    /// now. Null when a parameter is not a contiguous CPU float32 tensor (then the tensor path runs).
    /// </summary>
    private (double Moved, double Norm)? ManagedSums()
    {
        double moved = 0, norm = 0;
        foreach (var parameter in _window!.Parameters)
        {
            var current = parameter.Parameter;
            if (current.device_type != DeviceType.CPU || current.dtype != ScalarType.Float32 || !current.is_contiguous()) return null;
            using var first = _first!.Segments[parameter.Segment].narrow(0, parameter.Offset, parameter.Count);
            var (m, n) = Sums(first, current);
            moved += m;
            norm += n;
        }

        return (moved, norm);
    }

    public override void OnSessionEnd()
    {
        _first?.Dispose();
        _last?.Dispose();
        foreach (var t in (_firstSketch ?? []).Concat(_lastSketch ?? [])) t.Dispose();
    }
}

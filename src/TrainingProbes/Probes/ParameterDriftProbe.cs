using TorchSharp;
using TrainingProbes.Capture;
using static TorchSharp.torch;

namespace TrainingProbes.Probes;

/// <summary>
/// How far the parameters moved while a passive window was captured:
/// <c>||theta_last - theta_first|| / ||theta_first||</c>, with theta read when the first and the last
/// gradient of the window were captured (before their optimizer steps).
/// </summary>
internal sealed class ParameterDriftProbe : TrainingProbe
{
    private FlatParameterBuffer? _first;
    private FlatParameterBuffer? _last;
    private double _moved;
    private double _norm;
    private int _pending;

    public override string Name => "drift";

    public override void OnSessionStart(ProbeSession session)
    {
        _first = session.Window.CreateFlatBuffer();
        _last = session.Window.CreateFlatBuffer();
    }

    public override void OnStep(ProbeStepContext step)
    {
        if (step.WindowSlot == 0) _first!.LoadParameters();
    }

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        _last!.LoadParameters();
        _moved = 0;
        _norm = 0;
        _pending = _first!.Segments.Length;
        for (int s = 0; s < _first.Segments.Length; s++)
        {
            var first = _first.Segments[s];
            var sums = torch.stack([
                (_last.Segments[s] - first).square().sum(ScalarType.Float64),
                first.square().sum(ScalarType.Float64)]);
            window.Fetch(sums, host =>
            {
                _moved += host[0];
                _norm += host[1];
                if (--_pending == 0)
                    window.Report(Indicators.ParameterDrift, _norm > 0 ? Math.Sqrt(_moved / _norm) : double.NaN);
            });
        }
    }

    public override void OnSessionEnd()
    {
        _first?.Dispose();
        _last?.Dispose();
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Probes;

/// <summary>
/// How far the parameters moved since the previous window: <c>||theta_now - theta_prev|| / ||theta_prev||</c>, from the
/// session's copy of the previous window's parameters (no copy of its own). On a CPU in float32 it is summed in place in
/// one pass; elsewhere on the device, read with the window's other values.
/// </summary>
internal sealed class ParameterDriftProbe : TrainingProbe
{
    private Session.SessionWindows? _windows;

    public override string Name => "drift";

    public override void OnSessionStart(ProbeSession session) => _windows = session.Windows;

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        var windows = _windows!;
        if (!windows.ThetaLoaded) return;   // the first window has no previous one
        double moved = 0, norm = 0;
        var pending = new List<Tensor>();
        for (int q = 0; q < windows.Layout.Parameters.Count; q++)
        {
            var current = windows.Layout.Parameters[q].Parameter;
            var previous = windows.Theta.View(q);
            if (current.device_type == DeviceType.CPU && current.dtype == ScalarType.Float32 && current.is_contiguous())
            {
                var (m, n) = Statistics.VectorSums.DriftSums(
                    System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(previous.bytes),
                    System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(current.bytes));
                moved += m;
                norm += n;
                continue;
            }

            var difference = current.detach().sub(previous).to(ScalarType.Float64);
            var before = previous.to(ScalarType.Float64);
            pending.Add(torch.stack([difference.mul(difference).sum(), before.mul(before).sum()]));
        }

        if (pending.Count == 0)
        {
            Report(window, moved, norm);
            return;
        }

        window.Fetch(torch.stack(pending).sum([0]), host => Report(window, moved + host[0], norm + host[1]));
    }

    private static void Report(ProbeWindowContext window, double moved, double norm) =>
        window.Report(Indicators.ParameterDrift, norm > 0 ? Math.Sqrt(moved / norm) : double.NaN);
}

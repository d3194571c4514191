using TorchSharp;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Probes;

/// <summary>
/// Mean of the losses passed to the step call over the window's captured steps. The losses are copied into a
/// small device buffer (no host synchronization per step) and read with the window's other values.
/// </summary>
internal sealed class LossProbe : TrainingProbe
{
    private Tensor? _losses;
    private Tensor[] _slots = [];
    private int _filled;

    public override string Name => "loss";

    public override void OnStep(ProbeStepContext step)
    {
        if (step.WindowSlot < 0 || step.Loss is null) return;
        if (step.WindowSlot == 0) _filled = 0;
        if (_losses is null || _losses.device.type != step.Loss.device.type || _losses.device.index != step.Loss.device.index)
            Allocate(step.Session.Windows.Length, step.Loss.device);
        if (_filled == 0) _losses!.zero_();
        _slots[step.WindowSlot].copy_(step.Loss.detach().reshape([]));
        _filled++;
    }

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        if (_filled == 0 || _losses is null) return;
        using var scalars = new ScalarScope();   // an implicit scalar can be finalized during the native call (see Scalars)
        window.Report(Indicators.Loss, _losses.sum().div_(scalars[_filled]));
        _filled = 0;
    }

    private void Allocate(int k, Device device)
    {
        Release();
        _losses = torch.zeros(k, dtype: ScalarType.Float64, device: device).DetachFromDisposeScope();
        _slots = Enumerable.Range(0, k).Select(i => _losses[i].DetachFromDisposeScope()).ToArray();
    }

    private void Release()
    {
        foreach (var slot in _slots) slot.Dispose();
        _losses?.Dispose();
        _slots = [];
        _losses = null;
    }

    public override void OnSessionEnd() => Release();
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// Saves what extra forward passes on a training model would change, and puts it back on dispose: the model's
/// buffers (batch norm running statistics), its training mode, and the CPU random state (dropout draws), so that
/// training after a probe's own passes continues exactly as without them. The parameters are not touched here.
/// </summary>
internal sealed class ModelStateGuard : IDisposable
{
    private readonly nn.Module _model;
    private readonly bool _training;
    private readonly Tensor _randomState;
    private readonly List<(Tensor Buffer, Tensor Copy)> _buffers;

    public ModelStateGuard(nn.Module model)
    {
        _model = model;
        _training = model.training;
        using (var live = torch.random.get_rng_state())
            _randomState = live.clone();   // a copy: TorchSharp's state tensor may alias the generator
        _buffers = model.buffers().Select(b => (b, b.detach().clone())).ToList();
    }

    public void Dispose()
    {
        using (torch.no_grad())
            foreach (var (buffer, copy) in _buffers)
            {
                buffer.copy_(copy);
                copy.Dispose();
            }

        torch.random.set_rng_state(_randomState);
        _randomState.Dispose();
        _model.train(_training);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// Saves what extra forward passes on a training model would change, and puts it back on dispose: the model's
/// buffers (batch norm running statistics), its training mode, and the CPU random state (dropout draws), so that
/// training after a probe's own passes continues exactly as without them. The parameters are not touched here.
/// </summary>
/// <remarks>
/// TorchSharp's <c>torch.random.get_rng_state()</c> and <c>set_rng_state()</c> call into the generator through a
/// temporary <c>Generator.Default</c> wrapper that nothing keeps alive: a garbage collection during the native call
/// can run its finalizer, which frees the generator object while <c>at::Generator::set_state</c> reads it (a SIGSEGV
/// seen under the GC-pressure fault scenario). The guard holds one wrapper for its lifetime and disposes it last.
/// </remarks>
internal sealed class ModelStateGuard : IDisposable
{
    private readonly nn.Module _model;
    private readonly bool _training;
    private readonly Generator _generator;
    private readonly Tensor _randomState;
    private readonly List<(Tensor Buffer, Tensor Copy)> _buffers;

    public ModelStateGuard(nn.Module model)
    {
        _model = model;
        _training = model.training;
        _generator = Generator.Default;   // a wrapper of the default CPU generator, held across the native calls
        using (var live = _generator.get_state())
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

        _generator.set_state(_randomState);
        _randomState.Dispose();
        _generator.Dispose();   // after the call: the wrapper stays alive through it
        _model.train(_training);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>
/// A CPU copy of a module's state (parameters and persistent buffers, by state_dict name), for keeping the best weights
/// seen so far without a second copy of the model on the accelerator.
/// </summary>
/// <remarks>
/// <see cref="CaptureInto"/> reuses the held CPU tensors when names, shapes and dtypes are unchanged, so refreshing a
/// snapshot allocates nothing. The copies belong to the snapshot (not to an open dispose scope) until
/// <see cref="Dispose"/>. Not thread-safe, like the module itself.
/// </remarks>
public sealed class WeightSnapshot : IDisposable
{
    private string[] _names = [];
    private Tensor[] _tensors = [];
    private bool _disposed;

    private WeightSnapshot() { }

    /// <summary>The training step at which the values were captured, as given to the last capture.</summary>
    public long Step { get; private set; }

    /// <summary>The value (a validation loss or metric, for example) given to the last capture.</summary>
    public double Value { get; private set; }

    /// <summary>The state_dict names of the captured tensors, in the module's state_dict order.</summary>
    public IReadOnlyList<string> Names => Array.AsReadOnly(_names);

    /// <summary>The CPU copies, in the order of <see cref="Names"/>; owned by the snapshot.</summary>
    internal IReadOnlyList<Tensor> Tensors
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _tensors;
        }
    }

    /// <summary>Copies <paramref name="model"/>'s current state into a new CPU snapshot, which the caller disposes.</summary>
    /// <param name="model">The module whose state_dict is copied; it is not modified.</param>
    /// <param name="step">The training step to record with the values.</param>
    /// <param name="value">The value to record with them (for example the validation loss that made them the best).</param>
    public static WeightSnapshot Capture(nn.Module model, long step, double value)
    {
        ArgumentNullException.ThrowIfNull(model);
        var snapshot = new WeightSnapshot();
        try
        {
            snapshot.CaptureInto(model, step, value);
            return snapshot;
        }
        catch
        {
            snapshot.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Copies <paramref name="model"/>'s current state into this snapshot, into the held tensors when names, shapes
    /// and dtypes are unchanged (no allocation), into new ones otherwise.
    /// </summary>
    /// <param name="model">The module whose state_dict is copied; it is not modified.</param>
    /// <param name="step">The training step to record with the values.</param>
    /// <param name="value">The value to record with them.</param>
    public void CaptureInto(nn.Module model, long step, double value)
    {
        ArgumentNullException.ThrowIfNull(model);
        ObjectDisposedException.ThrowIf(_disposed, this);

        // The module's own tensors (TorchSharp returns its Parameter and buffer objects): never dispose them.
        var state = model.state_dict();
        using var noGrad = torch.no_grad();

        if (Fits(state))
        {
            int i = 0;
            foreach (var (_, tensor) in state)
                _tensors[i++].copy_(tensor);   // copy_ returns the same wrapper: no new tensor
        }
        else
        {
            var copies = new List<Tensor>(state.Count);
            try
            {
                // Owned by the snapshot, not by a dispose scope the caller may have open around this call.
                foreach (var (_, tensor) in state)
                {
                    copies.Add(torch.empty(tensor.shape, dtype: tensor.dtype, device: torch.CPU).DetachFromDisposeScope());
                    copies[^1].copy_(tensor);
                }
            }
            catch
            {
                foreach (var copy in copies) copy.Dispose();
                throw;
            }
            foreach (var old in _tensors) old.Dispose();
            (_tensors, _names) = ([.. copies], [.. state.Keys]);
        }

        Step = step;
        Value = value;
    }

    /// <summary>
    /// Writes the captured values back into <paramref name="model"/>'s own tensors, in place (the optimizer's references
    /// stay valid), only if its state_dict has exactly the captured names and shapes.
    /// </summary>
    /// <param name="model">The module to restore.</param>
    /// <exception cref="InvalidOperationException">The module does not match the snapshot; the message names the mismatches.</exception>
    public void RestoreTo(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        ObjectDisposedException.ThrowIf(_disposed, this);
        ModuleState.CopyInto(model, AsDictionary(), $"the snapshot of step {Step}", "the snapshot");
    }

    /// <summary>The held copies by name (the snapshot's own tensors: not to be disposed by the caller).</summary>
    internal Dictionary<string, Tensor> AsDictionary()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _names.Zip(_tensors).ToDictionary(p => p.First, p => p.Second, StringComparer.Ordinal);
    }

    /// <summary>Frees the CPU copies. Later calls to the snapshot's methods throw <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var tensor in _tensors) tensor.Dispose();
        _tensors = [];
    }

    private bool Fits(Dictionary<string, Tensor> state) =>
        state.Count == _names.Length && _names.Length > 0 && state.Select((kv, i) =>
            kv.Key == _names[i] && _tensors[i].dtype == kv.Value.dtype && _tensors[i].shape.AsSpan().SequenceEqual(kv.Value.shape)).All(x => x);
}

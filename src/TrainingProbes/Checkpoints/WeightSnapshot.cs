using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>
/// A copy of a module's state (its parameters and persistent buffers, such as batch-norm running statistics, by
/// their state_dict names) kept in CPU memory, whatever device the module trains on: for keeping the best weights
/// seen so far without holding a second copy of the model on the accelerator.
/// </summary>
/// <remarks>
/// <para>
/// A typical use keeps one snapshot and refreshes it on each improvement: <see cref="CaptureInto"/> reuses the CPU
/// tensors of the previous capture when the names, shapes and dtypes are unchanged, so after the first capture an
/// improvement allocates nothing. <see cref="RestoreTo"/> writes the values back into the module's own tensors in
/// place; <see cref="CheckpointFile.Save(WeightSnapshot, string, CheckpointFormat)"/> writes them to a file.
/// </para>
/// <para>
/// The copies are owned by the snapshot, not by any dispose scope that is open when it captures, and are freed by
/// <see cref="Dispose"/>. A capture from an accelerator waits for the device copy to finish. Not thread-safe: use a
/// snapshot from one thread at a time, like the module itself.
/// </para>
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

    /// <summary>Copies the current parameters and buffers of <paramref name="model"/> into a new snapshot on the CPU.</summary>
    /// <param name="model">The module whose state_dict is copied; it is not modified.</param>
    /// <param name="step">The training step to record with the values.</param>
    /// <param name="value">The value to record with them (for example the validation loss that made them the best).</param>
    /// <returns>A snapshot that the caller disposes.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
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
    /// Copies the current parameters and buffers of <paramref name="model"/> into this snapshot, replacing what it
    /// held. When the module's state_dict has the same names, shapes and dtypes as the held copies, the values are
    /// copied into the existing CPU tensors (no allocation); otherwise the snapshot reallocates its copies.
    /// </summary>
    /// <param name="model">The module whose state_dict is copied; it is not modified.</param>
    /// <param name="step">The training step to record with the values.</param>
    /// <param name="value">The value to record with them.</param>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The snapshot was disposed.</exception>
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
            var names = new string[state.Count];
            var copies = new List<Tensor>(state.Count);
            try
            {
                foreach (var (name, tensor) in state)
                {
                    // Owned by the snapshot, not by a dispose scope the caller may have open around this call.
                    var copy = torch.empty(tensor.shape, dtype: tensor.dtype, device: torch.CPU).DetachFromDisposeScope();
                    copies.Add(copy);
                    copy.copy_(tensor);
                    names[copies.Count - 1] = name;
                }
            }
            catch
            {
                foreach (var copy in copies) copy.Dispose();
                throw;
            }

            foreach (var old in _tensors) old.Dispose();
            _tensors = [.. copies];
            _names = names;
        }

        Step = step;
        Value = value;
    }

    /// <summary>
    /// Writes the captured values back into <paramref name="model"/>'s own parameters and buffers, in place (under
    /// no_grad), each onto its tensor's own device and dtype; parameters keep their <c>requires_grad</c> and the
    /// optimizer's references stay valid. Nothing is written unless the module's state_dict has exactly the captured
    /// names with the captured shapes.
    /// </summary>
    /// <param name="model">The module to restore.</param>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The snapshot was disposed.</exception>
    /// <exception cref="InvalidOperationException">
    /// The module's state does not match the snapshot; the message names the missing, extra and mismatched entries.
    /// </exception>
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
        var dictionary = new Dictionary<string, Tensor>(_names.Length, StringComparer.Ordinal);
        for (int i = 0; i < _names.Length; i++) dictionary.Add(_names[i], _tensors[i]);
        return dictionary;
    }

    /// <summary>Frees the CPU copies. Later calls to the snapshot's methods throw <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var tensor in _tensors) tensor.Dispose();
        _tensors = [];
    }

    private bool Fits(Dictionary<string, Tensor> state)
    {
        if (state.Count != _names.Length || _names.Length == 0) return false;
        int i = 0;
        foreach (var (name, tensor) in state)
        {
            var held = _tensors[i];
            if (name != _names[i] || held.dtype != tensor.dtype || !held.shape.AsSpan().SequenceEqual(tensor.shape))
                return false;
            i++;
        }
        return true;
    }
}

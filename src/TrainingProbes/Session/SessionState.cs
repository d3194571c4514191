using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Session;

/// <summary>
/// A part of the session whose state carries from window to window (the schedule and its ledger, the rules, the Fisher
/// averages, the smoothers, the fixed-point probe's counters and warm start), as Lightning's callbacks have
/// <c>state_dict</c> / <c>load_state_dict</c> under a state key. Restoring is two-phase so that it is all-or-nothing:
/// <see cref="IStatefulPart.Prepare"/> reads and checks everything and returns the change, which the session applies only when
/// every part has prepared.
/// </summary>
internal static class StateJson
{
    /// <summary>JSON for saved values: NaN and infinities (an undefined smoothed value, say) are written by name.</summary>
    public static readonly JsonSerializerOptions Options = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
}

internal interface IStatefulPart
{
    /// <summary>The part's key; its entries are stored under <c>key/</c>.</summary>
    string StateKey { get; }

    /// <summary>Writes the part's state.</summary>
    void Save(SessionStateWriter state);

    /// <summary>Reads and checks the part's state; returns what applies it. Throws <see cref="InvalidDataException"/> when it does not fit.</summary>
    Action Prepare(SessionStateReader state);
}

/// <summary>Collects the parts' entries: JSON values and CPU copies of tensors.</summary>
internal sealed class SessionStateWriter(Dictionary<string, string> values, Dictionary<string, Tensor> tensors, string prefix = "")
{
    public SessionStateWriter() : this([], [])
    {
    }

    public IReadOnlyDictionary<string, string> Values => values;

    public IReadOnlyDictionary<string, Tensor> Tensors => tensors;

    /// <summary>The writer a part writes through: its entries go under <paramref name="key"/>.</summary>
    public SessionStateWriter For(string key) => new(values, tensors, prefix + key + "/");

    /// <summary>Stores a value as JSON.</summary>
    public void Set<T>(string name, T value) => values[prefix + name] = JsonSerializer.Serialize(value, StateJson.Options);

    /// <summary>Stores a copy of a tensor (on the CPU, contiguous; the caller's tensor is untouched and the copy outlives any dispose scope).</summary>
    public void SetTensor(string name, Tensor tensor)
    {
        var copy = tensor.detach().cpu().contiguous().clone();
        copy.DetachFromDisposeScope();
        tensors[prefix + name] = copy;
    }
}

/// <summary>Reads the entries a <see cref="SessionStateWriter"/> wrote, for one part.</summary>
internal sealed class SessionStateReader(IReadOnlyDictionary<string, string> values, IReadOnlyDictionary<string, Tensor> tensors, string prefix = "")
{
    /// <summary>The reader of a part's entries.</summary>
    public SessionStateReader For(string key) => new(values, tensors, prefix + key + "/");

    /// <summary>Whether the state has <paramref name="name"/> (a value or a tensor).</summary>
    public bool Has(string name) => values.ContainsKey(prefix + name) || tensors.ContainsKey(prefix + name);

    /// <summary>A value, or an <see cref="InvalidDataException"/> naming what is missing or unreadable.</summary>
    public T Get<T>(string name)
    {
        if (!values.TryGetValue(prefix + name, out var json))
            throw new InvalidDataException($"The saved probe state has no entry '{prefix + name}': it was saved by a session with other options or probes.");
        try
        {
            return JsonSerializer.Deserialize<T>(json, StateJson.Options) ?? throw new InvalidDataException($"The saved entry '{prefix + name}' is null.");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"The saved entry '{prefix + name}' is not a {typeof(T).Name}: {ex.Message}", ex);
        }
    }

    /// <summary>A tensor with the given shape and dtype, or an <see cref="InvalidDataException"/> saying what differs.</summary>
    public Tensor GetTensor(string name, long[] shape, ScalarType dtype)
    {
        if (!tensors.TryGetValue(prefix + name, out var tensor))
            throw new InvalidDataException($"The saved probe state has no tensor '{prefix + name}': it was saved by a session with other options or probes.");
        if (!tensor.shape.SequenceEqual(shape) || tensor.dtype != dtype)
            throw new InvalidDataException(
                $"The saved tensor '{prefix + name}' is {tensor.dtype} [{string.Join(", ", tensor.shape)}], but this session needs {dtype} [{string.Join(", ", shape)}]: it was saved for another model or other options.");
        return tensor;
    }
}

using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes;

/// <summary>JSON options of the saved state.</summary>
internal static class StateJson
{
    /// <summary>JSON for saved values: NaN and infinities (an undefined smoothed value, say) are written by name.</summary>
    public static readonly JsonSerializerOptions Options = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
}

/// <summary>
/// A part of a session whose state carries from window to window: the session's own (the schedule and its ledger, the
/// rules, the Fisher averages, the smoothers) and any probe that implements it, built-in or the user's, as Lightning's callbacks have
/// <c>state_dict</c> / <c>load_state_dict</c> under a state key. Restoring is two-phase so that it is all-or-nothing:
/// <see cref="IStatefulPart.Prepare"/> reads and checks everything and returns the change, which the session applies only when
/// every part has prepared.
/// </summary>
public interface IStatefulPart
{
    /// <summary>The part's key; its entries are stored under <c>key/</c>.</summary>
    string StateKey { get; }

    /// <summary>Writes the part's state.</summary>
    void Save(SessionStateWriter state);

    /// <summary>Reads and checks the part's state; returns what applies it. Throws <see cref="InvalidDataException"/> when it does not fit.</summary>
    Action Prepare(SessionStateReader state);
}

/// <summary>
/// What <see cref="IStatefulPart.Save"/> writes to: values (stored as JSON) and tensors (stored as CPU copies) by name,
/// under the part's key. <see cref="ProbeSession.SaveState"/> writes them all to one safetensors file.
/// </summary>
public sealed class SessionStateWriter
{
    private readonly Dictionary<string, string> _values;
    private readonly Dictionary<string, Tensor> _tensors;
    private readonly string _prefix;

    internal SessionStateWriter() : this([], [], "")
    {
    }

    private SessionStateWriter(Dictionary<string, string> values, Dictionary<string, Tensor> tensors, string prefix) =>
        (_values, _tensors, _prefix) = (values, tensors, prefix);

    internal IReadOnlyDictionary<string, string> Values => _values;

    internal IReadOnlyDictionary<string, Tensor> Tensors => _tensors;

    /// <summary>The writer a part writes through: its entries go under <paramref name="key"/>.</summary>
    /// <param name="key">A name unique among the part's entries.</param>
    public SessionStateWriter For(string key) => new(_values, _tensors, _prefix + key + "/");

    /// <summary>Stores a value as JSON.</summary>
    /// <typeparam name="T">A type System.Text.Json writes and reads back.</typeparam>
    /// <param name="name">The entry's name within the part.</param>
    /// <param name="value">The value.</param>
    public void Set<T>(string name, T value) => _values[_prefix + name] = JsonSerializer.Serialize(value, StateJson.Options);

    /// <summary>Stores a copy of a tensor (on the CPU, contiguous; the caller's tensor is untouched and the copy outlives any dispose scope).</summary>
    /// <param name="name">The entry's name within the part.</param>
    /// <param name="tensor">The tensor; it is copied, not kept.</param>
    public void SetTensor(string name, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var copy = tensor.detach().cpu().contiguous().clone();
        copy.DetachFromDisposeScope();
        _tensors[_prefix + name] = copy;
    }
}

/// <summary>What <see cref="IStatefulPart.Prepare"/> reads: the entries a <see cref="SessionStateWriter"/> wrote for the part.</summary>
public sealed class SessionStateReader
{
    private readonly IReadOnlyDictionary<string, string> _values;
    private readonly IReadOnlyDictionary<string, Tensor> _tensors;
    private readonly string _prefix;

    internal SessionStateReader(IReadOnlyDictionary<string, string> values, IReadOnlyDictionary<string, Tensor> tensors, string prefix = "") =>
        (_values, _tensors, _prefix) = (values, tensors, prefix);

    /// <summary>The reader of a part's entries.</summary>
    /// <param name="key">The key the writer used.</param>
    public SessionStateReader For(string key) => new(_values, _tensors, _prefix + key + "/");

    /// <summary>Whether the state has <paramref name="name"/> (a value or a tensor).</summary>
    /// <param name="name">The entry's name within the part.</param>
    public bool Has(string name) => _values.ContainsKey(_prefix + name) || _tensors.ContainsKey(_prefix + name);

    /// <summary>A value, or an <see cref="InvalidDataException"/> naming what is missing or unreadable.</summary>
    /// <typeparam name="T">The type that was stored.</typeparam>
    /// <param name="name">The entry's name within the part.</param>
    public T Get<T>(string name)
    {
        if (!_values.TryGetValue(_prefix + name, out var json))
            throw new InvalidDataException($"The saved probe state has no entry '{_prefix + name}': it was saved by a session with other options or probes.");
        try
        {
            return JsonSerializer.Deserialize<T>(json, StateJson.Options) ?? throw new InvalidDataException($"The saved entry '{_prefix + name}' is null.");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"The saved entry '{_prefix + name}' is not a {typeof(T).Name}: {ex.Message}", ex);
        }
    }

    /// <summary>A tensor with the given shape and dtype, or an <see cref="InvalidDataException"/> saying what differs.</summary>
    /// <param name="name">The entry's name within the part.</param>
    /// <param name="shape">The shape this session needs.</param>
    /// <param name="dtype">The dtype this session needs.</param>
    /// <returns>A CPU tensor owned by the reader; copy from it, do not keep it.</returns>
    public Tensor GetTensor(string name, long[] shape, ScalarType dtype)
    {
        ArgumentNullException.ThrowIfNull(shape);
        if (!_tensors.TryGetValue(_prefix + name, out var tensor))
            throw new InvalidDataException($"The saved probe state has no tensor '{_prefix + name}': it was saved by a session with other options or probes.");
        if (!tensor.shape.SequenceEqual(shape) || tensor.dtype != dtype)
            throw new InvalidDataException(
                $"The saved tensor '{_prefix + name}' is {tensor.dtype} [{string.Join(", ", tensor.shape)}], but this session needs {dtype} [{string.Join(", ", shape)}]: it was saved for another model or other options.");
        return tensor;
    }
}

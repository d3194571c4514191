using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>One watched parameter and where its values live in the flat layout of its segment.</summary>
internal sealed class CapturedParameter
{
    public required string Name { get; init; }
    public required Parameter Parameter { get; init; }
    public required int Segment { get; init; }
    public required long Offset { get; init; }
    public required long Count { get; init; }
    public required long[] Shape { get; init; }
}

/// <summary>
/// Parameters that share a device and a dtype, laid out one after the other, so that parameter-shaped state (a copy of
/// theta, the Fisher average) is one flat tensor per segment.
/// </summary>
internal sealed class WindowSegment
{
    public required Device Device { get; init; }
    public required ScalarType DType { get; init; }
    public required long Count { get; init; }
}

/// <summary>
/// The watched parameters of a model (those that require a gradient and pass <see cref="ProbeOptions.ParameterFilter"/>,
/// in <c>named_parameters()</c> order) and their flat layout by device and dtype. Every window source, the whitening and
/// the parameter copies share one layout.
/// </summary>
internal sealed class ParameterLayout
{
    /// <param name="model">The model whose parameters are watched.</param>
    /// <param name="filter">Which parameters (by name); null: all that require a gradient.</param>
    public ParameterLayout(nn.Module model, Func<string, bool>? filter)
    {
        var selected = Watchable(model, filter).ToList();
        if (selected.Count == 0)
            throw new ArgumentException(
                "No parameter to watch: the model has no parameter that requires a gradient" +
                (filter is null ? "." : " and passes ParameterFilter. Check the filter against model.named_parameters() names."),
                nameof(model));

        var segments = new List<(Device Device, ScalarType DType)>();
        var counts = new List<long>();
        var parameters = new List<CapturedParameter>();
        foreach (var (name, parameter) in selected)
        {
            var device = parameter.device;
            int index = segments.FindIndex(s => s.Device.type == device.type && s.Device.index == device.index && s.DType == parameter.dtype);
            if (index < 0)
            {
                segments.Add((device, parameter.dtype));
                counts.Add(0);
                index = segments.Count - 1;
            }

            long count = parameter.numel();
            parameters.Add(new CapturedParameter
            {
                Name = name, Parameter = parameter, Segment = index, Offset = counts[index], Count = count, Shape = parameter.shape,
            });
            counts[index] += count;
        }

        Segments = segments.Select((s, i) => new WindowSegment { Device = s.Device, DType = s.DType, Count = counts[i] }).ToArray();
        Parameters = parameters;
    }

    public IReadOnlyList<WindowSegment> Segments { get; }

    public IReadOnlyList<CapturedParameter> Parameters { get; }

    /// <summary>The watched parameters' names, in order.</summary>
    public IReadOnlyList<string> Names => _names ??= [.. Parameters.Select(p => p.Name)];

    /// <summary>The position of a watched parameter in <see cref="Parameters"/>, by name.</summary>
    public bool TryGetIndex(string name, out int index) =>
        (_index ??= Parameters.Select((p, i) => (p.Name, i)).ToDictionary(t => t.Name, t => t.i, StringComparer.Ordinal)).TryGetValue(name, out index);

    private string[]? _names;
    private Dictionary<string, int>? _index;

    public long ParameterCount => Segments.Sum(s => s.Count);

    /// <summary>The model's parameters a window watches: those that require a gradient and pass the filter.</summary>
    public static IEnumerable<(string Name, Parameter Parameter)> Watchable(nn.Module model, Func<string, bool>? filter) =>
        model.named_parameters().Where(p => p.parameter.requires_grad && (filter is null || Passes(filter, p.name))).Select(p => (p.name, p.parameter));

    /// <summary>The user's filter on one name; what it throws is reported with the option and the name.</summary>
    private static bool Passes(Func<string, bool> filter, string name)
    {
        try
        {
            return filter(name);
        }
        catch (Exception ex)
        {
            throw new ProbeConfigurationException(
                $"ProbeOptions.ParameterFilter threw {ex.GetType().Name} on the parameter '{name}': {ex.Message} The filter is called with each name of " +
                "model.named_parameters() and must return true to watch it; fix the filter so that it answers for every name.", ex);
        }
    }

    /// <summary>
    /// How the model's parameters differ from the watched ones, or null when they do not: a watched parameter that the
    /// model no longer holds under its name (replaced, or moved to another dtype or device by <c>model.to</c>), which
    /// makes the window's gradients meaningless (<paramref name="replaced"/> true); or a parameter that requires a
    /// gradient and is not watched (a module added after attach), which the window leaves out.
    /// </summary>
    public string? Mismatch(nn.Module model, Func<string, bool>? filter, out bool replaced)
    {
        replaced = false;
        var current = new Dictionary<string, Parameter>(StringComparer.Ordinal);
        foreach (var (name, parameter) in model.named_parameters()) current[name] = parameter;
        foreach (var watched in Parameters)
        {
            if (!current.TryGetValue(watched.Name, out var now))
            {
                replaced = true;
                return $"the watched parameter {watched.Name} is no longer in the model";
            }

            // A replaced parameter is a new object, and TorchSharp disposes the one it replaces (its handle is then invalid).
            if (!ReferenceEquals(now, watched.Parameter) || watched.Parameter.IsInvalid || now.dtype != Segments[watched.Segment].DType
                || now.device_type != Segments[watched.Segment].Device.type || now.device_index != Segments[watched.Segment].Device.index)
            {
                replaced = true;
                return $"{watched.Name} was replaced or moved after attach (now {now.dtype} on {now.device}; watched: {Segments[watched.Segment].DType} on {Segments[watched.Segment].Device})";
            }
        }

        if (current.Count == Parameters.Count) return null;   // every one of the model's parameters is watched
        var watchedNames = Parameters.Select(w => w.Name).ToHashSet(StringComparer.Ordinal);
        var added = Watchable(model, filter).Select(p => p.Name).Where(name => !watchedNames.Contains(name)).ToList();
        return added.Count == 0 ? null : $"{added.Count} parameter(s) that require a gradient are not watched (added or unfrozen after attach): {string.Join(", ", added.Take(5))}{(added.Count > 5 ? ", ..." : "")}";
    }

    /// <summary>Allocates a flat buffer per segment, with per-parameter views, for parameter-shaped state.</summary>
    /// <param name="minimum">Floating-point type the buffer is widened to when the parameters' dtype is narrower
    /// (for example float16 to float32); null keeps each segment's parameter dtype.</param>
    public FlatParameterBuffer CreateFlatBuffer(ScalarType? minimum = null) => new(this, minimum);
}

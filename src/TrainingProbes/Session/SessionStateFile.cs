using TrainingProbes.Checkpoints;

namespace TrainingProbes.Session;

/// <summary>
/// The file <see cref="ProbeSession.SaveState"/> writes: a safetensors file whose tensors are the parts' tensors and
/// whose <c>__metadata__</c> holds the parts' other values as JSON, with a format tag and the shape of what was watched.
/// </summary>
internal static class SessionStateFile
{
    private const string FormatKey = "trainingprobes.format", Format = "trainingprobes.session-state/1", ShapeKey = "trainingprobes.shape";

    public static void Save(IEnumerable<IStatefulPart> parts, string path, string shape)
    {
        var writer = new SessionStateWriter();
        try
        {
            foreach (var part in parts) part.Save(writer.For(part.StateKey));
            var metadata = new Dictionary<string, string>(writer.Values) { [FormatKey] = Format, [ShapeKey] = shape };
            CheckpointFile.SaveTensors(writer.Tensors, path, metadata);
        }
        finally
        {
            foreach (var tensor in writer.Tensors.Values) tensor.Dispose();
        }
    }

    public static void Restore(IEnumerable<IStatefulPart> parts, string path, string shape)
    {
        var (tensors, metadata) = CheckpointFile.LoadTensors(path);
        try
        {
            if (!metadata.TryGetValue(FormatKey, out var format) || format != Format)
                throw new InvalidDataException($"'{path}' is not a probe state saved by ProbeSession.SaveState (format '{format ?? "none"}', expected '{Format}').");
            if (metadata.GetValueOrDefault(ShapeKey) is var saved && saved != shape)
                throw new InvalidDataException(
                    $"'{path}' was saved by a session watching {saved}; this one watches {shape}. Restore it into the same architecture with the same ParameterFilter, WindowSize and Geometries.");
            var reader = new SessionStateReader(metadata, tensors);
            // Every part checks its state first; only then does any change.
            var commits = parts.Select(part => part.Prepare(reader.For(part.StateKey))).ToList();
            foreach (var commit in commits) commit();
        }
        finally
        {
            foreach (var tensor in tensors.Values) tensor.Dispose();
        }
    }
}

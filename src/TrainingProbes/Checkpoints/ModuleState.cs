using System.Globalization;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Checkpoints;

/// <summary>Checked, all-or-nothing copies of a state (name -> tensor) into a module's parameters and buffers.</summary>
internal static class ModuleState
{
    /// <summary>
    /// Copies <paramref name="source"/> into the module's own state_dict tensors in place, under no_grad (each value lands
    /// on its target's device and dtype; parameters keep <c>requires_grad</c>), but only if every name and shape matches.
    /// </summary>
    /// <param name="model">The module to write.</param>
    /// <param name="source">The values, by state_dict name.</param>
    /// <param name="sourceLabel">How the message names the source ("the snapshot of step 3", "'path'").</param>
    /// <param name="sourceNoun">A short name for it in the list of shape mismatches ("the snapshot", "the file").</param>
    /// <exception cref="InvalidOperationException">Names are missing or extra, or shapes differ; the message names them.</exception>
    internal static void CopyInto(nn.Module model, IReadOnlyDictionary<string, Tensor> source, string sourceLabel, string sourceNoun)
    {
        var target = model.state_dict();   // the module's own tensors (TorchSharp 0.107): never dispose them
        var missing = target.Keys.Where(k => !source.ContainsKey(k)).ToList();
        var extra = source.Keys.Where(k => !target.ContainsKey(k)).ToList();
        var mismatched = target.Where(t => source.TryGetValue(t.Key, out var v) && !t.Value.shape.AsSpan().SequenceEqual(v.shape))
            .Select(t => $"{t.Key} ({Shape(source[t.Key].shape)} in {sourceNoun}, {Shape(t.Value.shape)} in the model)").ToList();
        if (missing.Count > 0 || extra.Count > 0 || mismatched.Count > 0)
        {
            var message = new StringBuilder($"The state in {sourceLabel} does not fit the model ({model.GetType().Name}); nothing was copied.");
            if (missing.Count > 0) message.Append(CultureInfo.InvariantCulture, $" Missing from {sourceLabel}: {List(missing)}.");
            if (extra.Count > 0) message.Append(CultureInfo.InvariantCulture, $" Not in the model: {List(extra)}.");
            if (mismatched.Count > 0) message.Append(CultureInfo.InvariantCulture, $" Shape mismatch: {List(mismatched)}.");
            throw new InvalidOperationException(message.ToString());
        }

        using var noGrad = torch.no_grad();
        foreach (var (name, tensor) in target)
            tensor.copy_(source[name]);   // copy_ returns the same wrapper: nothing to dispose
    }

    private static string Shape(long[] shape) => $"[{string.Join(", ", shape)}]";

    private static string List(List<string> names) =>
        string.Join(", ", names.Take(10)) + (names.Count > 10 ? $" and {names.Count - 10} more" : "");
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// Gradients of a loss with respect to the parameters a probe captured at attach, taken only where libtorch can take
/// them. A parameter may stop requiring a gradient after attach (frozen mid-run), and a loss may come without a graph
/// (computed under <c>no_grad</c>, or detached); handing either to <c>autograd.grad</c> raises a native error that aborts
/// the whole process. Everything is checked here first, and what cannot be differentiated is either skipped (a frozen
/// parameter: no gradient) or reported by a managed exception that the session logs and counts.
/// </summary>
internal static class WatchedGradients
{
    /// <summary>
    /// The indices of the parameters that still require a gradient, in order.
    /// </summary>
    /// <param name="parameters">The parameters captured at attach.</param>
    /// <param name="probe">Names the probe in the message.</param>
    /// <exception cref="InvalidOperationException">None of them requires a gradient any more.</exception>
    public static int[] Trainable(IReadOnlyList<Tensor> parameters, string probe)
    {
        var trainable = new List<int>(parameters.Count);
        for (int i = 0; i < parameters.Count; i++)
            if (parameters[i].requires_grad) trainable.Add(i);
        if (trainable.Count == 0)
            throw new InvalidOperationException(
                $"{probe}: none of the {parameters.Count} watched parameters requires a gradient any more (all were frozen after the session started), so there is nothing to differentiate; this window is skipped.");
        return [.. trainable];
    }

    /// <summary>
    /// The gradient of <paramref name="loss"/> with respect to each parameter by <c>autograd.grad</c> (the parameters'
    /// <c>.grad</c> is left alone), without a graph: one entry per parameter, null for a parameter that no longer
    /// requires a gradient (frozen after attach) or that the loss does not use. The tensors are registered in the
    /// current dispose scope.
    /// </summary>
    /// <param name="loss">A scalar loss computed with gradients enabled.</param>
    /// <param name="parameters">The parameters captured at attach.</param>
    /// <param name="probe">Names the probe in the messages.</param>
    /// <exception cref="InvalidOperationException">The loss is not a scalar or has no graph, or no parameter requires a
    /// gradient; nothing was differentiated.</exception>
    public static Tensor?[] Of(Tensor loss, IReadOnlyList<Tensor> parameters, string probe)
    {
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(parameters);
        if (loss.IsInvalid)
            throw new InvalidOperationException($"{probe}: the loss function returned a disposed tensor.");
        if (loss.numel() != 1)
            throw new InvalidOperationException(
                $"{probe}: the loss function returned a tensor of shape [{string.Join(", ", loss.shape)}]; it must return the scalar mean loss of the batch.");
        if (!loss.requires_grad)
            throw new InvalidOperationException(
                $"{probe}: the loss does not require a gradient, so it cannot be differentiated. Was it computed under torch.no_grad(), detached, or from a model whose parameters are all frozen?");

        var trainable = Trainable(parameters, probe);
        var inputs = trainable.Select(i => parameters[i]).ToArray();
        var gradients = torch.autograd.grad([loss], inputs, retain_graph: false, create_graph: false, allow_unused: true);
        var result = new Tensor?[parameters.Count];
        for (int j = 0; j < trainable.Length; j++)
        {
            var g = gradients[j];
            result[trainable[j]] = g is null || g.IsInvalid ? null : g;
        }

        return result;
    }
}

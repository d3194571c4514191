using TorchSharp;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Curvature;

/// <summary>
/// Vector algebra over a list of tensors seen as one flat vector (one block per parameter). Reductions stay on the
/// device and return 0-dim tensors; only <see cref="ToHost"/> crosses to the host.
/// </summary>
/// <remarks>
/// Every function that returns tensors registers them in the current dispose scope, like any TorchSharp operation;
/// the in-place functions allocate nothing that outlives the call.
/// </remarks>
internal static class TensorListAlgebra
{
    /// <summary>Sum over blocks of the dot products of the flattened blocks: a 0-dim tensor on the device.</summary>
    public static Tensor Dot(IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        CheckSameLength(a, b);
        if (a.Count == 1)
        {
            return a[0].reshape(-1).dot(b[0].reshape(-1));
        }

        using var scope = torch.NewDisposeScope();
        var parts = new Tensor[a.Count];
        for (int k = 0; k < a.Count; k++)
        {
            parts[k] = a[k].reshape(-1).dot(b[k].reshape(-1));
        }

        return torch.stack(parts).sum().MoveToOuterDisposeScope();
    }

    /// <summary>Euclidean norm of the whole vector: a 0-dim tensor on the device.</summary>
    public static Tensor Norm(IReadOnlyList<Tensor> a)
    {
        using var scope = torch.NewDisposeScope();
        return Dot(a, a).sqrt().MoveToOuterDisposeScope();
    }

    /// <summary><c>y += alpha * x</c> in place, with <paramref name="alpha"/> a 0-dim tensor on the device.</summary>
    public static void Axpy(Tensor alpha, IReadOnlyList<Tensor> x, IReadOnlyList<Tensor> y)
    {
        CheckSameLength(x, y);
        for (int k = 0; k < x.Count; k++)
        {
            y[k].addcmul_(x[k], alpha, Scalars.One);
        }
    }

    /// <summary><c>y += alpha * x</c> in place, with a host scalar.</summary>
    public static void Axpy(double alpha, IReadOnlyList<Tensor> x, IReadOnlyList<Tensor> y)
    {
        CheckSameLength(x, y);
        using var scalars = new ScalarScope();   // an implicit scalar can be finalized during the native call (see Scalars)
        var a = scalars[alpha];
        for (int k = 0; k < x.Count; k++)
        {
            y[k].add_(x[k], a);
        }
    }

    /// <summary>Divides every block by the 0-dim tensor <paramref name="divisor"/>, in place.</summary>
    public static void Divide(IReadOnlyList<Tensor> x, Tensor divisor)
    {
        foreach (var t in x)
        {
            t.div_(divisor);
        }
    }

    /// <summary>Zeros shaped, typed and placed like <paramref name="like"/>.</summary>
    public static Tensor[] ZerosLike(IReadOnlyList<Tensor> like)
    {
        var result = new Tensor[like.Count];
        for (int k = 0; k < like.Count; k++)
        {
            result[k] = torch.zeros_like(like[k]);
        }

        return result;
    }

    /// <summary>
    /// Rademacher vector (independent +1/-1 entries with probability 1/2) shaped like <paramref name="like"/>, drawn
    /// from <paramref name="generator"/> on each block's device and in its dtype. The global generator is not used.
    /// </summary>
    /// <param name="like">The blocks' shapes, dtypes and devices.</param>
    /// <param name="generator">The only source of the draws.</param>
    /// <param name="drawn">When given, only the blocks marked true are drawn; the others are zeros and take nothing from
    /// the generator, so that the drawn blocks are the same whatever the others are.</param>
    public static Tensor[] Rademacher(IReadOnlyList<Tensor> like, Generator generator, IReadOnlyList<bool>? drawn = null)
    {
        var result = new Tensor[like.Count];
        for (int k = 0; k < like.Count; k++)
        {
            var p = like[k];
            result[k] = drawn is not null && !drawn[k]
                ? torch.zeros_like(p)
                : torch.randint(0, 2, p.shape, dtype: p.dtype, device: p.device, generator: generator).mul_(Scalars.Two).add_(Scalars.MinusOne, Scalars.One);
        }

        return result;
    }

    /// <summary>Standard normal vector shaped like <paramref name="like"/>, drawn from <paramref name="generator"/>.</summary>
    /// <param name="like">The blocks' shapes, dtypes and devices.</param>
    /// <param name="generator">The only source of the draws.</param>
    /// <param name="drawn">As for <see cref="Rademacher"/>: only the blocks marked true are drawn, the others are zeros.</param>
    public static Tensor[] Gaussian(IReadOnlyList<Tensor> like, Generator generator, IReadOnlyList<bool>? drawn = null)
    {
        var result = new Tensor[like.Count];
        for (int k = 0; k < like.Count; k++)
        {
            var p = like[k];
            result[k] = drawn is not null && !drawn[k]
                ? torch.zeros_like(p)
                : torch.randn(p.shape, dtype: p.dtype, device: p.device, generator: generator);
        }

        return result;
    }

    /// <summary>
    /// Copies a few 0-dim tensors to the host as doubles in one transfer (one device synchronization).
    /// </summary>
    public static double[] ToHost(params Tensor[] scalars)
    {
        using var scope = torch.NewDisposeScope();
        var stacked = torch.stack(scalars.Select(s => s.reshape(1))).cpu().to(ScalarType.Float64);
        return stacked.data<double>().ToArray();
    }

    /// <summary>Detaches the tensors from the current dispose scope (the caller takes ownership).</summary>
    public static Tensor[] DetachFromScope(IReadOnlyList<Tensor> tensors)
    {
        var result = new Tensor[tensors.Count];
        for (int k = 0; k < tensors.Count; k++)
        {
            result[k] = tensors[k].DetachFromDisposeScope();
        }

        return result;
    }

    /// <summary>Disposes every tensor of the list (null entries are skipped).</summary>
    public static void DisposeAll(IReadOnlyList<Tensor>? tensors)
    {
        if (tensors is null)
        {
            return;
        }

        foreach (var t in tensors)
        {
            t?.Dispose();
        }
    }

    private static void CheckSameLength(IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        if (a.Count != b.Count)
        {
            throw new ArgumentException($"The two vectors have {a.Count} and {b.Count} blocks.");
        }
    }
}

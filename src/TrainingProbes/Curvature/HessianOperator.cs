using TorchSharp;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Curvature;

/// <summary>
/// The symmetric linear operator <c>v -> D H D v</c> (plain <c>H v</c> without scaling), H the Hessian of a scalar
/// loss with respect to a list of parameter tensors, applied by double backward (Hessian-vector products).
/// </summary>
/// <remarks>
/// <para>
/// The constructor computes the gradient once with <c>create_graph</c> and <c>retain_graph</c>; every
/// <see cref="Apply"/> differentiates <c>sum_k &lt;g_k, D_k v_k&gt;</c> again, keeping the graph. The loss's graph
/// must still be alive: build the operator before any <c>backward()</c> on that loss that does not retain the
/// graph (libtorch reports a freed graph by a native error that may abort the process).
/// </para>
/// <para>
/// All inputs are validated before any autograd call (a native autograd error aborts the whole process instead of
/// throwing). Parameters not used by the loss give zero blocks, each a dense tensor of its own (never a stride-0
/// expanded view), so that the caller can update every returned block in place; when no gradient block depends on
/// the parameters (the loss is linear in all of them), <see cref="Apply"/> returns zeros without calling autograd.
/// Every parameter must require grad: a caller whose parameters may have been frozen since it captured them passes
/// only those that still require it.
/// </para>
/// <para>
/// Every block is on the parameters' (single) device and in their (single) floating dtype. The scaling D is taken
/// as a constant (it is detached; the operator does not differentiate through it). The operator owns the gradient
/// tensors that hold the retained graph and frees them on <see cref="Dispose"/>; it does not own the loss, the
/// parameters or the caller's scaling tensors.
/// </para>
/// </remarks>
internal sealed class HessianOperator : IDisposable
{
    private readonly Tensor[] parameters;
    private readonly Tensor[]? scaling;
    private readonly Tensor[] gradient;
    private readonly bool[] active;
    private readonly Tensor touch;
    private bool disposed;

    /// <summary>Builds the operator and computes the gradient with its graph.</summary>
    /// <param name="loss">A scalar (one element) loss that requires grad, with its graph alive.</param>
    /// <param name="parameters">The tensors to differentiate against; each requires grad.</param>
    /// <param name="scaling">Optional diagonal D, one tensor per parameter with its shape, dtype and device.</param>
    /// <exception cref="ArgumentException">An input is invalid; nothing was computed.</exception>
    public HessianOperator(Tensor loss, IReadOnlyList<Tensor> parameters, IReadOnlyList<Tensor>? scaling = null)
    {
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(parameters);
        Validate(loss, parameters, scaling);

        this.parameters = [.. parameters];
        Device = this.parameters[0].device;
        DType = this.parameters[0].dtype;
        Dimension = this.parameters.Sum(p => p.numel());

        var ownedScaling = new List<Tensor>();
        var ownedGradient = new List<Tensor>();
        Tensor? ownedTouch = null;
        try
        {
            if (scaling is not null)
            {
                foreach (var d in scaling)
                {
                    ownedScaling.Add(d.detach().DetachFromDisposeScope());
                }
            }

            using (var scope = torch.NewDisposeScope())
            using (torch.enable_grad())
            {
                // A zero-valued term that reaches every parameter: with it, autograd returns a defined (zero) block for
                // parameters the loss does not use instead of an undefined tensor (whose TorchSharp wrapper stays
                // counted as live after Dispose).
                Tensor? t = null;
                foreach (var p in this.parameters)
                {
                    var term = p.sum().mul(Scalars.Zero);
                    t = t is null ? term : t.add(term, Scalars.One);
                }

                ownedTouch = t!.DetachFromDisposeScope();
                var total = loss.sum().add(ownedTouch, Scalars.One);
                var grads = torch.autograd.grad([total], this.parameters, retain_graph: true, create_graph: true, allow_unused: true);
                for (int k = 0; k < grads.Count; k++)
                {
                    var g = grads[k];
                    ownedGradient.Add(g.IsInvalid ? torch.zeros_like(this.parameters[k]).DetachFromDisposeScope() : g.DetachFromDisposeScope());
                }
            }
        }
        catch
        {
            TensorListAlgebra.DisposeAll(ownedScaling);
            TensorListAlgebra.DisposeAll(ownedGradient);
            ownedTouch?.Dispose();
            throw;
        }

        this.scaling = scaling is null ? null : [.. ownedScaling];
        gradient = [.. ownedGradient];
        touch = ownedTouch;
        active = gradient.Select(g => g.requires_grad).ToArray();
        IsZero = !active.Any(a => a);
    }

    /// <summary>The parameter tensors (not owned).</summary>
    public IReadOnlyList<Tensor> Parameters => parameters;

    /// <summary>The device of every block.</summary>
    public Device Device { get; }

    /// <summary>The dtype of every block.</summary>
    public ScalarType DType { get; }

    /// <summary>Total number of scalar parameters (the dimension of the operator).</summary>
    public long Dimension { get; }

    /// <summary>True when the Hessian is identically zero (no gradient block depends on the parameters).</summary>
    public bool IsZero { get; }

    /// <summary>
    /// Which blocks the estimators draw random vectors on: those whose gradient depends on the parameters. Any other
    /// block (a parameter the loss does not use, or uses only linearly with a constant coefficient) is a zero row of the
    /// Hessian, and by symmetry a zero column: it adds nothing to the trace or to an eigenvalue of the other blocks, and
    /// drawing nothing on it keeps the other blocks' draws, so the estimates equal those of the same loss without that
    /// parameter. Null (every block) when the Hessian is zero, where a start vector still needs a draw.
    /// </summary>
    internal IReadOnlyList<bool>? DrawnBlocks => IsZero ? null : active;

    /// <summary>Number of operator applications (Hessian-vector products) done so far.</summary>
    public long Products { get; private set; }

    /// <summary>
    /// Applies the operator: returns <c>D H D v</c> (<c>H v</c> without scaling) as new tensors, one per parameter,
    /// registered in the caller's current dispose scope (if any); the caller owns them.
    /// </summary>
    /// <param name="v">One tensor per parameter, with its shape, dtype and device.</param>
    /// <exception cref="ArgumentException"><paramref name="v"/> does not match the parameters.</exception>
    public Tensor[] Apply(IReadOnlyList<Tensor> v)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ArgumentNullException.ThrowIfNull(v);
        CheckLike(v, nameof(v));
        Products++;

        using var scope = torch.NewDisposeScope();
        Tensor[] result;
        if (IsZero)
        {
            result = TensorListAlgebra.ZerosLike(parameters);
        }
        else
        {
            Tensor dot = touch;
            using (torch.enable_grad())
            {
                for (int k = 0; k < parameters.Length; k++)
                {
                    if (!active[k])
                    {
                        continue;
                    }

                    var u = scaling is null ? v[k].detach() : v[k].detach().mul(scaling[k]);
                    dot = dot.add(gradient[k].mul(u).sum(), Scalars.One);
                }
            }

            if (!dot.requires_grad)
            {
                // Defensive: never hand autograd an output without a graph (native abort).
                result = TensorListAlgebra.ZerosLike(parameters);
            }
            else
            {
                var hv = torch.autograd.grad([dot], parameters, retain_graph: true, create_graph: false, allow_unused: true);
                result = new Tensor[parameters.Length];
                for (int k = 0; k < parameters.Length; k++)
                {
                    var block = hv[k].IsInvalid ? torch.zeros_like(parameters[k]) : hv[k];
                    result[k] = Materialize(scaling is null ? block : block.mul(scaling[k]));
                }
            }
        }

        foreach (var t in result)
        {
            t.MoveToOuterDisposeScope();
        }

        return result;
    }

    /// <summary>
    /// A block the caller may write in place. Autograd may return a non-dense block: the derivative of a sum is the
    /// output gradient expanded with stride 0, which is what a parameter the loss does not use gets (from the zero
    /// term that touches every parameter). All its elements share one memory location, so an in-place update of it
    /// (the power iteration normalizes its iterate in place) fails in libtorch, or aborts the process. Such a block is
    /// copied into a dense tensor of its own (an unused parameter's block becomes a real zero tensor).
    /// </summary>
    private static Tensor Materialize(Tensor block) => block.is_contiguous() ? block : block.contiguous();

    /// <summary>Frees the gradient tensors (and with them the retained graph) and the detached scaling.</summary>
    public void Dispose()
    {
        if (disposed)
        {
            return;
        }

        disposed = true;
        TensorListAlgebra.DisposeAll(gradient);
        TensorListAlgebra.DisposeAll(scaling);
        touch.Dispose();
    }

    /// <summary>Checks that <paramref name="v"/> has one block per parameter with its shape, dtype and device.</summary>
    internal void CheckLike(IReadOnlyList<Tensor> v, string name)
    {
        if (v.Count != parameters.Length)
        {
            throw new ArgumentException($"{name} has {v.Count} tensors but there are {parameters.Length} parameters.", name);
        }

        for (int k = 0; k < v.Count; k++)
        {
            CheckBlock(v[k], parameters[k], $"{name}[{k}]", k, name);
        }
    }

    private static void Validate(Tensor loss, IReadOnlyList<Tensor> parameters, IReadOnlyList<Tensor>? scaling)
    {
        if (loss.IsInvalid)
        {
            throw new ArgumentException("The loss tensor has been disposed.", nameof(loss));
        }

        if (loss.numel() != 1)
        {
            throw new ArgumentException($"The loss must be a scalar (exactly one element), but it has shape [{string.Join(", ", loss.shape)}].", nameof(loss));
        }

        if (!loss.requires_grad)
        {
            throw new ArgumentException("The loss does not require grad: it has no graph to differentiate (computed under no_grad, or detached?).", nameof(loss));
        }

        if (!torch.is_floating_point(loss))
        {
            throw new ArgumentException($"The loss must have a floating-point dtype, not {loss.dtype}.", nameof(loss));
        }

        if (parameters.Count == 0)
        {
            throw new ArgumentException("At least one parameter is needed.", nameof(parameters));
        }

        for (int k = 0; k < parameters.Count; k++)
        {
            var p = parameters[k];
            if (p is null || p.IsInvalid)
            {
                throw new ArgumentException($"parameters[{k}] is null or disposed.", nameof(parameters));
            }

            if (!torch.is_floating_point(p))
            {
                throw new ArgumentException($"parameters[{k}] has dtype {p.dtype}; a floating-point dtype is needed.", nameof(parameters));
            }

            if (!p.requires_grad)
            {
                throw new ArgumentException($"parameters[{k}] (shape [{string.Join(", ", p.shape)}]) does not require grad.", nameof(parameters));
            }

            if (p.dtype != parameters[0].dtype)
            {
                throw new ArgumentException($"parameters[{k}] has dtype {p.dtype} but parameters[0] has {parameters[0].dtype}; all parameters must share one dtype.", nameof(parameters));
            }

            if (!SameDevice(p.device, parameters[0].device))
            {
                throw new ArgumentException($"parameters[{k}] is on {p.device} but parameters[0] is on {parameters[0].device}; all parameters must share one device.", nameof(parameters));
            }
        }

        if (!SameDevice(loss.device, parameters[0].device))
        {
            throw new ArgumentException($"The loss is on {loss.device} but the parameters are on {parameters[0].device}.", nameof(loss));
        }

        if (scaling is null)
        {
            return;
        }

        if (scaling.Count != parameters.Count)
        {
            throw new ArgumentException($"scaling has {scaling.Count} tensors but there are {parameters.Count} parameters.", nameof(scaling));
        }

        for (int k = 0; k < scaling.Count; k++)
        {
            CheckBlock(scaling[k], parameters[k], $"scaling[{k}]", k, nameof(scaling));
        }
    }

    private static void CheckBlock(Tensor? t, Tensor parameter, string label, int k, string paramName)
    {
        if (t is null || t.IsInvalid)
        {
            throw new ArgumentException($"{label} is null or disposed.", paramName);
        }

        if (!t.shape.SequenceEqual(parameter.shape))
        {
            throw new ArgumentException($"{label} has shape [{string.Join(", ", t.shape)}] but parameters[{k}] has shape [{string.Join(", ", parameter.shape)}].", paramName);
        }

        if (t.dtype != parameter.dtype)
        {
            throw new ArgumentException($"{label} has dtype {t.dtype} but parameters[{k}] has dtype {parameter.dtype}.", paramName);
        }

        if (!SameDevice(t.device, parameter.device))
        {
            throw new ArgumentException($"{label} is on device {t.device} but parameters[{k}] is on {parameter.device}.", paramName);
        }
    }

    private static bool SameDevice(Device a, Device b) => a.type == b.type && a.index == b.index;
}

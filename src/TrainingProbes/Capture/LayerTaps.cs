using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// One layer whose micro-batch gradients follow from its inputs and output gradients, as in BackPACK's batch gradients
/// (Dangel, Kunstner and Hennig 2020): a Linear or convolution layer's weight gradient is a sum over examples of
/// output-gradient times input, so the sum over one micro-batch's examples is a batched matrix product over the micro-batch
/// dimension. A tap records, on each call of the layer during the window's forward pass, the layer's input and a zero
/// tensor added to its output (a leaf, so that an in-place operation after the layer cannot change what its gradient
/// means); the backward pass to those zeros gives the output gradients. It reads nothing of the trainer's own pass.
/// </summary>
internal abstract class LayerTap : IDisposable
{
    private readonly List<(Tensor Input, Tensor Zero)> _calls = [];
    private readonly List<(Tensor Input, Tensor OutputGradient)> _factors = [];
    private nn.Module<Tensor, Tensor>.HookRemover? _hook;

    protected LayerTap(nn.Module<Tensor, Tensor> module, Parameter weight, Parameter? bias)
    {
        Module = module;
        Weight = weight;
        Bias = bias;
    }

    public nn.Module<Tensor, Tensor> Module { get; }

    public Parameter Weight { get; }

    public Parameter? Bias { get; }

    /// <summary>The layer if it can be tapped (a Linear layer, or a Conv1d/Conv2d with zero padding and one group), else null.</summary>
    public static LayerTap? For(nn.Module module) => module switch
    {
        Linear linear when linear.weight is not null => new LinearTap(linear),
        Conv1d or Conv2d when ConvolutionTap.Supports((Convolution)module) => new ConvolutionTap((Convolution)module),
        _ => null,
    };

    /// <summary>Starts recording the layer's calls.</summary>
    public void Attach() => _hook ??= Module.register_forward_hook(OnCall);

    /// <summary>Stops recording (the hook is removed: the trainer's own calls never see it).</summary>
    public void Detach()
    {
        _hook?.remove();
        _hook = null;
    }

    /// <summary>The zeros added to the outputs of this pass's calls, to differentiate the loss with respect to.</summary>
    public IEnumerable<Tensor> Zeros => _calls.Select(c => c.Zero);

    /// <summary>Calls recorded in this pass.</summary>
    public int Calls => _calls.Count;

    private Tensor OnCall(nn.Module<Tensor, Tensor> module, Tensor input, Tensor output)
    {
        var zero = torch.zeros_like(output).requires_grad_(true).DetachFromDisposeScope();
        _calls.Add((input.detach().DetachFromDisposeScope(), zero));
        return output.add(zero, Scalars.One);
    }

    /// <summary>
    /// Keeps this pass's inputs and output gradients (<paramref name="gradients"/> in the order of <see cref="Zeros"/>,
    /// null for a call the loss does not depend on), each output gradient multiplied by <paramref name="scale"/>.
    /// Returns why the layer cannot give per-example sums (an input whose first dimension is not the batch's), or null.
    /// </summary>
    public string? Keep(IReadOnlyList<Tensor?> gradients, long examples, double scale)
    {
        ReleaseFactors();
        using var scalars = new ScalarScope();
        for (int c = 0; c < _calls.Count; c++)
        {
            var (input, zero) = _calls[c];
            zero.Dispose();
            var gradient = gradients[c];
            if (input.dim() < 2 || input.shape[0] != examples)
            {
                input.Dispose();
                gradient?.Dispose();
                for (int rest = c + 1; rest < _calls.Count; rest++)
                {
                    _calls[rest].Input.Dispose();
                    _calls[rest].Zero.Dispose();
                }

                _calls.Clear();
                return $"its input of shape [{string.Join(", ", input.shape)}] does not have the batch's {examples} examples first";
            }

            if (gradient is null)
            {
                input.Dispose();
                continue;
            }

            _factors.Add((input, gradient.mul_(scalars[scale]).DetachFromDisposeScope()));
        }

        _calls.Clear();
        return null;
    }

    /// <summary>Frees what the last pass kept.</summary>
    public void Release()
    {
        ReleaseFactors();
        foreach (var (input, zero) in _calls)
        {
            input.Dispose();
            zero.Dispose();
        }

        _calls.Clear();
    }

    private void ReleaseFactors()
    {
        foreach (var (input, gradient) in _factors)
        {
            input.Dispose();
            gradient.Dispose();
        }

        _factors.Clear();
    }

    /// <summary>What the last pass kept: each call's input and output gradient.</summary>
    protected IReadOnlyList<(Tensor Input, Tensor OutputGradient)> Factors => _factors;

    /// <summary>
    /// Hands <paramref name="sink"/> the K micro-batch gradients of <paramref name="parameter"/> (the weight or the bias),
    /// block by block: columns of the parameter flattened, each block made inside its own dispose scope.
    /// </summary>
    public abstract void Read(Parameter parameter, int k, BlockSink sink);

    /// <summary>The K micro-batch gradients of <paramref name="parameter"/> as one [K, ...shape] tensor.</summary>
    public Tensor Gradients(Parameter parameter, int k)
    {
        var collect = new CollectingSink(k, parameter.numel(), parameter.dtype, parameter.device);
        Read(parameter, k, collect);
        return collect.Result.view([k, .. parameter.shape]);
    }

    /// <summary>Hands a [K, L] block to the sink: as row pointers on a CPU in float32, else as the tensor.</summary>
    protected static unsafe void Hand(BlockSink sink, Tensor block, long offset)
    {
        if (Statistics.WindowKernel.Supports(block))
        {
            int k = (int)block.shape[0];
            long columns = block.shape[1];
            float* start = Statistics.WindowKernel.Address<float>(block);
            var rows = stackalloc float*[k];
            for (int i = 0; i < k; i++) rows[i] = start + i * columns;
            sink.Managed(rows, offset, columns);
        }
        else
        {
            sink.Tensor(block, offset);
        }
    }

    public void Dispose()
    {
        Detach();
        Release();
    }

    /// <summary>Gathers the blocks of one parameter into one tensor.</summary>
    private sealed unsafe class CollectingSink(int k, long count, ScalarType dtype, Device device) : BlockSink
    {
        public Tensor Result { get; } = torch.empty([k, count], dtype, device);

        public override void Managed(float** rows, long offset, long length)
        {
            float* target = Statistics.WindowKernel.Address<float>(Result);
            for (int i = 0; i < k; i++)
                new ReadOnlySpan<float>(rows[i], checked((int)length)).CopyTo(new Span<float>(target + i * count + offset, checked((int)length)));
        }

        public override void Tensor(Tensor block, long offset) => Result.narrow(1, offset, block.shape[1]).copy_(block);
    }
}

/// <summary>
/// A Linear layer: for an input a [N, ..., in] and output gradient b [N, ..., out], micro-batch k's weight gradient is
/// <c>sum_r b_r a_r^T</c> over the rows r of its examples (and their extra dimensions), its bias gradient <c>sum_r b_r</c>.
/// </summary>
internal sealed unsafe class LinearTap(Linear linear) : LayerTap(linear, linear.weight!, linear.bias)
{
    /// <summary>Values per block (all K micro-batches): 64 Ki, so that a block stays in the L2 cache.</summary>
    private const long BlockValues = 1 << 16;

    private float[]? _scratch;   // pinned: the managed path's block

    public override void Read(Parameter parameter, int k, BlockSink sink)
    {
        long outputs = Weight.shape[0], inputs = Weight.shape[1];
        using var scope = torch.NewDisposeScope();
        var factors = Factors.Select(f => (A: f.Input.reshape(-1, inputs), B: f.OutputGradient.reshape(-1, outputs))).ToArray();
        if (ReferenceEquals(parameter, Bias))
        {
            Tensor? sum = null;
            foreach (var (_, b) in factors)
            {
                var part = b.reshape(k, -1, outputs).sum([1]);
                sum = sum is null ? part : sum.add_(part, Scalars.One);
            }

            Hand(sink, (sum ?? torch.zeros([k, outputs], parameter.dtype, parameter.device)).contiguous(), 0);
            return;
        }

        long rows = Math.Max(1, BlockValues / (k * inputs));
        if (factors.All(f => f.A.device_type == DeviceType.CPU && f.A.dtype == ScalarType.Float32 && f.B.dtype == ScalarType.Float32))
        {
            ReadManaged(factors.Select(f => (f.A.contiguous(), f.B.contiguous())).ToArray(), k, outputs, inputs, rows, sink);
            return;
        }

        for (long o = 0; o < outputs; o += rows)
        {
            using var inner = torch.NewDisposeScope();
            long length = Math.Min(rows, outputs - o);
            Tensor? block = null;
            foreach (var (a, b) in factors)
            {
                // [K, length, r] x [K, r, in]: one micro-batch per batch entry.
                var part = torch.bmm(b.reshape(k, -1, outputs).narrow(2, o, length).transpose(1, 2), a.reshape(k, -1, inputs));
                block = block is null ? part : block.add_(part, Scalars.One);
            }

            Hand(sink, (block ?? torch.zeros([k, length, inputs], parameter.dtype, parameter.device)).reshape(k, length * inputs).contiguous(), o * inputs);
        }
    }

    /// <summary>
    /// The weight's blocks made in managed code on a CPU, into a pinned scratch the kernel then reads from the cache:
    /// row o of micro-batch k is <c>sum_r b[r, o] a[r, :]</c> over the micro-batch's rows r.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private void ReadManaged((Tensor A, Tensor B)[] factors, int k, long outputs, long inputs, long rows, BlockSink sink)
    {
        long blockLength = rows * inputs;
        _scratch ??= GC.AllocateArray<float>(checked((int)(k * blockLength)), pinned: true);
        fixed (float* scratch = _scratch)
        {
            var rowPointers = stackalloc float*[k];
            for (int i = 0; i < k; i++) rowPointers[i] = scratch + i * blockLength;
            for (long o = 0; o < outputs; o += rows)
            {
                long length = Math.Min(rows, outputs - o);
                new Span<float>(scratch, checked((int)(k * blockLength))).Clear();
                foreach (var (a, b) in factors)
                {
                    float* input = Statistics.WindowKernel.Address<float>(a);
                    float* gradient = Statistics.WindowKernel.Address<float>(b);
                    long perMicro = a.shape[0] / k;
                    for (int i = 0; i < k; i++)
                        for (long r = i * perMicro; r < (i + 1) * perMicro; r++)
                        {
                            float* x = input + r * inputs;
                            for (long q = 0; q < length; q++)
                            {
                                float weight = gradient[r * outputs + o + q];
                                if (weight != 0) Axpy(weight, x, rowPointers[i] + q * inputs, inputs);
                            }
                        }
                }

                if (length == rows) sink.Managed(rowPointers, o * inputs, blockLength);
                else
                {
                    // The last block is shorter: its rows are the first length x inputs values of each micro-batch's row.
                    sink.Managed(rowPointers, o * inputs, length * inputs);
                }
            }
        }
    }

    /// <summary>y += a x over n floats.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static void Axpy(float a, float* x, float* y, long n)
    {
        var scale = System.Runtime.Intrinsics.Vector256.Create(a);
        long c = 0;
        for (; c + 8 <= n; c += 8)
            System.Runtime.Intrinsics.Vector256.Store(System.Runtime.Intrinsics.Vector256.Load(y + c) + scale * System.Runtime.Intrinsics.Vector256.Load(x + c), y + c);
        for (; c < n; c++) y[c] += a * x[c];
    }
}

/// <summary>
/// A Conv1d or Conv2d layer with zero padding and one group: micro-batch k's weight gradient is
/// <c>sum_n B_n U_n^T</c> over its examples, U_n the unfolded input patches [C kh kw, L] and B_n the output gradient
/// [O, L]; its bias gradient the sum of B_n over examples and positions.
/// </summary>
internal sealed class ConvolutionTap(Convolution convolution) : LayerTap(convolution, convolution.weight!, convolution.bias)
{
    public static bool Supports(Convolution c) =>
        c.weight is not null && c.groups == 1 && !c.transposed && c.padding_mode == PaddingModes.Zeros && c.kernel_size.Length is 1 or 2
        && Padding(c) is not null;

    /// <summary>The explicit zero padding per spatial dimension, or null for an asymmetric 'same' padding.</summary>
    private static long[]? Padding(Convolution c)
    {
        if (c.padding_type is null) return c.padding ?? new long[c.kernel_size.Length];
        if (c.padding_type == TorchSharp.Padding.Valid) return new long[c.kernel_size.Length];
        var padding = new long[c.kernel_size.Length];
        for (int i = 0; i < padding.Length; i++)
        {
            long total = c.dilation[i] * (c.kernel_size[i] - 1);
            if (total % 2 != 0) return null;
            padding[i] = total / 2;
        }

        return padding;
    }

    public override void Read(Parameter parameter, int k, BlockSink sink)
    {
        var conv = (Convolution)Module;
        long outputs = Weight.shape[0];
        using var scope = torch.NewDisposeScope();
        if (ReferenceEquals(parameter, Bias))
        {
            Tensor? sum = null;
            foreach (var (_, b) in Factors)
            {
                var part = b.reshape(k, -1, outputs, b.shape[^1] * (b.dim() == 4 ? b.shape[^2] : 1)).sum([1, 3]);
                sum = sum is null ? part : sum.add_(part, Scalars.One);
            }

            Hand(sink, (sum ?? torch.zeros([k, outputs], parameter.dtype, parameter.device)).contiguous(), 0);
            return;
        }

        long patch = Weight.numel() / outputs;
        var result = torch.zeros([k, outputs, patch], parameter.dtype, parameter.device);
        var padding = Padding(conv)!;
        bool oneDimension = conv.kernel_size.Length == 1;
        foreach (var (a, b) in Factors)
        {
            long perMicro = a.shape[0] / k;
            for (int i = 0; i < k; i++)
            {
                using var inner = torch.NewDisposeScope();
                var x = a.narrow(0, i * perMicro, perMicro);
                var unfolded = oneDimension
                    ? nn.functional.unfold(x.unsqueeze(2), (1, conv.kernel_size[0]), (1, conv.dilation[0]), (0, padding[0]), (1, conv.stride[0]))
                    : nn.functional.unfold(x, (conv.kernel_size[0], conv.kernel_size[1]), (conv.dilation[0], conv.dilation[1]),
                        (padding[0], padding[1]), (conv.stride[0], conv.stride[1]));
                // [m, patch, L] and [m, O, L] -> [O, m L] x [m L, patch]
                var u = unfolded.permute(1, 0, 2).reshape(patch, -1);
                var g = b.narrow(0, i * perMicro, perMicro).reshape(perMicro, outputs, -1).permute(1, 0, 2).reshape(outputs, -1);
                result[i].add_(g.mm(u.t()), Scalars.One);
            }
        }

        Hand(sink, result.reshape(k, outputs * patch), 0);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// Receives a window's gradients one block at a time: the K gradients of columns
/// [<c>offset</c>, <c>offset + count</c>) of one watched parameter (its values flattened). A block on a CPU in float32
/// comes as K row pointers, read in place; any other block as a [K, count] tensor.
/// </summary>
internal abstract unsafe class BlockSink
{
    /// <summary>A CPU float32 block: row i at <paramref name="rows"/>[i], <paramref name="count"/> contiguous values each.</summary>
    public abstract void Managed(float** rows, long offset, long count);

    /// <summary>A block as a [K, count] tensor, valid only during the call.</summary>
    public abstract void Tensor(Tensor block, long offset);
}

/// <summary>
/// Where a window's K gradients come from: the parameters they are laid out over, and a way to read each parameter's
/// [K, numel] gradients in blocks. <see cref="GradientWindow"/> keeps them in a buffer; <see cref="MicroBatchWindow"/>
/// makes them from each layer's inputs and output gradients as they are read.
/// </summary>
internal interface IWindowSource
{
    /// <summary>K, the number of gradients.</summary>
    int K { get; }

    /// <summary>The watched parameters (in <c>named_parameters()</c> order) and the segments of their flat layout.</summary>
    ParameterLayout Layout { get; }

    /// <summary>
    /// Examples behind each gradient (the micro-batch size of <see cref="MicroBatchWindow"/>), for the per-example
    /// indicators; NaN when the source does not know it.
    /// </summary>
    double ExamplesPerGradient { get; }

    /// <summary>The dtype the gradients are kept in: its rounding decides which coordinates count as constant.</summary>
    ScalarType Stored { get; }

    /// <summary>Hands parameter <paramref name="parameter"/>'s K gradients to <paramref name="sink"/>, block by block.</summary>
    void Read(int parameter, BlockSink sink);

    /// <summary>Parameter <paramref name="parameter"/>'s K gradients as a new [K, ...shape] tensor (the caller's dispose scope owns it).</summary>
    Tensor Gradients(int parameter);
}

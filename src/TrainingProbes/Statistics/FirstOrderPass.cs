using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// One parameter's read for <see cref="FirstOrderFamily"/>: its blocks through the managed kernel
/// (<see cref="WindowKernel"/>) or the tensor backend (<see cref="CoordinateSums"/>), into its own sums, with the
/// whitening state of its columns.
/// </summary>
/// <param name="layout">Where each sum lives.</param>
/// <param name="epsilon">The GSNR epsilon.</param>
/// <param name="parameters">The watched parameters.</param>
/// <param name="whitening">The family's whitening, whose state the blocks read and fold.</param>
internal sealed unsafe class FirstOrderPass(CoordinateSums.Layout layout, double epsilon, ParameterLayout parameters, Whitening whitening) : BlockSink
{
    private WindowKernel? _kernel;
    private int _parameter;
    private ScalarType _stored;
    private bool _squaresOnly;
    private double _squares;
    private Tensor? _squaresDevice;

    /// <summary>The parameter's host sums (managed blocks), or null.</summary>
    public double[]? Host { get; private set; }

    /// <summary>The parameter's device sums (tensor blocks), or null; valid until the next <see cref="Run"/> or <see cref="Release"/>.</summary>
    public Tensor? Device { get; private set; }

    /// <summary>The sum of the parameter's new F from managed blocks.</summary>
    public double FisherHost { get; private set; }

    /// <summary>The sum of the parameter's new F from tensor blocks, or null.</summary>
    public Tensor? FisherDevice { get; private set; }

    /// <summary>Reads parameter <paramref name="parameter"/> of the window: its sums and the fold of its F.</summary>
    public void Run(IWindowSource source, int parameter)
    {
        Release();
        _parameter = parameter;
        _stored = source.Stored;
        _squaresOnly = false;
        Host = null;
        FisherHost = 0;
        source.Read(parameter, this);
    }

    /// <summary>The sum of squares of parameter <paramref name="parameter"/>'s K gradients (the first window's floor).</summary>
    public double SumOfSquares(IWindowSource source, int parameter)
    {
        Release();
        _parameter = parameter;
        _squaresOnly = true;
        _squares = 0;
        source.Read(parameter, this);
        return _squares + (_squaresDevice is null ? 0 : _squaresDevice.item<double>());   // once, at the first window
    }

    /// <summary>
    /// Frees the device sums. They live outside every dispose scope: a source hands its blocks out of scopes of its
    /// own, which would free anything made inside them.
    /// </summary>
    public void Release()
    {
        Device?.Dispose();
        FisherDevice?.Dispose();
        _squaresDevice?.Dispose();
        Device = FisherDevice = _squaresDevice = null;
    }

    public override void Managed(float** rows, long offset, long count)
    {
        var kernel = _kernel ??= new WindowKernel(layout, epsilon);
        if (_squaresOnly)
        {
            _squares += kernel.SumOfSquares(rows, count);
            return;
        }

        int segment = parameters.Parameters[_parameter].Segment;
        if (!whitening.ManagedState(segment))
            throw new InvalidOperationException("The whitening state of a CPU float32 window is not readable in place.");
        Host ??= new double[layout.Length];
        FisherHost += kernel.Accumulate(rows, count, whitening.Managed(_parameter, offset, _stored), Host);
    }

    public override void Tensor(Tensor block, long offset)
    {
        if (_squaresOnly)
        {
            var squares = CoordinateSums.SumOfSquares(block);
            if (_squaresDevice is null) _squaresDevice = squares.clone().DetachFromDisposeScope();
            else _squaresDevice.add_(squares, Scalars.One);
            return;
        }

        if (Device is null) Device = torch.zeros(layout.Length, ScalarType.Float64, block.device).DetachFromDisposeScope();
        var state = whitening.Tensors(_parameter, offset, block.shape[1], _stored);
        var fisher = CoordinateSums.Accumulate(block, state, layout, epsilon, Device);
        if (FisherDevice is null) FisherDevice = fisher.clone().DetachFromDisposeScope();
        else FisherDevice.add_(fisher, Scalars.One);
    }
}

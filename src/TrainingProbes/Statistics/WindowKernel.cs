using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// <see cref="CoordinateSums"/> on a CPU, for float32 gradients, in one managed pass that reads each value from memory
/// once. This class orchestrates the pass: it walks the columns in blocks that stay in the L1 cache, pads the last
/// columns, and per block runs
/// <list type="bullet">
/// <item><description>the coordinate pass (<see cref="CoordinatePass"/>): the GSNR sums, the fold of F and the fisher D;</description></item>
/// <item><description>the whitening <c>h = D g</c> of each whitened geometry into a block-sized scratch (<see cref="Whitening"/>'s formulas);</description></item>
/// <item><description>the Gram matrices of the rows and of each h (<see cref="GramTiles"/>).</description></item>
/// </list>
/// No copy of the gradients and no threads. One instance per layout, reused window after window (its scratch is pinned).
/// </summary>
internal sealed unsafe class WindowKernel
{
    /// <summary>Columns per block for K = 1: K x block float32 values (24 KiB) stay in a 32 KiB L1 cache.</summary>
    private const int BlockFloats = 6144;

    private readonly int _k;
    private readonly int _kp;      // K rounded up to a multiple of 4 (the tile height); rows K..kp-1 read zeros
    private readonly int _block;   // columns per block, a multiple of 32
    private readonly CoordinateSums.Layout _layout;
    private readonly int _euclidean, _fisher, _adaptive;   // indices of the geometries in the layout, or -1
    private readonly PinnedScratch _scratch = new();
    private readonly CoordinatePass _pass;
    private readonly float* _zeros;       // [block]
    private readonly float* _whitened;    // [K, block]: D g of one block
    private readonly float* _dFisher;     // [block]
    private readonly float* _dAdaptive;   // [block]
    private readonly float* _tail;        // [K, 8]: the last columns of a range, padded with zeros
    private readonly double* _tailFisher; // [8]
    private readonly float* _tailTheta;   // [8]
    private readonly float** _rows;       // [kp]: the block's rows
    private readonly float** _hRows;      // [kp]: the whitened block's rows
    private readonly double* _blockGram;  // [kp, kp]
    private readonly double* _gram;       // [3, K, K]: this call's upper triangles

    public WindowKernel(CoordinateSums.Layout layout, double epsilon)
    {
        int k = layout.K;
        if (k < 2) throw new ArgumentOutOfRangeException(nameof(layout), k, "A window needs K >= 2.");
        _k = k;
        _kp = (k + 3) & ~3;
        _block = Math.Max(32, BlockFloats / k / 32 * 32);
        _layout = layout;
        _euclidean = layout.IndexOf(Geometry.Euclidean);
        _fisher = layout.IndexOf(Geometry.Fisher);
        _adaptive = layout.IndexOf(Geometry.Adaptive);
        _pass = new CoordinatePass(k, epsilon, _scratch);
        _zeros = _scratch.Allocate<float>(_block);
        _whitened = _scratch.Allocate<float>(k * _block);
        _dFisher = _scratch.Allocate<float>(_block);
        _dAdaptive = _scratch.Allocate<float>(_block);
        _tail = _scratch.Allocate<float>(k * 8);
        _tailFisher = _scratch.Allocate<double>(8);
        _tailTheta = _scratch.Allocate<float>(8);
        _rows = (float**)_scratch.Allocate<nint>(_kp);
        _hRows = (float**)_scratch.Allocate<nint>(_kp);
        _blockGram = _scratch.Allocate<double>(_kp * _kp);
        _gram = _scratch.Allocate<double>(3 * k * k);
        for (int i = 0; i < k; i++) _hRows[i] = _whitened + (long)i * _block;
        for (int i = k; i < _kp; i++) _hRows[i] = _rows[i] = _zeros;   // the tiles' padding rows read zeros
    }

    public int K => _k;

    /// <summary>Whether the kernel can read <paramref name="gradients"/> in place ([K, P], CPU, float32, contiguous).</summary>
    public static bool Supports(Tensor gradients) =>
        gradients.device_type == DeviceType.CPU && gradients.dtype == ScalarType.Float32 && gradients.is_contiguous() && gradients.dim() == 2;

    /// <summary>The address of a contiguous CPU tensor's first element.</summary>
    public static T* Address<T>(Tensor tensor) where T : unmanaged =>
        (T*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(tensor.bytes));

    /// <summary>What a block's pass reads and updates besides the gradients (<see cref="CoordinateSums.BlockState"/>, as pointers).</summary>
    public readonly struct State
    {
        /// <summary>F of the block's first column (float64, updated in place), or null without the fisher geometry.</summary>
        public double* Fisher { get; init; }
        public double Decay { get; init; }
        public double Floor { get; init; }
        public double Bias { get; init; }

        /// <summary>theta of the block's first column (float32), or null without the adaptive geometry.</summary>
        public float* Theta { get; init; }
        public float Eta { get; init; }

        /// <summary>The rounding of the dtype the gradients were stored in.</summary>
        public double StoredEpsilon { get; init; }
    }

    /// <summary>
    /// Adds the sums of the [K, <paramref name="count"/>] block whose row i starts at <paramref name="rows"/>[i] (each row
    /// contiguous) into <paramref name="sums"/> (the layout's), and returns the sum of the block's new F.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public double Accumulate(float** rows, long count, in State state, Span<double> sums)
    {
        if (_fisher >= 0 && state.Fisher is null) throw new InvalidOperationException("The fisher geometry needs F.");
        if (_adaptive >= 0 && state.Theta is null) throw new InvalidOperationException("The adaptive geometry needs theta.");
        double* fisher = _fisher >= 0 ? state.Fisher : null;
        new Span<double>(_gram, 3 * _k * _k).Clear();
        _pass.Reset();
        for (long offset = 0; offset < count; offset += _block)
        {
            int length = (int)Math.Min(_block, count - offset);
            int full = length & ~7;
            if (full > 0)
            {
                for (int i = 0; i < _k; i++) _rows[i] = rows[i] + offset;
                Block(full, fisher is null ? null : fisher + offset, state.Theta is null ? null : state.Theta + offset, state);
            }

            if (length != full) Tail(rows, offset + full, length - full, fisher, state);
        }

        AddGrams(sums);
        return _pass.AddTo(sums.Slice(_layout.Gsnr, GsnrStatistics.Length(_k)), count);
    }

    /// <summary>
    /// The last <paramref name="rest"/> (fewer than 8) columns, from column <paramref name="tail"/>: zero-padded to 8
    /// (zeros add nothing to a Gram matrix, never vary, and fold to F = 0 there), their F copied back.
    /// </summary>
    private void Tail(float** rows, long tail, int rest, double* fisher, in State state)
    {
        for (int i = 0; i < _k; i++)
        {
            for (int c = 0; c < 8; c++) _tail[i * 8 + c] = c < rest ? rows[i][tail + c] : 0f;
            _rows[i] = _tail + i * 8;
        }

        for (int c = 0; c < 8; c++)
        {
            _tailFisher[c] = fisher is not null && c < rest ? fisher[tail + c] : 0;
            _tailTheta[c] = state.Theta is not null && c < rest ? state.Theta[tail + c] : 0;
        }

        Block(8, fisher is null ? null : _tailFisher, state.Theta is null ? null : _tailTheta, state);
        if (fisher is not null)
            for (int c = 0; c < rest; c++) fisher[tail + c] = _tailFisher[c];
    }

    /// <summary>Adds this call's Gram upper triangles into the layout's full K x K matrices.</summary>
    private void AddGrams(Span<double> sums)
    {
        int k = _k;
        for (int g = 0; g < _layout.Geometries.Count; g++)
        {
            int index = _layout.Geometries[g] switch { Geometry.Euclidean => 0, Geometry.Fisher => 1, _ => 2 };
            var source = _gram + index * k * k;
            var target = sums.Slice(_layout.Gram(g), k * k);
            for (int i = 0; i < k; i++)
                for (int j = i; j < k; j++)
                {
                    target[i * k + j] += source[i * k + j];
                    if (j != i) target[j * k + i] += source[i * k + j];
                }
        }
    }

    /// <summary>
    /// Runs the pass once on a small block (ordinary values, a column of subnormal ones for the float64 path), so that
    /// its code is compiled before the first window needs it: the statistics worker does this when a session starts.
    /// </summary>
    public static void WarmUp(int k)
    {
        const int Columns = 72;
        var layout = new CoordinateSums.Layout(k, [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive]);
        var kernel = new WindowKernel(layout, 0);
        var values = GC.AllocateArray<float>(k * Columns, pinned: true);
        var random = new Random(1);
        for (int i = 0; i < values.Length; i++) values[i] = i % Columns == 3 ? 1e-40f : (float)random.NextDouble();
        var fisher = GC.AllocateArray<double>(Columns, pinned: true);
        var theta = GC.AllocateArray<float>(Columns, pinned: true);
        var sums = new double[layout.Length];
        fixed (float* start = values)
        fixed (double* f = fisher)
        fixed (float* t = theta)
        {
            var rows = stackalloc float*[k];
            for (int i = 0; i < k; i++) rows[i] = start + i * Columns;
            var state = new State { Fisher = f, Decay = 0.9, Floor = 1e-8, Bias = 1, Theta = t, Eta = 0, StoredEpsilon = Math.Pow(2, -23) };
            kernel.Accumulate(rows, Columns - 3, state, sums);
            kernel.SumOfSquares(rows, Columns);
        }
    }

    /// <summary>The sum of squares of the [K, <paramref name="count"/>] block's values, in float64 (for the first window's Fisher floor).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public double SumOfSquares(float** rows, long count)
    {
        double total = 0;
        for (int i = 0; i < _k; i++)
        {
            float* row = rows[i];
            var sum = Vector256<double>.Zero;
            long c = 0;
            for (; c + 4 <= count; c += 4)
            {
                var x = Vector256.WidenLower(Vector128.Load(row + c).ToVector256Unsafe());
                sum += x * x;
            }

            total += Vector256.Sum(sum);
            for (; c < count; c++) total += (double)row[c] * row[c];
        }

        return total;
    }

    /// <summary>One block of <paramref name="n"/> columns (a multiple of 8) at <see cref="_rows"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Block(int n, double* fisher, float* theta, in State state)
    {
        int k = _k;
        _pass.Run(_rows, n, fisher, _dFisher, state);
        if (_euclidean >= 0) GramTiles.Add(_rows, k, _kp, n, _blockGram, _gram);
        if (_fisher >= 0)
        {
            Whitening.Apply(_rows, _hRows, k, n, _dFisher);
            GramTiles.Add(_hRows, k, _kp, n, _blockGram, _gram + k * k);
        }

        if (_adaptive >= 0)
        {
            Whitening.AdaptiveD(theta, state.Eta, _dAdaptive, n);
            Whitening.Apply(_rows, _hRows, k, n, _dAdaptive);
            GramTiles.Add(_hRows, k, _kp, n, _blockGram, _gram + 2 * k * k);
        }
    }
}

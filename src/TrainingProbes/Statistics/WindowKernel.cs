using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// <see cref="CoordinateSums"/> on a CPU, for float32 gradients, in one managed pass that reads each value from memory
/// once. The columns are walked in blocks that stay in the L1 cache; per block:
/// <list type="bullet">
/// <item><description>the coordinate pass, 8 columns at a time (<see cref="Coordinates"/>): the mean and the sum of
/// squared deviations, the GSNR ratio and the K influences (one reciprocal per column), the fold of F and the fisher D;</description></item>
/// <item><description>the Gram matrices (<see cref="GramTiles"/>): of the rows, and of D g written to a block-sized
/// scratch for each whitened geometry.</description></item>
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
    private readonly double _epsilon;
    private readonly CoordinateSums.Layout _layout;
    private readonly int _euclidean, _fisher, _adaptive;   // indices of the geometries in the layout, or -1
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
    private readonly Vector256<double>* _values;       // [K]: 4 columns of each row (float64 path)
    private readonly Vector256<double>* _influence;    // [K]
    private readonly Vector256<float>* _values32;      // [K]: 8 columns of each row (float32 path)
    private readonly Vector256<float>* _deviations32;  // [K]
    private readonly Vector256<float>* _influence32;   // [K]: float32 lane sums over up to 32 vectors
    private readonly object[] _pins;
    private Vector256<double> _ratio, _varying, _fisherSum;
    private Vector256<float> _ratio32, _varying32;
    private int _fastVectors;
    private double* _fisherBase;   // F of the block's first column: where _dFisher starts

    public WindowKernel(CoordinateSums.Layout layout, double epsilon)
    {
        int k = layout.K;
        if (k < 2) throw new ArgumentOutOfRangeException(nameof(layout), k, "A window needs K >= 2.");
        _k = k;
        _kp = (k + 3) & ~3;
        _block = Math.Max(32, BlockFloats / k / 32 * 32);
        _epsilon = epsilon;
        _layout = layout;
        _euclidean = layout.IndexOf(Geometry.Euclidean);
        _fisher = layout.IndexOf(Geometry.Fisher);
        _adaptive = layout.IndexOf(Geometry.Adaptive);
        var pins = new List<object>();
        T* Pinned<T>(int length) where T : unmanaged
        {
            var array = GC.AllocateArray<T>(length, pinned: true);
            pins.Add(array);
            return (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        }

        _zeros = Pinned<float>(_block);
        _whitened = Pinned<float>(k * _block);
        _dFisher = Pinned<float>(_block);
        _dAdaptive = Pinned<float>(_block);
        _tail = Pinned<float>(k * 8);
        _tailFisher = Pinned<double>(8);
        _tailTheta = Pinned<float>(8);
        _rows = (float**)Pinned<nint>(_kp);
        _hRows = (float**)Pinned<nint>(_kp);
        _blockGram = Pinned<double>(_kp * _kp);
        _gram = Pinned<double>(3 * k * k);
        _values = (Vector256<double>*)Pinned<double>(4 * k);
        _influence = (Vector256<double>*)Pinned<double>(4 * k);
        _values32 = (Vector256<float>*)Pinned<float>(8 * k);
        _deviations32 = (Vector256<float>*)Pinned<float>(8 * k);
        _influence32 = (Vector256<float>*)Pinned<float>(8 * k);
        _pins = [.. pins];
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
        int k = _k;
        if (_fisher >= 0 && state.Fisher is null) throw new InvalidOperationException("The fisher geometry needs F.");
        double* fisherState = _fisher >= 0 ? state.Fisher : null;
        if (_adaptive >= 0 && state.Theta is null) throw new InvalidOperationException("The adaptive geometry needs theta.");
        new Span<double>(_gram, 3 * k * k).Clear();
        for (int i = 0; i < k; i++)
        {
            _influence[i] = Vector256<double>.Zero;
            _influence32[i] = Vector256<float>.Zero;
        }

        _ratio = _varying = _fisherSum = Vector256<double>.Zero;
        _ratio32 = _varying32 = Vector256<float>.Zero;
        _fastVectors = 0;

        for (long offset = 0; offset < count; offset += _block)
        {
            int length = (int)Math.Min(_block, count - offset);
            int full = length & ~7;
            if (full > 0)
            {
                for (int i = 0; i < k; i++) _rows[i] = rows[i] + offset;
                Block(full, fisherState is null ? null : fisherState + offset, state.Theta is null ? null : state.Theta + offset, state);
            }

            if (length == full) continue;
            // The last columns: zero-padded to 8 (zeros add nothing to a Gram matrix, never vary, and fold to F = 0 there).
            int rest = length - full;
            long tail = offset + full;
            for (int i = 0; i < k; i++)
            {
                for (int c = 0; c < 8; c++) _tail[i * 8 + c] = c < rest ? rows[i][tail + c] : 0f;
                _rows[i] = _tail + i * 8;
            }

            for (int c = 0; c < 8; c++)
            {
                _tailFisher[c] = fisherState is not null && c < rest ? fisherState[tail + c] : 0;
                _tailTheta[c] = state.Theta is not null && c < rest ? state.Theta[tail + c] : 0;
            }

            Block(8, fisherState is null ? null : _tailFisher, state.Theta is null ? null : _tailTheta, state);
            if (fisherState is not null)
                for (int c = 0; c < rest; c++) fisherState[tail + c] = _tailFisher[c];
        }

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

        Flush();
        var gsnr = sums.Slice(_layout.Gsnr, GsnrStatistics.Length(k));
        gsnr[0] += Vector256.Sum(_ratio);
        gsnr[1] += Vector256.Sum(_varying);
        gsnr[2] += count;
        for (int i = 0; i < k; i++) gsnr[3 + i] += Vector256.Sum(_influence[i]);
        return Vector256.Sum(_fisherSum);
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
        _fisherBase = fisher;
        Coordinates(n, fisher, state);
        if (_euclidean >= 0) GramTiles.Add(_rows, k, _kp, n, _blockGram, _gram);
        if (_fisher >= 0)
        {
            Whiten(n, _dFisher);
            GramTiles.Add(_hRows, k, _kp, n, _blockGram, _gram + k * k);
        }

        if (_adaptive >= 0)
        {
            var eta = Vector256.Create(state.Eta);
            for (int c = 0; c < n; c += 8) Vector256.Store(Vector256.Abs(Vector256.Load(theta + c)) + eta, _dAdaptive + c);
            Whiten(n, _dAdaptive);
            GramTiles.Add(_hRows, k, _kp, n, _blockGram, _gram + 2 * k * k);
        }
    }

    /// <summary>How far ahead of the coordinate pass each row is prefetched, in floats.</summary>
    private const int PrefetchAhead = 128;

    /// <summary>float32 eps (2^-23).</summary>
    private const float FloatEpsilon = 1.1920929e-7f;

    /// <summary>
    /// The coordinate pass over a block, 8 columns at a time: GSNR ratio and influences, the fold of F and the fisher D
    /// (into <see cref="_dFisher"/>). In float32, each column scaled by the power of two that brings its largest value into
    /// [1, 2) (exact; the ratio and the influences do not change with a column's scale) and centred on its first value;
    /// columns where float32 could decide differently from float64 (a spread within 32 float32 eps of the mean; subnormal,
    /// huge or non-finite values; a nonzero epsilon) go through <see cref="Exact"/> instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Coordinates(int n, double* fisher, in State state)
    {
        int k = _k;
        var values = _values32;
        var deviations = _deviations32;
        var influence = _influence32;
        var zero = Vector256<float>.Zero;
        bool fast = _epsilon == 0 && k >= 3;
        bool withInfluence = k >= 5;
        float rounding = (float)(CoordinateSums.RoundingFactor * state.StoredEpsilon);
        var threshold = Vector256.Create(rounding * rounding * (k - 1));
        var hard = Vector256.Create(32 * FloatEpsilon * 32 * FloatEpsilon * (k - 1));
        var invK = Vector256.Create(1f / k);
        var ratioScale = Vector256.Create((float)(k - 1));
        var wInverse = Vector256.Create((float)(k * (k - 2.0) / (k - 1.0)));
        var alphaScale = Vector256.Create(2f / (k - 1));
        var betaScale = Vector256.Create(withInfluence ? -1f / (k - 2) : 0f);
        for (int c = 0; c < n; c += 8)
        {
            if (!fast)
            {
                Exact(c, fisher, state);
                continue;
            }

            // K rows are K streams 4 P bytes apart, more than the hardware prefetcher follows: ask for each 512 bytes ahead.
            if (Sse.IsSupported)
                for (int i = 0; i < k; i++) Sse.Prefetch0(_rows[i] + c + PrefetchAhead);

            // The largest |value| as the largest bit pattern of |value| (one integer max; NaN above every number).
            var first = Vector256.Load(_rows[0] + c);
            var maxBits = Vector256.Abs(first).AsInt32();
            values[0] = first;
            for (int i = 1; i < k; i++)
            {
                var v = Vector256.Load(_rows[i] + c);
                values[i] = v;
                maxBits = Vector256.Max(maxBits, Vector256.Abs(v).AsInt32());
            }

            var exponent = Vector256.ShiftRightLogical(maxBits, 23);
            var bad = (Vector256.Equals(exponent, Vector256<int>.Zero) & ~Vector256.Equals(maxBits, Vector256<int>.Zero))
                | Vector256.GreaterThan(exponent, Vector256.Create(252));
            if (bad != Vector256<int>.Zero)
            {
                Exact(c, fisher, state);
                continue;
            }

            var lifted = Vector256.Max(exponent, Vector256<int>.One);
            var scale = Vector256.ShiftLeft(Vector256.Create(254) - lifted, 23).AsSingle();   // 2^(127 - e)
            var y0 = first * scale;
            // y_i - y0 rounds once (x_i scale is exact); four chains of sums, so that additions do not wait on each other.
            Vector256<float> s0 = zero, s1 = zero, s2 = zero, s3 = zero;
            int j = 0;
            for (; j + 4 <= k; j += 4)
            {
                s0 += deviations[j] = MultiplySubtract(values[j], scale, y0);
                s1 += deviations[j + 1] = MultiplySubtract(values[j + 1], scale, y0);
                s2 += deviations[j + 2] = MultiplySubtract(values[j + 2], scale, y0);
                s3 += deviations[j + 3] = MultiplySubtract(values[j + 3], scale, y0);
            }

            for (; j < k; j++) s0 += deviations[j] = MultiplySubtract(values[j], scale, y0);
            var zMean = (s0 + s1 + (s2 + s3)) * invK;
            s0 = s1 = s2 = s3 = zero;
            for (j = 0; j + 4 <= k; j += 4)
            {
                var d0 = deviations[j] -= zMean;
                var d1 = deviations[j + 1] -= zMean;
                var d2 = deviations[j + 2] -= zMean;
                var d3 = deviations[j + 3] -= zMean;
                s0 = MultiplyAdd(d0, d0, s0);
                s1 = MultiplyAdd(d1, d1, s1);
                s2 = MultiplyAdd(d2, d2, s2);
                s3 = MultiplyAdd(d3, d3, s3);
            }

            for (; j < k; j++)
            {
                var d = deviations[j] -= zMean;
                s0 = MultiplyAdd(d, d, s0);
            }

            var squares = s0 + s1 + (s2 + s3);
            var mean = y0 + zMean;
            var meanSquare = mean * mean;
            if ((Vector256.LessThanOrEqual(squares, hard * meanSquare) & Vector256.GreaterThan(squares, zero)) != zero)
            {
                Exact(c, fisher, state);
                continue;
            }

            var varies = Vector256.GreaterThan(squares, threshold * meanSquare);
            if (varies != zero)
            {
                var reciprocal = Reciprocal(Vector256.ConditionalSelect(varies, squares, Vector256<float>.One));
                _ratio32 += (ratioScale * meanSquare * reciprocal) & varies;
                _varying32 += Vector256<float>.One & varies;
                if (withInfluence)
                {
                    var inverse = (reciprocal * wInverse) & varies;
                    var alpha = mean * inverse * alphaScale;
                    var beta = meanSquare * inverse * inverse * betaScale;
                    for (int i = 0; i < k; i++)
                    {
                        var e = deviations[i];
                        influence[i] = MultiplyAdd(e, MultiplyAdd(beta, e, alpha), influence[i]);
                    }
                }

                if (++_fastVectors == 32) Flush();
            }

            if (fisher is null) continue;
            // The mean square, unscaled in float64: (SS / K + m^2) x 2^(2 (e - 127)), exact powers of two.
            var meanSquares = MultiplyAdd(squares, invK, meanSquare);
            var unscale = Vector256.ShiftLeft(lifted, 23).AsSingle();   // 2^(e - 127)
            Fold(fisher + c, Vector256.WidenLower(meanSquares), Vector256.WidenLower(unscale), state);
            Fold(fisher + c + 4, Vector256.WidenUpper(meanSquares), Vector256.WidenUpper(unscale), state);
            FisherD(fisher + c, state);
        }
    }

    /// <summary>F of 4 columns folded with their mean squares <c>q x u^2</c>; F stays where that is not finite.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Fold(double* fisher, Vector256<double> q, Vector256<double> unscale, in State state)
    {
        var square = q * unscale * unscale;
        var old = Vector256.Load(fisher);
        var f = Vector256.ConditionalSelect(Vector256.Equals(square - square, Vector256<double>.Zero),   // 0 where finite
            old * Vector256.Create(state.Decay) + square * Vector256.Create(1 - state.Decay), old);
        Vector256.Store(f, fisher);
        _fisherSum += f;
    }

    /// <summary>
    /// D of the fisher geometry for 8 columns: <c>1 / sqrt(max(F, floor) x bias)</c> where F &gt; 0, else 0, rounded to
    /// float32; with a refined reciprocal square root where the raised F is a normal float32, in float64 otherwise.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void FisherD(double* fisher, in State state)
    {
        var floor = Vector256.Create(state.Floor);
        var bias = Vector256.Create(state.Bias);
        var f0 = Vector256.Load(fisher);
        var f1 = Vector256.Load(fisher + 4);
        var r0 = Vector256.Max(f0, floor) * bias;
        var r1 = Vector256.Max(f1, floor) * bias;
        var low = Vector256.Create(1e-36);
        var high = Vector256.Create(1e36);
        // D is 0 where F <= 0, and where the raised F is too small for D to be a float32 (SmallestFisher).
        var smallest = Vector256.Create(CoordinateSums.SmallestFisher);
        var positive0 = Vector256.GreaterThan(f0, Vector256<double>.Zero) & Vector256.GreaterThanOrEqual(r0, smallest);
        var positive1 = Vector256.GreaterThan(f1, Vector256<double>.Zero) & Vector256.GreaterThanOrEqual(r1, smallest);
        var inRange = (~positive0 | (Vector256.GreaterThan(r0, low) & Vector256.LessThan(r0, high)))
            & (~positive1 | (Vector256.GreaterThan(r1, low) & Vector256.LessThan(r1, high)));
        long index = fisher - _fisherBase;
        if (inRange.AsInt64() != Vector256<long>.AllBitsSet)   // as integers: an all-ones double is NaN, never equal
        {
            for (int j = 0; j < 8; j++)
            {
                double f = fisher[j], lifted = Math.Max(f, state.Floor) * state.Bias;
                _dFisher[index + j] = f > 0 && lifted >= CoordinateSums.SmallestFisher ? (float)(1.0 / Math.Sqrt(lifted)) : 0f;
            }

            return;
        }

        // Where F <= 0 the raised value is 1 (a finite root) and D is 0.
        var one = Vector256<double>.One;
        var raised = Narrow(Vector256.ConditionalSelect(positive0, r0, one), Vector256.ConditionalSelect(positive1, r1, one));
        var positive = Narrow(one & positive0, one & positive1);   // 1 where F > 0, else 0
        Vector256.Store(ReciprocalSqrt(raised) * positive, _dFisher + index);
    }

    /// <summary>
    /// <see cref="CoordinateSums"/>' definition for 8 columns, in float64: the columns float32 cannot decide as float64
    /// would, and every column when epsilon is nonzero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Exact(int c, double* fisher, in State state)
    {
        Flush();
        int k = _k;
        var values = _values;
        var zero = Vector256<double>.Zero;
        var one = Vector256<double>.One;
        var invK = Vector256.Create(1.0 / k);
        var invK1 = Vector256.Create(1.0 / (k - 1));
        double rounding = CoordinateSums.RoundingFactor * state.StoredEpsilon;
        var threshold = Vector256.Create(rounding * rounding * (k - 1));
        var epsilon = Vector256.Create(_epsilon);
        bool withInfluence = k >= 5;
        var wScale = Vector256.Create(withInfluence ? (k - 1.0) / (k * (k - 2.0)) : 0);
        var alphaScale = Vector256.Create(2.0 / (k - 1));
        var betaScale = Vector256.Create(withInfluence ? -1.0 / (k - 2) : 0);
        for (int half = 0; half < 8; half += 4)
        {
            var sum = zero;
            for (int i = 0; i < k; i++)
            {
                var x = Vector256.WidenLower(Vector128.Load(_rows[i] + c + half).ToVector256Unsafe());
                values[i] = x;
                sum += x;
            }

            var mean = sum * invK;
            var squares = zero;
            for (int i = 0; i < k; i++)
            {
                var e = values[i] - mean;
                squares += e * e;
            }

            var meanSquare = mean * mean;
            var varies = Vector256.GreaterThan(squares, meanSquare * threshold);
            if (varies != zero)
            {
                _ratio += Vector256.ConditionalSelect(varies, meanSquare / (squares * invK1 + epsilon), zero);
                _varying += one & varies;
                if (withInfluence)
                {
                    var inverse = Vector256.ConditionalSelect(varies, one / (squares * wScale + epsilon), zero);
                    var alpha = mean * inverse * alphaScale;
                    var beta = meanSquare * inverse * inverse * betaScale;
                    for (int i = 0; i < k; i++)
                    {
                        var e = (values[i] - mean) & varies;
                        _influence[i] += e * (alpha + beta * e);
                    }
                }
            }

            if (fisher is not null) Fold(fisher + c + half, squares * invK + meanSquare, one, state);
        }

        if (fisher is not null) FisherD(fisher + c, state);
    }

    /// <summary>Moves the float32 lane sums of the fast path into the float64 sums.</summary>
    private void Flush()
    {
        _ratio += Vector256.WidenLower(_ratio32) + Vector256.WidenUpper(_ratio32);
        _varying += Vector256.WidenLower(_varying32) + Vector256.WidenUpper(_varying32);
        for (int i = 0; i < _k; i++)
        {
            _influence[i] += Vector256.WidenLower(_influence32[i]) + Vector256.WidenUpper(_influence32[i]);
            _influence32[i] = Vector256<float>.Zero;
        }

        _ratio32 = _varying32 = Vector256<float>.Zero;
        _fastVectors = 0;
    }

    /// <summary>The block's rows times D, into the whitened scratch.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Whiten(int n, float* d)
    {
        for (int i = 0; i < _k; i++)
        {
            float* source = _rows[i], target = _hRows[i];
            for (int c = 0; c < n; c += 8) Vector256.Store(Vector256.Load(source + c) * Vector256.Load(d + c), target + c);
        }
    }

    /// <summary>Two float64 vectors rounded to one float32 vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Narrow(Vector256<double> low, Vector256<double> high) =>
        Avx.IsSupported ? Vector256.Create(Avx.ConvertToVector128Single(low), Avx.ConvertToVector128Single(high)) : Vector256.Narrow(low, high);

    /// <summary>1 / sqrt(x) to about 2 float32 ulps: the hardware estimate and one Newton step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> ReciprocalSqrt(Vector256<float> x)
    {
        if (!Avx.IsSupported) return Vector256<float>.One / Vector256.Sqrt(x);
        var y = Avx.ReciprocalSqrt(x);
        var half = Vector256.Create(0.5f) * y;
        return half * (Vector256.Create(3f) - x * y * y);
    }

    /// <summary>1 / x to about 2 float32 ulps: the hardware estimate and one Newton step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Reciprocal(Vector256<float> x)
    {
        if (!Avx.IsSupported) return Vector256<float>.One / x;
        var y = Avx.Reciprocal(x);
        return MultiplyAdd(y, NegatedMultiplyAdd(x, y, Vector256<float>.One), y);   // y + y (1 - x y)
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : a * b + c;

    /// <summary>a b - c, rounded once where the hardware has FMA.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MultiplySubtract(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplySubtract(a, b, c) : a * b - c;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> NegatedMultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAddNegated(a, b, c) : c - a * b;
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// A window's first-order sums on the CPU in one managed pass over its float32 [K, P] gradients, read in place: the
/// K x K Gram matrix of each geometry and the GSNR sums (<see cref="GsnrKernel"/>'s definitions). The columns are
/// walked in blocks that stay in the L1 cache; each block is read from memory once and then, from the cache:
/// <list type="bullet">
/// <item><description>the Gram matrices, in 4 x 2 register tiles of float32 FMAs (8 columns per lane), each tile's sums
/// widened into float64 at the end of the block (a few hundred columns, so a float32 lane adds at most ~100 products).
/// A block whose float32 sums are not finite (squares of gradients near 1e20 overflow) or whose diagonal is below
/// 2^-100 (squares of gradients near 1e-25 underflow) is summed again in float64;</description></item>
/// <item><description>the whitened Gram matrices: D of the block (fisher: from the float64 average F and its floor,
/// adaptive: |theta| + eta), the K rows of D g written to a block-sized scratch, and the same tiles over it. D g is
/// never materialised beyond one block;</description></item>
/// <item><description>the GSNR sums: per column the K values, scaled by a power of two (exact) so that their squares
/// fit float32, centred on the first value, then the ratio and its K leave-one-out ratios in float32 with reciprocal
/// estimates refined by a Newton step, summed in float32 over 32 vectors and then in float64. A leave-one-out sum of
/// squares is a downdate of the full one, or, where minibatch i carries more than 15/16 of the column's spread (an outlier,
/// or a sparse input only one or two minibatches saw), summed from the other K - 1 values. Columns where float32 could
/// decide differently from float64 (a spread within 32 float32 eps of the mean, four times the definition's threshold;
/// subnormal, huge or non-finite values; a nonzero epsilon) are summed with <see cref="GsnrKernel"/>'s float64 formulas
/// instead, 8 columns at a time.</description></item>
/// </list>
/// No float64 copy of the buffer and no threads. One instance per K, reused window after window (its scratch is pinned).
/// </summary>
internal sealed unsafe class WindowKernel
{
    /// <summary>Columns per block for K = 1: K x block float32 values (24 KiB) stay in a 32 KiB L1 cache.</summary>
    private const int BlockFloats = 6144;

    /// <summary>A block's float32 diagonal sum below this may hold underflowed squares: the block is summed in float64.</summary>
    private const float GramUnderflow = 7.888609e-31f;   // 2^-100

    private readonly int _k;
    private readonly int _kp;      // K rounded up to a multiple of 4 (the tile height); rows K..kp-1 read zeros
    private readonly int _block;   // columns per block, a multiple of 32
    private readonly double _epsilon;
    private readonly float* _zeros;     // [block]
    private readonly float* _whitened;  // [K, block]: D g of one block
    private readonly float* _d;         // [block]
    private readonly float* _tail;      // [K, 8]: the last columns of a range, padded with zeros
    private readonly double* _tailFisher; // [8]
    private readonly float* _tailTheta;  // [8]
    private readonly float** _rows;     // [kp]: the block's rows
    private readonly float** _hRows;    // [kp]: the whitened block's rows
    private readonly double* _blockGram; // [kp, kp]
    private readonly Vector256<float>* _values; // [K]
    private readonly object[] _pins;

    // GSNR accumulators: float32 lanes over up to 32 vectors, then float64.
    private readonly Vector256<float>* _looFast;   // [K]
    private readonly Vector256<float>* _looExcluded;   // [K]: columns the fast path took whose minibatch i was their only nonzero value
    private readonly Vector256<float>* _deviations;   // [K]
    private readonly Vector256<float>* _looSums;   // [K]
    private readonly Vector256<float>* _looSquares;   // [K]
    private Vector256<float> _ratioFast, _countFast;
    private int _fastVectors;
    private readonly double[] _gsnr;   // [R, U, N, R_(i), U_(i)] in float64, the fast path's sums after their constants
    private readonly GsnrKernel.Exact _exact;

    public WindowKernel(int k, double epsilon)
    {
        if (k < 2) throw new ArgumentOutOfRangeException(nameof(k), k, "A window needs K >= 2.");
        _k = k;
        _kp = (k + 3) & ~3;
        _block = Math.Max(32, BlockFloats / k / 32 * 32);
        _epsilon = epsilon;
        var pins = new List<object>();
        T* Pinned<T>(int length) where T : unmanaged
        {
            var array = GC.AllocateArray<T>(length, pinned: true);
            pins.Add(array);
            return (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        }

        _zeros = Pinned<float>(_block);
        _whitened = Pinned<float>(k * _block);
        _d = Pinned<float>(_block);
        _tail = Pinned<float>(k * 8);
        _tailFisher = Pinned<double>(8);
        _tailTheta = Pinned<float>(8);
        _rows = (float**)Pinned<nint>(_kp);
        _hRows = (float**)Pinned<nint>(_kp);
        _blockGram = Pinned<double>(_kp * _kp);
        _values = (Vector256<float>*)Pinned<float>(8 * k);
        _looFast = (Vector256<float>*)Pinned<float>(8 * k);
        _looExcluded = (Vector256<float>*)Pinned<float>(8 * k);
        _deviations = (Vector256<float>*)Pinned<float>(8 * k);
        _looSums = (Vector256<float>*)Pinned<float>(8 * k);
        _looSquares = (Vector256<float>*)Pinned<float>(8 * k);
        _pins = [.. pins];
        _gsnr = new double[3 + 2 * k];
        _exact = new GsnrKernel.Exact(k, epsilon);
        for (int i = 0; i < k; i++) _hRows[i] = _whitened + (long)i * _block;
        for (int i = k; i < _kp; i++) _hRows[i] = _zeros;
    }

    public int K => _k;

    /// <summary>Vectors of 8 columns the GSNR pass has summed in float64 so far (for the benchmarks).</summary>
    internal long ExactVectors;

    [ThreadStatic] private static WindowKernel? _last;

    /// <summary>
    /// Adds the sums of columns [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) of
    /// segment <paramref name="segment"/> of <paramref name="whitening"/>'s window into <paramref name="sums"/>: per
    /// geometry of <paramref name="geometries"/> its K x K Gram matrix, then the GSNR sums (FirstOrderFamily's layout).
    /// </summary>
    public static void Accumulate(Tensor gradients, int segment, long start, long count, Whitening whitening,
        IReadOnlyList<Geometry> geometries, double epsilon, Span<double> sums)
    {
        int k = (int)gradients.shape[0];
        var kernel = _last is { } last && last._k == k && last._epsilon.Equals(epsilon) ? last : _last = new WindowKernel(k, epsilon);
        int euclidean = -1, fisher = -1, adaptive = -1;
        for (int i = 0; i < geometries.Count; i++)
        {
            switch (geometries[i])
            {
                case Geometry.Euclidean: euclidean = i * k * k; break;
                case Geometry.Fisher: fisher = i * k * k; break;
                case Geometry.Adaptive: adaptive = i * k * k; break;
                default: throw new ArgumentOutOfRangeException(nameof(geometries), geometries[i], "One geometry at a time.");
            }
        }

        float* g = Address<float>(gradients);
        foreach (var (from, length) in whitening.ConstantFloorRanges(segment, start, count))
            kernel.Accumulate(g, gradients.shape[1], from, length, whitening.ManagedState(segment, from), euclidean, fisher, adaptive,
                geometries.Count * k * k, sums);
    }

    /// <summary>Whether the kernel can read <paramref name="gradients"/> ([K, P], CPU, float32, contiguous).</summary>
    public static bool Supports(Tensor gradients) =>
        gradients.device_type == DeviceType.CPU && gradients.dtype == ScalarType.Float32 && gradients.is_contiguous() && gradients.dim() == 2;

    /// <summary>The address of a contiguous CPU tensor's first element.</summary>
    public static T* Address<T>(Tensor tensor) where T : unmanaged =>
        (T*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(tensor.bytes));

    /// <summary>What a range's whitened Gram matrices read: D's state, or null for a geometry not asked for.</summary>
    public readonly struct Whitenings
    {
        /// <summary>F of the segment (float64), or null without the fisher geometry.</summary>
        public double* Fisher { get; init; }

        /// <summary>Fisher floor of each column of the range (0 without a floor), and the bias correction.</summary>
        public double Floor { get; init; }
        public double BiasCorrection { get; init; }

        /// <summary>theta of the segment (float32), or null without the adaptive geometry.</summary>
        public float* Theta { get; init; }
        public float Eta { get; init; }
    }

    /// <summary>
    /// Adds the sums of columns [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) of the
    /// [K, <paramref name="columns"/>] float32 buffer at <paramref name="gradients"/>: the Gram matrix (K x K, full) at
    /// <paramref name="euclidean"/>, <paramref name="fisher"/>, <paramref name="adaptive"/> (offsets into
    /// <paramref name="sums"/>, -1: not asked for), and, when <paramref name="gsnr"/> &gt;= 0, the GSNR sums
    /// [R, U, N, R_(i), U_(i)] there. The whitening's floor must be constant over the range (one parameter tensor).
    /// </summary>
    public void Accumulate(float* gradients, long columns, long start, long count, in Whitenings whitenings,
        int euclidean, int fisher, int adaptive, int gsnr, Span<double> sums)
    {
        int k = _k;
        var gram = stackalloc double[3 * k * k];
        new Span<double>(gram, 3 * k * k).Clear();
        Array.Clear(_gsnr);
        for (int i = 0; i < k; i++) _looFast[i] = _looExcluded[i] = Vector256<float>.Zero;
        _ratioFast = _countFast = Vector256<float>.Zero;
        _fastVectors = 0;
        _exact.Clear();

        bool doGsnr = gsnr >= 0;
        double* euclideanGram = euclidean >= 0 ? gram : null;
        double* fisherGram = fisher >= 0 ? gram + k * k : null;
        double* adaptiveGram = adaptive >= 0 ? gram + 2 * k * k : null;
        if (fisher >= 0 && whitenings.Fisher is null) throw new InvalidOperationException("The fisher Gram needs F.");
        if (adaptive >= 0 && whitenings.Theta is null) throw new InvalidOperationException("The adaptive Gram needs theta.");

        for (long offset = start; offset < start + count; offset += _block)
        {
            int length = (int)Math.Min(_block, start + count - offset);
            int full = length & ~7;
            if (full > 0)
            {
                for (int i = 0; i < k; i++) _rows[i] = gradients + i * columns + offset;
                for (int i = k; i < _kp; i++) _rows[i] = _zeros;
                Block(full, whitenings.Fisher is null ? null : whitenings.Fisher + offset, whitenings.Theta is null ? null : whitenings.Theta + offset,
                    whitenings, euclideanGram, fisherGram, adaptiveGram, doGsnr);
            }

            if (length == full) continue;
            // The last columns of the range: zero-padded to one vector (zeros add nothing to a Gram matrix, and are constant columns for the GSNR).
            int rest = length - full;
            long tail = offset + full;
            for (int i = 0; i < k; i++)
            {
                for (int c = 0; c < 8; c++) _tail[i * 8 + c] = c < rest ? gradients[i * columns + tail + c] : 0f;
                _rows[i] = _tail + i * 8;
            }

            for (int i = k; i < _kp; i++) _rows[i] = _zeros;
            for (int c = 0; c < 8; c++)
            {
                _tailFisher[c] = whitenings.Fisher is not null && c < rest ? whitenings.Fisher[tail + c] : 0;
                _tailTheta[c] = whitenings.Theta is not null && c < rest ? whitenings.Theta[tail + c] : 0;
            }

            Block(8, _tailFisher, _tailTheta, whitenings, euclideanGram, fisherGram, adaptiveGram, doGsnr);
        }

        int[] offsets = [euclidean, fisher, adaptive];
        for (int g = 0; g < 3; g++)
        {
            if (offsets[g] < 0) continue;
            var source = gram + g * k * k;
            for (int i = 0; i < k; i++)
                for (int j = i; j < k; j++)
                {
                    sums[offsets[g] + i * k + j] += source[i * k + j];
                    if (j != i) sums[offsets[g] + j * k + i] += source[i * k + j];
                }
        }

        if (!doGsnr) return;
        FlushGsnr();
        var target = sums.Slice(gsnr, 3 + 2 * k);
        for (int i = 0; i < target.Length; i++) target[i] += _gsnr[i];
        _exact.AddTo(target);
        target[2] += count;
    }

    /// <summary>
    /// <see cref="Accumulate(float*, long, long, long, in Whitenings, int, int, int, int, Span{double})"/> on tensors:
    /// <paramref name="gradients"/> [K, P] float32, <paramref name="fisher"/> [P] float64 and <paramref name="theta"/> [P]
    /// float32 (CPU, contiguous; null without their geometry).
    /// </summary>
    public void Accumulate(Tensor gradients, long start, long count, Tensor? fisher, double floor, double biasCorrection, Tensor? theta,
        float eta, int euclidean, int fisherOffset, int adaptive, int gsnr, Span<double> sums)
    {
        if (!Supports(gradients) || gradients.shape[0] != _k) throw new ArgumentException("Expected [K, P] float32 contiguous CPU gradients.", nameof(gradients));
        var whitenings = new Whitenings
        {
            Fisher = fisher is null ? null : Address<double>(fisher), Floor = floor, BiasCorrection = biasCorrection,
            Theta = theta is null ? null : Address<float>(theta), Eta = eta,
        };
        Accumulate(Address<float>(gradients), gradients.shape[1], start, count, whitenings, euclidean, fisherOffset, adaptive, gsnr, sums);
    }

    /// <summary>One block of <paramref name="n"/> columns (a multiple of 8) at <see cref="_rows"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Block(int n, double* fisher, float* theta, in Whitenings whitenings, double* euclidean, double* fisherGram, double* adaptiveGram, bool gsnr)
    {
        if (euclidean is not null) Gram(_rows, n, euclidean);
        if (gsnr) Gsnr(n);
        if (fisherGram is not null)
        {
            FisherD(fisher, whitenings.Floor, whitenings.BiasCorrection, n);
            Whiten(n);
            Gram(_hRows, n, fisherGram);
        }

        if (adaptiveGram is not null)
        {
            var eta = Vector256.Create(whitenings.Eta);
            for (int c = 0; c < n; c += 8) Vector256.Store(Vector256.Abs(Vector256.Load(theta + c)) + eta, _d + c);
            Whiten(n);
            Gram(_hRows, n, adaptiveGram);
        }
    }

    /// <summary>The block's rows times D, into the whitened scratch.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Whiten(int n)
    {
        for (int i = 0; i < _k; i++)
        {
            float* source = _rows[i], target = _hRows[i];
            for (int c = 0; c < n; c += 8) Vector256.Store(Vector256.Load(source + c) * Vector256.Load(_d + c), target + c);
        }
    }

    /// <summary>
    /// D of the fisher geometry (see <see cref="Whitening"/>): <c>1 / sqrt(max(F, floor) x biasCorrection)</c> where
    /// F &gt; 0, else 0, rounded to float32. In float32 with a refined reciprocal square root where the raised F is a
    /// normal float32; 8 columns in float64 otherwise.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FisherD(double* fisher, double floor, double biasCorrection, int n)
    {
        var floorV = Vector256.Create(floor);
        var bias = Vector256.Create(biasCorrection);
        var low = Vector256.Create(1e-36);
        var high = Vector256.Create(1e36);
        for (int c = 0; c < n; c += 8)
        {
            var f0 = Vector256.Load(fisher + c);
            var f1 = Vector256.Load(fisher + c + 4);
            var r0 = MaxOrSecond(floorV, f0) * bias;   // F when F is NaN, so the range check below sends it to the scalar loop
            var r1 = MaxOrSecond(floorV, f1) * bias;
            // Each lane is either F <= 0 (D = 0) or a raised F well inside float32's normal range.
            var inRange0 = Vector256.LessThanOrEqual(f0, Vector256<double>.Zero) | (Vector256.GreaterThan(r0, low) & Vector256.LessThan(r0, high));
            var inRange1 = Vector256.LessThanOrEqual(f1, Vector256<double>.Zero) | (Vector256.GreaterThan(r1, low) & Vector256.LessThan(r1, high));
            if ((inRange0 & inRange1).AsInt64() != Vector256<long>.AllBitsSet)   // as integers: an all-ones double is NaN, never equal
            {
                for (int j = 0; j < 8; j++)
                {
                    double f = fisher[c + j];
                    _d[c + j] = f > 0 ? (float)(1.0 / Math.Sqrt(Math.Max(f, floor) * biasCorrection)) : 0f;
                }

                continue;
            }

            var raised = Narrow(Vector256.ConditionalSelect(Vector256.LessThanOrEqual(f0, Vector256<double>.Zero), Vector256<double>.Zero, r0),
                Vector256.ConditionalSelect(Vector256.LessThanOrEqual(f1, Vector256<double>.Zero), Vector256<double>.Zero, r1));
            var d = ReciprocalSqrt(raised);
            Vector256.Store(Vector256.ConditionalSelect(Vector256.Equals(raised, Vector256<float>.Zero), Vector256<float>.Zero, d), _d + c);
        }
    }

    /// <summary>Two float64 vectors rounded to one float32 vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Narrow(Vector256<double> low, Vector256<double> high) =>
        Avx.IsSupported ? Vector256.Create(Avx.ConvertToVector128Single(low), Avx.ConvertToVector128Single(high)) : Vector256.Narrow(low, high);

    /// <summary>1 / sqrt(x) to about 2 float32 ulps: the hardware estimate and one Newton step, or the exact division.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> ReciprocalSqrt(Vector256<float> x)
    {
        if (!Avx.IsSupported) return Vector256<float>.One / Vector256.Sqrt(x);
        var y = Avx.ReciprocalSqrt(x);
        // y (3 - x y^2) / 2
        var half = Vector256.Create(0.5f) * y;
        return half * (Vector256.Create(3f) - x * y * y);
    }

    /// <summary>1 / x to about 2 float32 ulps: the hardware estimate and one Newton step, or the exact division.</summary>
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

    /// <summary>max(a, b) as the hardware takes it: b when either is NaN (<c>Vector256.Max</c> costs eight instructions for IEEE NaN and -0 rules).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<double> MaxOrSecond(Vector256<double> a, Vector256<double> b) =>
        Avx.IsSupported ? Avx.Max(a, b) : Vector256.ConditionalSelect(Vector256.GreaterThan(a, b), a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> NegatedMultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAddNegated(a, b, c) : c - a * b;

    /// <summary>
    /// Adds the upper triangle of the Gram matrix of the K rows at <paramref name="rows"/> over <paramref name="n"/>
    /// columns (a multiple of 8) into <paramref name="gram"/> (K x K, float64).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Gram(float** rows, int n, double* gram)
    {
        int k = _k, kp = _kp;
        var block = _blockGram;
        for (int i0 = 0; i0 < kp; i0 += 4)
            for (int j0 = i0; j0 < kp; j0 += 2)
                Tile(rows[i0], rows[i0 + 1], rows[i0 + 2], rows[i0 + 3], rows[j0], rows[j0 + 1], n, block + i0 * kp + j0, kp);

        bool exact = true;
        for (int i = 0; i < k && exact; i++)
        {
            double diagonal = block[i * kp + i];
            if (!(diagonal >= GramUnderflow) || !double.IsFinite(diagonal)) exact = false;
            for (int j = i + 1; j < k && exact; j++)
                if (!double.IsFinite(block[i * kp + j])) exact = false;
        }

        if (!exact)
        {
            GramFloat64(rows, n, gram);
            return;
        }

        for (int i = 0; i < k; i++)
            for (int j = i; j < k; j++)
                gram[i * k + j] += block[i * kp + j];
    }

    /// <summary>The same upper triangle with every product and sum in float64 (float32 products are exact there).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void GramFloat64(float** rows, int n, double* gram)
    {
        int k = _k;
        for (int i = 0; i < k; i++)
            for (int j = i; j < k; j++)
            {
                float* a = rows[i], b = rows[j];
                var sum = Vector256<double>.Zero;
                for (int c = 0; c < n; c += 4)
                {
                    var x = Vector256.WidenLower(Vector128.Load(a + c).ToVector256Unsafe());
                    var y = Vector256.WidenLower(Vector128.Load(b + c).ToVector256Unsafe());
                    sum += x * y;
                }

                gram[i * k + j] += Vector256.Sum(sum);
            }
    }

    /// <summary>
    /// Rows a0..a3 against rows b0, b1 over <paramref name="n"/> columns: 8 float32 FMA accumulators, then each sum in
    /// float64 into <paramref name="target"/>[a * stride + b].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(float* a0, float* a1, float* a2, float* a3, float* b0, float* b1, int n, double* target, int stride)
    {
        Vector256<float> s00 = default, s01 = default, s10 = default, s11 = default,
            s20 = default, s21 = default, s30 = default, s31 = default;
        for (int c = 0; c < n; c += 8)
        {
            var y0 = Vector256.Load(b0 + c);
            var y1 = Vector256.Load(b1 + c);
            var x = Vector256.Load(a0 + c);
            s00 = MultiplyAdd(x, y0, s00);
            s01 = MultiplyAdd(x, y1, s01);
            x = Vector256.Load(a1 + c);
            s10 = MultiplyAdd(x, y0, s10);
            s11 = MultiplyAdd(x, y1, s11);
            x = Vector256.Load(a2 + c);
            s20 = MultiplyAdd(x, y0, s20);
            s21 = MultiplyAdd(x, y1, s21);
            x = Vector256.Load(a3 + c);
            s30 = MultiplyAdd(x, y0, s30);
            s31 = MultiplyAdd(x, y1, s31);
        }

        target[0] = Sum(s00);
        target[1] = Sum(s01);
        target[stride] = Sum(s10);
        target[stride + 1] = Sum(s11);
        target[2 * stride] = Sum(s20);
        target[2 * stride + 1] = Sum(s21);
        target[3 * stride] = Sum(s30);
        target[3 * stride + 1] = Sum(s31);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double Sum(Vector256<float> x) => Vector256.Sum(Vector256.WidenLower(x) + Vector256.WidenUpper(x));

    /// <summary>float32 eps (2^-23).</summary>
    private const float FloatEpsilon = 1.1920929e-7f;

    /// <summary>The fast path leaves to float64 the columns whose spread is within this many float32 eps of their mean.</summary>
    private const float Margin = 32;

    /// <summary>
    /// A leave-one-out sum of squares is a downdate of the full one, <c>SS - K / (K - 1) d_i^2</c>, unless minibatch i
    /// carries more than 1 - this of SS: then the downdate cancels, and it is summed from the other K - 1 values.
    /// </summary>
    private const float Downdate = 1f / 16;

    /// <summary>
    /// The GSNR sums of a block's <paramref name="n"/> columns at <see cref="_rows"/>, 8 columns at a time: in float32
    /// where it decides as float64 would, else with <see cref="GsnrKernel.Exact"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Gsnr(int n)
    {
        int k = _k;
        var values = _values;
        var deviations = _deviations;
        bool fast = _epsilon == 0 && k >= 3 && Vector256.IsHardwareAccelerated;
        float kf = k;
        var invK = Vector256.Create(1f / k);
        var downdate = Vector256.Create(kf / (k - 1));
        // var <= (Margin eps mean)^2, with var = SS / (K - 1).
        var spread = Vector256.Create(Margin * FloatEpsilon * Margin * FloatEpsilon * (k - 1));
        var keep = Vector256.Create(1 - Downdate);
        // looVar <= (Margin eps looMean)^2 with looVar = looSS / (K - 2), looMean = looSum / (K - 1).
        var looSpread = Vector256.Create(Margin * FloatEpsilon * Margin * FloatEpsilon * (k - 2) / ((k - 1f) * (k - 1f)));
        var zero = Vector256<float>.Zero;
        for (int c = 0; c < n; c += 8)
        {
            if (!fast)
            {
                _exact.Add(_rows, c);
                ExactVectors++;
                continue;
            }

            // The largest |value| as the largest bit pattern of |value| (one integer max; NaN above every number).
            var first = Vector256.Load(_rows[0] + c);
            var maxAbsBits = Vector256.Abs(first).AsInt32();
            var equal = Vector256<float>.AllBitsSet;
            values[0] = first;
            for (int i = 1; i < k; i++)
            {
                var v = Vector256.Load(_rows[i] + c);
                values[i] = v;
                maxAbsBits = Vector256.Max(maxAbsBits, Vector256.Abs(v).AsInt32());
                equal &= Vector256.Equals(v, first);
            }

            var maxAbs = maxAbsBits.AsSingle();

            if (equal.AsInt32() == Vector256<int>.AllBitsSet) continue;   // 8 constant columns (dead units); compared as integers (all-ones floats are NaN)
            var varies = ~equal;

            // Scale each column by the power of two that brings its largest value into [1, 2): exact, and its squares fit float32.
            var exponent = Vector256.ShiftRightLogical(maxAbs.AsInt32(), 23);
            var badExponent = (Vector256.Equals(exponent, Vector256<int>.Zero) & ~Vector256.Equals(maxAbs, zero).AsInt32())
                | Vector256.GreaterThan(exponent, Vector256.Create(252));
            var scale = Vector256.ShiftLeft(Vector256.Create(254) - Vector256.Max(exponent, Vector256<int>.One), 23).AsSingle();

            // Centred on the first value (exact for values within a factor 2 of it), then two passes.
            // y_i = scale x_i is exact, so x_i scale - y0 rounds once, as y_i - y0 does (the values stay unscaled in _values).
            // Two chains of sums (even and odd minibatches), so that consecutive additions do not wait on each other.
            var y0 = first * scale;
            var zSum0 = zero;
            var zSum1 = zero;
            int pairs = k & ~1;
            for (int i = 0; i < pairs; i += 2)
            {
                zSum0 += MultiplySubtract(values[i], scale, y0);
                zSum1 += MultiplySubtract(values[i + 1], scale, y0);
            }

            if (pairs < k) zSum0 += MultiplySubtract(values[pairs], scale, y0);
            var zMean = (zSum0 + zSum1) * invK;
            var squares0 = zero;
            var squares1 = zero;
            var maxSquareBits = Vector256<int>.Zero;
            for (int i = 0; i < pairs; i += 2)
            {
                var d0 = MultiplySubtract(values[i], scale, y0) - zMean;
                var d1 = MultiplySubtract(values[i + 1], scale, y0) - zMean;
                deviations[i] = d0;
                deviations[i + 1] = d1;
                var e0 = d0 * d0;
                var e1 = d1 * d1;
                squares0 += e0;
                squares1 += e1;
                maxSquareBits = Vector256.Max(maxSquareBits, Vector256.Max(e0.AsInt32(), e1.AsInt32()));
            }

            if (pairs < k)
            {
                var d = MultiplySubtract(values[pairs], scale, y0) - zMean;
                deviations[pairs] = d;
                squares0 += d * d;
                maxSquareBits = Vector256.Max(maxSquareBits, (d * d).AsInt32());
            }

            var squares = squares0 + squares1;
            var maxSquare = maxSquareBits.AsSingle();

            var mean = y0 + zMean;
            var sum = mean * kf;
            if (((badExponent.AsSingle() | Vector256.LessThanOrEqual(squares, spread * mean * mean)) & varies) != zero)
            {
                _exact.Add(_rows, c);
                ExactVectors++;
                continue;
            }

            // mean^2 / var = (K - 1) mean^2 / SS; looMean^2 / looVar = (K - 2) / (K - 1)^2 looSum^2 / looSS (constants at the flush).
            // Constant columns, and excluded leave-one-out columns, get SS = 1 and a zero numerator: nothing added, no division by 0.
            var keepSquares = keep * squares;
            var dominant = Vector256.GreaterThanOrEqual(downdate * maxSquare, keepSquares) & varies;
            // Where no minibatch dominates, each leave-one-out sum of squares keeps more than Downdate of SS; and looSum is
            // at most |sum| + max |y|. When that bound is clear of the threshold everywhere, no column needs a closer look.
            var looMax = Vector256.Abs(sum) + maxAbs * scale;
            var near = Vector256.LessThanOrEqual(squares * Vector256.Create(Downdate), looSpread * looMax * looMax) & varies;
            var looFast = _looFast;
            var squaresPadded = squares + (Vector256<float>.One & ~varies);   // SS is exactly 0 in the constant columns
            var meanVaries = mean & varies;
            if ((dominant | near) == zero)
            {
                var looMean = meanVaries * Vector256.Create(kf - 1);   // sum - y_i = (K - 1) mean - d_i (0 in a constant column)
                for (int i = 0; i < k; i++)
                {
                    var d = deviations[i];
                    var looSum = looMean - d;
                    var looSS = NegatedMultiplyAdd(downdate * d, d, squaresPadded);
                    looFast[i] = MultiplyAdd(looSum * looSum, Reciprocal(looSS), looFast[i]);
                }
            }
            else if (!LeaveOneOutCareful(scale, varies, sum, squares, keepSquares, dominant, looSpread, downdate))
            {
                _exact.Add(_rows, c);
                ExactVectors++;
                continue;
            }

            _ratioFast += meanVaries * meanVaries * Reciprocal(squaresPadded);
            _countFast += Vector256<float>.One & varies;
            if (++_fastVectors == 32) FlushGsnr();
        }
    }

    /// <summary>
    /// The leave-one-out sums of a vector where a minibatch dominates some column or a column may sit near the
    /// definition's threshold: each leave-one-out sum of squares downdated, or summed directly where minibatch i carries
    /// more than 1 - <see cref="Downdate"/> of SS, then checked against the threshold column by column. Adds the leave-one-out
    /// ratios to the fast sums and returns true, or adds nothing and returns false when float32 cannot decide as float64 would.
    /// </summary>
    /// <summary>2^-100: below it a leave-one-out sum of squares of scaled values (at most about 4) is left to float64.</summary>
    private static readonly Vector256<float> TinySquares = Vector256.Create(MathF.Pow(2, -100));

    private bool LeaveOneOutCareful(Vector256<float> scale, Vector256<float> varies, Vector256<float> sum, Vector256<float> squares,
        Vector256<float> keepSquares, Vector256<float> dominant, Vector256<float> looSpread, Vector256<float> downdate)
    {
        int k = _k;
        var zero = Vector256<float>.Zero;
        var values = _values;
        var deviations = _deviations;
        var looSums = _looSums;
        var looSquares = _looSquares;
        for (int i = 0; i < k; i++) values[i] *= scale;
        bool anyDominant = dominant != zero;
        var looHard = zero;
        var anyExcluded = zero;
        for (int i = 0; i < k; i++)
        {
            var d = deviations[i];
            var looSum = sum - values[i];
            var looSS = NegatedMultiplyAdd(downdate * d, d, squares);
            if (anyDominant)
            {
                var dominantHere = Vector256.GreaterThanOrEqual(downdate * d * d, keepSquares) & varies;
                if (dominantHere != zero)
                {
                    var (directSum, directSS) = LeaveOneOut(i);
                    looSum = Vector256.ConditionalSelect(dominantHere, directSum, looSum);
                    looSS = Vector256.ConditionalSelect(dominantHere, directSS, looSS);
                    // The other K - 1 values all equal (all 0 in a sparse column): no noise, excluded by the definition.
                    anyExcluded |= Vector256.Equals(looSS, zero) & dominantHere;
                }
            }

            looSums[i] = looSum;
            looSquares[i] = looSS;
            // Also hard: a leave-one-out sum of squares so small (the other K - 1 values nearly all 0 beside a tiny one) that
            // looSum^2 and its threshold underflow float32 and its reciprocal overflows; 0 x infinity was a NaN ratio.
            looHard |= Vector256.GreaterThan(looSS, zero)
                & (Vector256.LessThanOrEqual(looSS, looSpread * looSum * looSum) | Vector256.LessThan(looSS, TinySquares));
        }

        if ((looHard & varies) != zero) return false;

        var looFast = _looFast;
        bool excludes = (anyExcluded & varies) != zero;
        for (int i = 0; i < k; i++)
        {
            var looSS = looSquares[i];
            var counted = varies & ~Vector256.Equals(looSS, zero);
            var looSum = looSums[i] & counted;
            looFast[i] += looSum * looSum * Reciprocal(Vector256.ConditionalSelect(counted, looSS, Vector256<float>.One));
            if (excludes) _looExcluded[i] += varies & ~counted & Vector256<float>.One;
        }

        return true;
    }

    /// <summary>
    /// The sum and the sum of squared deviations of the K - 1 scaled values at <see cref="_values"/> other than i,
    /// centred on one of them (exact differences for values within a factor 2 of it).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private (Vector256<float> Sum, Vector256<float> Squares) LeaveOneOut(int i)
    {
        int k = _k;
        var values = _values;
        var reference = values[i == 0 ? 1 : 0];
        var zSum = Vector256<float>.Zero;
        for (int j = 0; j < k; j++)
            if (j != i) zSum += values[j] - reference;
        var zMean = zSum * Vector256.Create(1f / (k - 1));
        var squares = Vector256<float>.Zero;
        for (int j = 0; j < k; j++)
        {
            if (j == i) continue;
            var e = values[j] - reference - zMean;
            squares = MultiplyAdd(e, e, squares);
        }

        return (MultiplyAdd(reference, Vector256.Create((float)(k - 1)), zSum), squares);
    }

    /// <summary>Moves the fast path's float32 lane sums into the float64 sums, with their constant factors.</summary>
    private void FlushGsnr()
    {
        int k = _k;
        _gsnr[0] += Sum(_ratioFast) * (k - 1);
        double count = Sum(_countFast);
        _gsnr[1] += count;
        double loo = Math.Max(k - 2, 1) / ((k - 1.0) * (k - 1.0));
        for (int i = 0; i < k; i++)
        {
            _gsnr[3 + i] += Sum(_looFast[i]) * loo;
            // A column the fast path takes varies with every minibatch left out, but the one nonzero of a sparse column.
            _gsnr[3 + k + i] += count - Sum(_looExcluded[i]);
            _looFast[i] = _looExcluded[i] = Vector256<float>.Zero;
        }

        _ratioFast = _countFast = Vector256<float>.Zero;
        _fastVectors = 0;
    }
}

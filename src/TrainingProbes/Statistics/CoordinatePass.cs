using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TrainingProbes.Statistics.SimdMath;

namespace TrainingProbes.Statistics;

/// <summary>
/// The coordinate pass of <see cref="WindowKernel"/>: <see cref="CoordinateSums"/>' GSNR sums (R, U and the K
/// influences) of a block's columns, 8 at a time, and per column the fold of F and the fisher D (written in
/// <see cref="Whitening"/>). Two paths compute the same definition:
/// <list type="bullet">
/// <item><description>the fast one, in float32 (<see cref="Fast"/>): each column scaled by the power of two that brings
/// its largest value into [1, 2) (exact; the ratio and the influences do not change with a column's scale) and centred
/// on its first value;</description></item>
/// <item><description>the definition in float64 (<see cref="Exact"/>), for the columns where float32 could decide
/// differently from float64 (a spread within 32 float32 eps of the mean; subnormal, huge or non-finite values), and for
/// every column when epsilon is nonzero or K &lt; 3.</description></item>
/// </list>
/// The fast path's float32 lane sums move into float64 every 32 vectors (<see cref="Flush"/>).
/// </summary>
internal sealed unsafe class CoordinatePass
{
    /// <summary>How far ahead of the pass each row is prefetched, in floats.</summary>
    private const int PrefetchAhead = 128;

    /// <summary>float32 eps (2^-23).</summary>
    private const float FloatEpsilon = 1.1920929e-7f;

    private readonly int _k;
    private readonly double _epsilon;
    private readonly bool _withInfluence;              // K >= 5: the influences are defined
    private readonly Vector256<double>* _values;       // [K]: 4 columns of each row (float64 path)
    private readonly Vector256<double>* _influence;    // [K]
    private readonly Vector256<float>* _values32;      // [K]: 8 columns of each row (float32 path)
    private readonly Vector256<float>* _deviations32;  // [K]
    private readonly Vector256<float>* _influence32;   // [K]: float32 lane sums over up to 32 vectors
    private Vector256<double> _ratio, _varying, _fisherSum;
    private Vector256<float> _ratio32, _varying32;
    private int _fastVectors;
    private float** _rows;   // the block's rows

    public CoordinatePass(int k, double epsilon, PinnedScratch scratch)
    {
        _k = k;
        _epsilon = epsilon;
        _withInfluence = k >= 5;
        _values = (Vector256<double>*)scratch.Allocate<double>(4 * k);
        _influence = (Vector256<double>*)scratch.Allocate<double>(4 * k);
        _values32 = (Vector256<float>*)scratch.Allocate<float>(8 * k);
        _deviations32 = (Vector256<float>*)scratch.Allocate<float>(8 * k);
        _influence32 = (Vector256<float>*)scratch.Allocate<float>(8 * k);
    }

    /// <summary>Clears the sums, for a new call of <see cref="WindowKernel.Accumulate"/>.</summary>
    public void Reset()
    {
        for (int i = 0; i < _k; i++)
        {
            _influence[i] = Vector256<double>.Zero;
            _influence32[i] = Vector256<float>.Zero;
        }

        _ratio = _varying = _fisherSum = Vector256<double>.Zero;
        _ratio32 = _varying32 = Vector256<float>.Zero;
        _fastVectors = 0;
    }

    /// <summary>Adds the sums since <see cref="Reset"/> to the GSNR sums <paramref name="gsnr"/> (N grows by <paramref name="count"/>); returns the sum of the new F.</summary>
    public double AddTo(Span<double> gsnr, long count)
    {
        Flush();
        gsnr[0] += Vector256.Sum(_ratio);
        gsnr[1] += Vector256.Sum(_varying);
        gsnr[2] += count;
        for (int i = 0; i < _k; i++) gsnr[3 + i] += Vector256.Sum(_influence[i]);
        return Vector256.Sum(_fisherSum);
    }

    /// <summary>
    /// The pass over a block of <paramref name="n"/> columns (a multiple of 8) whose row i starts at
    /// <paramref name="rows"/>[i]; with <paramref name="fisher"/> (F of the block's columns) it folds F and writes the
    /// fisher D into <paramref name="d"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Run(float** rows, int n, double* fisher, float* d, in WindowKernel.State state)
    {
        _rows = rows;
        if (_epsilon != 0 || _k < 3)
        {
            for (int c = 0; c < n; c += 8) Exact(c, fisher, d, state);
            return;
        }

        var scales = new Scales(_k, state.StoredEpsilon);
        for (int c = 0; c < n; c += 8)
            if (!Fast(c, fisher, d, state, scales)) Exact(c, fisher, d, state);
    }

    /// <summary>The fast path's constants for K and the stored dtype.</summary>
    private readonly struct Scales(int k, double storedEpsilon)
    {
        /// <summary>Varies where SS &gt; this m^2 (the definition's rule).</summary>
        public Vector256<float> Threshold { get; } = Squared((float)(CoordinateSums.RoundingFactor * storedEpsilon), k);

        /// <summary>Goes to the float64 path where 0 &lt; SS &lt;= this m^2: float32 could decide otherwise.</summary>
        public Vector256<float> Hard { get; } = Squared(32 * FloatEpsilon, k);

        public Vector256<float> InverseK { get; } = Vector256.Create(1f / k);
        public Vector256<float> RatioScale { get; } = Vector256.Create((float)(k - 1));
        public Vector256<float> WInverse { get; } = Vector256.Create((float)(k * (k - 2.0) / (k - 1.0)));
        public Vector256<float> AlphaScale { get; } = Vector256.Create(2f / (k - 1));
        public Vector256<float> BetaScale { get; } = Vector256.Create(k >= 5 ? -1f / (k - 2) : 0f);

        /// <summary>(K - 1) r^2: SS's bound for a spread of r times the mean.</summary>
        private static Vector256<float> Squared(float r, int k) => Vector256.Create(r * r * (k - 1));
    }

    /// <summary>The fast path for columns [c, c + 8); false, having added nothing, where they need the float64 path.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool Fast(int c, double* fisher, float* d, in WindowKernel.State state, in Scales scales)
    {
        var maxBits = Load(c);
        var exponent = Vector256.ShiftRightLogical(maxBits, 23);
        var bad = (Vector256.Equals(exponent, Vector256<int>.Zero) & ~Vector256.Equals(maxBits, Vector256<int>.Zero))
            | Vector256.GreaterThan(exponent, Vector256.Create(252));
        if (bad != Vector256<int>.Zero) return false;   // subnormal, huge or non-finite values

        var lifted = Vector256.Max(exponent, Vector256<int>.One);
        var scale = Vector256.ShiftLeft(Vector256.Create(254) - lifted, 23).AsSingle();   // 2^(127 - e)
        var y0 = _values32[0] * scale;
        var zMean = Centre(scale, y0, scales.InverseK, out var squares);
        var mean = y0 + zMean;
        var meanSquare = mean * mean;
        var zero = Vector256<float>.Zero;
        if ((Vector256.LessThanOrEqual(squares, scales.Hard * meanSquare) & Vector256.GreaterThan(squares, zero)) != zero) return false;

        var varies = Vector256.GreaterThan(squares, scales.Threshold * meanSquare);
        if (varies != zero) AddVarying(varies, squares, mean, meanSquare, scales);
        if (fisher is null) return true;
        // The mean square, unscaled in float64: (SS / K + m^2) x 2^(2 (e - 127)), exact powers of two.
        var meanSquares = MultiplyAdd(squares, scales.InverseK, meanSquare);
        var unscale = Vector256.ShiftLeft(lifted, 23).AsSingle();   // 2^(e - 127)
        _fisherSum += Whitening.Fold(fisher + c, Vector256.WidenLower(meanSquares), Vector256.WidenLower(unscale), state.Decay);
        _fisherSum += Whitening.Fold(fisher + c + 4, Vector256.WidenUpper(meanSquares), Vector256.WidenUpper(unscale), state.Decay);
        Whitening.FisherD(fisher + c, d + c, state.Floor, state.Bias);
        return true;
    }

    /// <summary>Loads columns [c, c + 8) of each row; returns the largest |value| per column as the largest bit pattern of |value| (NaN above every number).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<int> Load(int c)
    {
        // K rows are K streams 4 P bytes apart, more than the hardware prefetcher follows: ask for each 512 bytes ahead.
        if (Sse.IsSupported)
            for (int i = 0; i < _k; i++) Sse.Prefetch0(_rows[i] + c + PrefetchAhead);

        var first = Vector256.Load(_rows[0] + c);
        var maxBits = Vector256.Abs(first).AsInt32();
        _values32[0] = first;
        for (int i = 1; i < _k; i++)
        {
            var v = Vector256.Load(_rows[i] + c);
            _values32[i] = v;
            maxBits = Vector256.Max(maxBits, Vector256.Abs(v).AsInt32());
        }

        return maxBits;
    }

    /// <summary>
    /// The deviations of the scaled values from their mean, into the deviations scratch, and their sum of squares; returns
    /// the mean's distance from <paramref name="y0"/>. y_i - y0 rounds once (x_i scale is exact); four chains of sums, so
    /// that additions do not wait on each other.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<float> Centre(Vector256<float> scale, Vector256<float> y0, Vector256<float> inverseK, out Vector256<float> squares)
    {
        int k = _k;
        var values = _values32;
        var deviations = _deviations32;
        var zero = Vector256<float>.Zero;
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
        var zMean = (s0 + s1 + (s2 + s3)) * inverseK;
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

        squares = s0 + s1 + (s2 + s3);
        return zMean;
    }

    /// <summary>Adds the varying columns' ratio, count and influences to the float32 lane sums (one reciprocal per column).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void AddVarying(Vector256<float> varies, Vector256<float> squares, Vector256<float> mean, Vector256<float> meanSquare, in Scales scales)
    {
        var reciprocal = Reciprocal(Vector256.ConditionalSelect(varies, squares, Vector256<float>.One));
        _ratio32 += (scales.RatioScale * meanSquare * reciprocal) & varies;
        _varying32 += Vector256<float>.One & varies;
        if (_withInfluence)
        {
            var inverse = (reciprocal * scales.WInverse) & varies;
            var alpha = mean * inverse * scales.AlphaScale;
            var beta = meanSquare * inverse * inverse * scales.BetaScale;
            var influence = _influence32;
            for (int i = 0; i < _k; i++)
            {
                var e = _deviations32[i];
                influence[i] = MultiplyAdd(e, MultiplyAdd(beta, e, alpha), influence[i]);
            }
        }

        if (++_fastVectors == 32) Flush();
    }

    /// <summary>
    /// <see cref="CoordinateSums"/>' definition for columns [c, c + 8), in float64: the columns float32 cannot decide as
    /// float64 would, and every column when epsilon is nonzero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Exact(int c, double* fisher, float* d, in WindowKernel.State state)
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
        var wScale = Vector256.Create(_withInfluence ? (k - 1.0) / (k * (k - 2.0)) : 0);
        var alphaScale = Vector256.Create(2.0 / (k - 1));
        var betaScale = Vector256.Create(_withInfluence ? -1.0 / (k - 2) : 0);
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
                if (_withInfluence)
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

            if (fisher is not null) _fisherSum += Whitening.Fold(fisher + c + half, squares * invK + meanSquare, one, state.Decay);
        }

        if (fisher is not null) Whitening.FisherD(fisher + c, d + c, state.Floor, state.Bias);
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
}

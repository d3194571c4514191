using System.Numerics;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The GSNR sums of a window on the CPU, read in place from its float32 gradients, with the same definitions as the
/// tensor path (<c>FirstOrderFamily.AccumulateGsnr</c>): a coordinate varies when its K values are not all equal and
/// their spread is above 8 float32 eps of their mean; with minibatch i left out, also when the other K - 1 values are
/// not all 0 and the leave-one-out variance (of those K - 1 values) is above 8 eps of the leave-one-out mean.
/// <see cref="WindowKernel"/> computes them in float32 where that decides as float64 does, and with
/// <see cref="Exact"/> (every value widened to float64) elsewhere.
/// Torch on a CPU needs about twenty passes over K x P float64 temporaries for the same sums.
/// </summary>
internal static unsafe class GsnrKernel
{
    private const double RoundingFactor = 8;
    private static readonly double FloatEpsilon = Math.Pow(2, -23);

    /// <summary>Whether the kernel can read <paramref name="gradients"/> ([K, P], CPU, float32, contiguous).</summary>
    public static bool Supports(Tensor gradients) => WindowKernel.Supports(gradients);

    /// <summary>
    /// Adds the sums <c>[R, U, N, R_(0..K-1), U_(0..K-1)]</c> of columns [<paramref name="start"/>, <paramref name="start"/> +
    /// <paramref name="count"/>) of <paramref name="gradients"/> into <paramref name="sums"/> (length 3 + 2K).
    /// </summary>
    public static void Accumulate(Tensor gradients, long start, long count, double epsilon, Span<double> sums)
    {
        int k = (int)gradients.shape[0];
        new WindowKernel(k, epsilon).Accumulate(WindowKernel.Address<float>(gradients), gradients.shape[1], start, count,
            default, euclidean: -1, fisher: -1, adaptive: -1, gsnr: 0, sums);
    }

    /// <summary>
    /// The GSNR sums of 8 columns at a time with every value widened to float64 (two vectors of 4), accumulated in
    /// float64: the reference formulas, for the columns where float32 could decide differently.
    /// </summary>
    public sealed class Exact
    {
        private readonly int _k;
        private readonly double _epsilon;
        private readonly Vector256<double>[] _values, _high, _looRatio, _looCount;
        private Vector256<double> _ratio, _varying;

        public Exact(int k, double epsilon)
        {
            _k = k;
            _epsilon = epsilon;
            _values = new Vector256<double>[k];
            _high = new Vector256<double>[k];
            _looRatio = new Vector256<double>[k];
            _looCount = new Vector256<double>[k];
        }

        public void Clear()
        {
            Array.Clear(_looRatio);
            Array.Clear(_looCount);
            _ratio = _varying = Vector256<double>.Zero;
        }

        /// <summary>Adds columns [c, c + 8) of the K rows at <paramref name="rows"/>.</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public void Add(float** rows, int c)
        {
            for (int i = 0; i < _k; i++)
            {
                var v = Vector256.Load(rows[i] + c);
                _values[i] = Vector256.WidenLower(v);
                _high[i] = Vector256.WidenUpper(v);
            }

            Block(_values);
            Block(_high);
        }

        /// <summary>Adds R, U, R_(i), U_(i) (not N) into <paramref name="sums"/> [R, U, N, R_(i), U_(i)].</summary>
        public void AddTo(Span<double> sums)
        {
            int k = _k;
            sums[0] += Vector256.Sum(_ratio);
            sums[1] += Vector256.Sum(_varying);
            for (int i = 0; i < k; i++)
            {
                sums[3 + i] += Vector256.Sum(_looRatio[i]);
                sums[3 + k + i] += Vector256.Sum(_looCount[i]);
            }
        }

        private void Block(Vector256<double>[] x)
        {
            int k = _k;
            double invK = 1.0 / k, invK1 = 1.0 / (k - 1), invK2 = 1.0 / Math.Max(k - 2, 1);
            double rounding = RoundingFactor * FloatEpsilon;
            var one = Vector256<double>.One;
            var zero = Vector256<double>.Zero;
            var sum = zero;
            var min = Vector256.Create(double.PositiveInfinity);
            var max = Vector256.Create(double.NegativeInfinity);
            for (int i = 0; i < k; i++)
            {
                sum += x[i];
                min = Vector256.Min(min, x[i]);
                max = Vector256.Max(max, x[i]);
            }

            var mean = sum * invK;
            var squares = zero;
            for (int i = 0; i < k; i++)
            {
                var d = x[i] - mean;
                squares += d * d;
            }

            var variance = squares * invK1;
            var scale = Vector256.Abs(mean) * rounding;
            var varies = ~Vector256.Equals(max, min) & Vector256.GreaterThan(variance, scale * scale);
            if (varies == zero) return;
            var eps = Vector256.Create(_epsilon);
            _ratio += Vector256.ConditionalSelect(varies, mean * mean / (variance + eps), zero);
            _varying += Vector256.ConditionalSelect(varies, one, zero);
            for (int i = 0; i < k; i++)
            {
                // The other K - 1 values summed directly: a downdate of the full sums cancels when minibatch i is an outlier.
                var looSum = zero;
                for (int j = 0; j < k; j++)
                    if (j != i) looSum += x[j];
                var looMean = looSum * invK1;
                var looSquares = zero;
                for (int j = 0; j < k; j++)
                {
                    if (j == i) continue;
                    var e = x[j] - looMean;
                    looSquares += e * e;
                }

                var looVariance = looSquares * invK2;
                var looScale = Vector256.Abs(looMean) * rounding;
                // Other K - 1 values all 0 give a variance of exactly 0, which is not above the threshold.
                var looVaries = varies & Vector256.GreaterThan(looVariance, looScale * looScale);
                _looRatio[i] += Vector256.ConditionalSelect(looVaries, looMean * looMean / (looVariance + eps), zero);
                _looCount[i] += Vector256.ConditionalSelect(looVaries, one, zero);
            }
        }
    }
}

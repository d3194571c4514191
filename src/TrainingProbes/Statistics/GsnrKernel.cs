using System.Numerics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The GSNR sums of a window on the CPU in one pass over its float32 gradients, in managed code: per coordinate the K
/// values are read once into registers (several coordinates per SIMD vector, widened to float64), and the mean, the
/// sum of squares, the ratio and its K leave-one-out ratios are formed there. The same definitions as the tensor path
/// (<c>FirstOrderFamily.AccumulateGsnr</c>): a coordinate varies when its K values are not all equal and their spread
/// is above 8 float32 eps of their mean; with minibatch i left out, also when the other K - 1 values are not all 0.
/// Torch on a CPU needs about twenty passes over K x P float64 temporaries for the same sums.
/// </summary>
internal static unsafe class GsnrKernel
{
    private const double RoundingFactor = 8;
    private static readonly double FloatEpsilon = Math.Pow(2, -23);

    /// <summary>Whether the kernel can read <paramref name="gradients"/> ([K, P], CPU, float32, contiguous).</summary>
    public static bool Supports(Tensor gradients) =>
        gradients.device_type == DeviceType.CPU && gradients.dtype == ScalarType.Float32 && gradients.is_contiguous() && gradients.dim() == 2;

    /// <summary>
    /// Adds the sums <c>[R, U, N, R_(0..K-1), U_(0..K-1)]</c> of columns [<paramref name="start"/>, <paramref name="start"/> +
    /// <paramref name="count"/>) of <paramref name="gradients"/> into <paramref name="sums"/> (length 3 + 2K).
    /// </summary>
    public static void Accumulate(Tensor gradients, long start, long count, double epsilon, Span<double> sums)
    {
        int k = (int)gradients.shape[0];
        var rows = new float*[k];
        for (int i = 0; i < k; i++)
        {
            using var row = gradients[i];
            var span = MemoryMarshal.Cast<byte, float>(row.bytes);
            rows[i] = (float*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetReference(span)) + start;
        }

        int w = Vector<double>.Count;
        var values = new Vector<double>[k];
        var looRatio = new Vector<double>[k];
        var looCount = new Vector<double>[k];
        var ratio = Vector<double>.Zero;
        var varying = Vector<double>.Zero;
        double kd = k, invK = 1.0 / k, invK1 = 1.0 / (k - 1), invK2 = 1.0 / Math.Max(k - 2, 1), downdate = kd / (k - 1);
        double rounding = RoundingFactor * FloatEpsilon;

        long c = 0;
        int floats = Vector<float>.Count;   // 2w: one float vector widens into two double vectors
        var high = new Vector<double>[k];
        for (; c + floats <= count; c += floats)
        {
            for (int i = 0; i < k; i++)
                Vector.Widen(System.Runtime.CompilerServices.Unsafe.ReadUnaligned<Vector<float>>(rows[i] + c), out values[i], out high[i]);
            Block(values);
            Block(high);
        }

        void Block(Vector<double>[] x)
        {
            var sum = Vector<double>.Zero;
            var min = new Vector<double>(double.PositiveInfinity);
            var max = new Vector<double>(double.NegativeInfinity);
            var nonzero = Vector<double>.Zero;
            for (int i = 0; i < k; i++)
            {
                sum += x[i];
                min = Vector.Min(min, x[i]);
                max = Vector.Max(max, x[i]);
                nonzero += Vector.ConditionalSelect(Vector.Equals(x[i], Vector<double>.Zero), Vector<double>.Zero, Vector<double>.One);
            }

            var mean = sum * invK;
            var squares = Vector<double>.Zero;
            for (int i = 0; i < k; i++)
            {
                var d = x[i] - mean;
                squares += d * d;
            }

            var variance = squares * invK1;
            var scale = Vector.Abs(mean) * rounding;
            var varies = Vector.BitwiseAnd(Vector.OnesComplement(Vector.Equals(max, min)), Vector.GreaterThan(variance, scale * scale));
            if (Vector.EqualsAll(varies, Vector<long>.Zero)) return;
            var eps = new Vector<double>(epsilon);
            ratio += Vector.ConditionalSelect(varies, mean * mean / (variance + eps), Vector<double>.Zero);
            varying += Vector.ConditionalSelect(varies, Vector<double>.One, Vector<double>.Zero);
            for (int i = 0; i < k; i++)
            {
                var looMean = (sum - x[i]) * invK1;
                var d = x[i] - mean;
                var looVariance = (squares - d * d * downdate) * invK2;
                var self = Vector.ConditionalSelect(Vector.Equals(x[i], Vector<double>.Zero), Vector<double>.Zero, Vector<double>.One);
                var looScale = Vector.Abs(looMean) * rounding;
                var looVaries = Vector.BitwiseAnd(Vector.BitwiseAnd(varies, Vector.GreaterThan(nonzero - self, Vector<double>.Zero)),
                    Vector.GreaterThan(looVariance, looScale * looScale));
                looRatio[i] += Vector.ConditionalSelect(looVaries, looMean * looMean / (looVariance + eps), Vector<double>.Zero);
                looCount[i] += Vector.ConditionalSelect(looVaries, Vector<double>.One, Vector<double>.Zero);
            }
        }

        // The last columns, one at a time, with the same formulas.
        double tailRatio = 0, tailVarying = 0;
        var tailLoo = new double[2 * k];
        var x1 = new double[k];
        for (; c < count; c++)
        {
            double sum = 0, min = double.PositiveInfinity, max = double.NegativeInfinity;
            int nonzero = 0;
            for (int i = 0; i < k; i++)
            {
                double x = x1[i] = rows[i][c];
                sum += x;
                min = Math.Min(min, x);
                max = Math.Max(max, x);
                if (x != 0) nonzero++;
            }

            double mean = sum * invK, squares = 0;
            for (int i = 0; i < k; i++) squares += (x1[i] - mean) * (x1[i] - mean);
            double variance = squares * invK1, scale = Math.Abs(mean) * rounding;
            bool varies = max != min && variance > scale * scale;
            if (!varies) continue;
            tailRatio += mean * mean / (variance + epsilon);
            tailVarying++;
            for (int i = 0; i < k; i++)
            {
                double looMean = (sum - x1[i]) * invK1, d = x1[i] - mean;
                double looVariance = (squares - d * d * downdate) * invK2, looScale = Math.Abs(looMean) * rounding;
                bool othersNonzero = nonzero - (x1[i] != 0 ? 1 : 0) > 0;
                if (othersNonzero && looVariance > looScale * looScale)
                {
                    tailLoo[i] += looMean * looMean / (looVariance + epsilon);
                    tailLoo[k + i]++;
                }
            }
        }

        sums[0] += Vector.Sum(ratio) + tailRatio;
        sums[1] += Vector.Sum(varying) + tailVarying;
        sums[2] += count;
        for (int i = 0; i < k; i++)
        {
            sums[3 + i] += Vector.Sum(looRatio[i]) + tailLoo[i];
            sums[3 + k + i] += Vector.Sum(looCount[i]) + tailLoo[k + i];
        }
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TrainingProbes.Statistics;

/// <summary>
/// The Gram matrix of K float32 rows over a block of columns that stays in the L1 cache: 4 x 2 register tiles of float32
/// FMAs (8 columns per lane), each tile's sums widened into float64 at the end of the block (a few hundred columns, so a
/// float32 lane adds at most ~100 products). A block whose float32 sums are not finite (squares of gradients near 1e20
/// overflow), or which has a nonzero row whose float32 squared norm is below 2^-100 (squares of values near 1e-25
/// underflow), is summed in float64, where float32 products are exact.
/// </summary>
internal static unsafe class GramTiles
{
    /// <summary>A float32 squared norm below this may hold underflowed squares: the row is checked, and if nonzero summed in float64.</summary>
    private const double Underflow = 7.888609052210118e-31;   // 2^-100

    /// <summary>
    /// Adds the upper triangle of the Gram matrix of <paramref name="k"/> rows at <paramref name="rows"/> (padded with
    /// zero rows to <paramref name="kp"/>, a multiple of 4) over <paramref name="n"/> columns (a multiple of 8) into
    /// <paramref name="gram"/> (K x K, float64). <paramref name="scratch"/> holds kp x kp doubles.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Add(float** rows, int k, int kp, int n, double* scratch, double* gram)
    {
        for (int i0 = 0; i0 < kp; i0 += 4)
            for (int j0 = i0; j0 < kp; j0 += 2)
                Tile(rows[i0], rows[i0 + 1], rows[i0 + 2], rows[i0 + 3], rows[j0], rows[j0 + 1], n, scratch + i0 * kp + j0, kp);

        for (int i = 0; i < k; i++)
        {
            bool exact = !(scratch[i * kp + i] < Underflow) || IsZero(rows[i], n);
            for (int j = i; j < k && exact; j++) exact = double.IsFinite(scratch[i * kp + j]);
            if (!exact)
            {
                AddFloat64(rows, k, n, gram);
                return;
            }
        }

        for (int i = 0; i < k; i++)
            for (int j = i; j < k; j++)
                gram[i * k + j] += scratch[i * kp + j];
    }

    /// <summary>Whether a row's <paramref name="n"/> values (a multiple of 8) are all zero.</summary>
    private static bool IsZero(float* row, int n)
    {
        var any = Vector256<float>.Zero;
        for (int c = 0; c < n; c += 8) any |= Vector256.Load(row + c);
        return (any.AsInt32() & Vector256.Create(0x7fffffff)) == Vector256<int>.Zero;   // -0 is zero too
    }

    /// <summary>The same upper triangle with every product and sum in float64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AddFloat64(float** rows, int k, int n, double* gram)
    {
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

    /// <summary>Rows a0..a3 against rows b0, b1: 8 float32 FMA accumulators, then each sum in float64 into target[a * stride + b].</summary>
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : a * b + c;
}

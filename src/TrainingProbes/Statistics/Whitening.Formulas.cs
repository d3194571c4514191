using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The formulas of the whitening, each written once here and read by every pass: the fold of F, the fisher D, the
/// adaptive D and <c>h = D g</c>. Each has the forms its readers need: tensors (<see cref="CoordinateSums"/>,
/// <see cref="Chunk"/>, <see cref="Capture.GradientSketch"/>), and 8-column float32/float64 vectors with their scalar
/// fallback (the managed window pass, <see cref="WindowKernel"/>).
/// </summary>
internal sealed unsafe partial class Whitening
{
    /// <summary>
    /// Below this raised F (2^-250) a coordinate counts as having no Fisher information (D = 0): its F has decayed from
    /// gradients that stopped long ago, and its D would overflow float32.
    /// </summary>
    public const double SmallestFisher = 5.527147875260445e-76;

    /// <summary>Folds a block's mean squares into its F (float64, in place): <c>F &lt;- decay F + (1 - decay) q</c> where q is finite.</summary>
    public static void Fold(Tensor fisher, Tensor meanSquare, double decay)
    {
        using var scalars = new ScalarScope();
        var folded = fisher.mul(scalars[decay]).add_(meanSquare.mul(scalars[1 - decay]), Scalars.One);
        fisher.copy_(torch.where(meanSquare.isfinite(), folded, fisher));
    }

    /// <summary>The fisher D of a block whose parameter tensor has floor <paramref name="floor"/>, as a new tensor in <paramref name="dtype"/>.</summary>
    public static Tensor FisherD(Tensor fisher, double floor, double bias, ScalarType dtype)
    {
        using var scalars = new ScalarScope();
        var raised = (floor > 0 ? fisher.clamp_min(scalars[floor]) : fisher.clone()).mul_(scalars[bias]);
        return FisherD(fisher, raised, dtype);
    }

    /// <summary>
    /// The fisher D from F and its raised value <c>max(F, floor) x bias</c>: <c>1 / sqrt(raised)</c> where F &gt; 0 and
    /// raised &gt;= <see cref="SmallestFisher"/>, else 0; a new tensor in <paramref name="dtype"/>.
    /// </summary>
    private static Tensor FisherD(Tensor fisher, Tensor raised, ScalarType dtype)
    {
        using var scalars = new ScalarScope();
        return raised.rsqrt().masked_fill_(fisher.le(Scalars.Zero).logical_or_(raised.lt(scalars[SmallestFisher])), Scalars.Zero).to(dtype);
    }

    /// <summary>The fisher D of one coordinate (the scalar form of the vector one), rounded to float32.</summary>
    public static float FisherD(double fisher, double floor, double bias)
    {
        double raised = Math.Max(fisher, floor) * bias;
        return fisher > 0 && raised >= SmallestFisher ? (float)(1.0 / Math.Sqrt(raised)) : 0f;
    }

    /// <summary>The adaptive D, <c>|theta| + eta</c>, written into <paramref name="target"/> (theta converted to its dtype first); returns it.</summary>
    public static Tensor AdaptiveD(Tensor theta, Scalar eta, Tensor target) => target.copy_(theta).abs_().add_(eta, Scalars.One);

    /// <summary>The adaptive D as a new tensor in <paramref name="dtype"/>.</summary>
    public static Tensor AdaptiveD(Tensor theta, double eta, ScalarType dtype)
    {
        using var scalars = new ScalarScope();
        return AdaptiveD(theta, scalars[eta], torch.empty_like(theta, dtype: dtype));
    }

    /// <summary>F of 4 columns folded with their mean squares <c>q x unscale^2</c>, in place; F stays where that is not finite. Returns the new F.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Fold(double* fisher, Vector256<double> q, Vector256<double> unscale, double decay)
    {
        var square = q * unscale * unscale;
        var old = Vector256.Load(fisher);
        var f = Vector256.ConditionalSelect(Vector256.Equals(square - square, Vector256<double>.Zero),   // 0 where finite
            old * Vector256.Create(decay) + square * Vector256.Create(1 - decay), old);
        Vector256.Store(f, fisher);
        return f;
    }

    /// <summary>
    /// The fisher D of 8 columns into <paramref name="d"/>: with a refined reciprocal square root where the raised F is
    /// a normal float32, else <see cref="FisherD(double, double, double)"/> column by column in float64.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void FisherD(double* fisher, float* d, double floor, double bias)
    {
        var floors = Vector256.Create(floor);
        var biases = Vector256.Create(bias);
        var f0 = Vector256.Load(fisher);
        var f1 = Vector256.Load(fisher + 4);
        var r0 = Vector256.Max(f0, floors) * biases;
        var r1 = Vector256.Max(f1, floors) * biases;
        var low = Vector256.Create(1e-36);
        var high = Vector256.Create(1e36);
        // D is 0 where F <= 0, and where the raised F is too small for D to be a float32 (SmallestFisher).
        var smallest = Vector256.Create(SmallestFisher);
        var positive0 = Vector256.GreaterThan(f0, Vector256<double>.Zero) & Vector256.GreaterThanOrEqual(r0, smallest);
        var positive1 = Vector256.GreaterThan(f1, Vector256<double>.Zero) & Vector256.GreaterThanOrEqual(r1, smallest);
        var inRange = (~positive0 | (Vector256.GreaterThan(r0, low) & Vector256.LessThan(r0, high)))
            & (~positive1 | (Vector256.GreaterThan(r1, low) & Vector256.LessThan(r1, high)));
        if (inRange.AsInt64() != Vector256<long>.AllBitsSet)   // as integers: an all-ones double is NaN, never equal
        {
            for (int j = 0; j < 8; j++) d[j] = FisherD(fisher[j], floor, bias);
            return;
        }

        // Where F <= 0 the raised value is 1 (a finite root) and D is 0.
        var one = Vector256<double>.One;
        var raised = SimdMath.Narrow(Vector256.ConditionalSelect(positive0, r0, one), Vector256.ConditionalSelect(positive1, r1, one));
        var positive = SimdMath.Narrow(one & positive0, one & positive1);   // 1 where F > 0, else 0
        Vector256.Store(SimdMath.ReciprocalSqrt(raised) * positive, d);
    }

    /// <summary>The adaptive D of <paramref name="n"/> columns (a multiple of 8) into <paramref name="d"/>, in float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AdaptiveD(float* theta, float eta, float* d, int n)
    {
        var etas = Vector256.Create(eta);
        for (int c = 0; c < n; c += 8) Vector256.Store(Vector256.Abs(Vector256.Load(theta + c)) + etas, d + c);
    }

    /// <summary><c>h = D g</c> for <paramref name="k"/> rows of <paramref name="n"/> columns (a multiple of 8), into <paramref name="whitened"/>'s rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Apply(float** rows, float** whitened, int k, int n, float* d)
    {
        for (int i = 0; i < k; i++)
        {
            float* source = rows[i], target = whitened[i];
            for (int c = 0; c < n; c += 8) Vector256.Store(Vector256.Load(source + c) * Vector256.Load(d + c), target + c);
        }
    }
}

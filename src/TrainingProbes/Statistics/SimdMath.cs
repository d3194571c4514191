using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TrainingProbes.Statistics;

/// <summary>The float32 vector operations of the managed window pass, with the hardware's fused or estimated forms where it has them.</summary>
internal static class SimdMath
{
    /// <summary>Two float64 vectors rounded to one float32 vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Narrow(Vector256<double> low, Vector256<double> high) =>
        Avx.IsSupported ? Vector256.Create(Avx.ConvertToVector128Single(low), Avx.ConvertToVector128Single(high)) : Vector256.Narrow(low, high);

    /// <summary>1 / sqrt(x) to about 2 float32 ulps: the hardware estimate and one Newton step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ReciprocalSqrt(Vector256<float> x)
    {
        if (!Avx.IsSupported) return Vector256<float>.One / Vector256.Sqrt(x);
        var y = Avx.ReciprocalSqrt(x);
        var half = Vector256.Create(0.5f) * y;
        return half * (Vector256.Create(3f) - x * y * y);
    }

    /// <summary>1 / x to about 2 float32 ulps: the hardware estimate and one Newton step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Reciprocal(Vector256<float> x)
    {
        if (!Avx.IsSupported) return Vector256<float>.One / x;
        var y = Avx.Reciprocal(x);
        return MultiplyAdd(y, NegatedMultiplyAdd(x, y, Vector256<float>.One), y);   // y + y (1 - x y)
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : a * b + c;

    /// <summary>a b - c, rounded once where the hardware has FMA.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> MultiplySubtract(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplySubtract(a, b, c) : a * b - c;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> NegatedMultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAddNegated(a, b, c) : c - a * b;
}

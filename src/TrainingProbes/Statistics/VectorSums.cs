using System.Numerics;
using System.Runtime.InteropServices;

namespace TrainingProbes.Statistics;

/// <summary>Sums over float32 memory in one SIMD pass, accumulated in float64.</summary>
internal static class VectorSums
{
    /// <summary><c>sum (b - a)^2</c> and <c>sum a^2</c>, in float64.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static (double Moved, double Norm) DriftSums(ReadOnlySpan<float> first, ReadOnlySpan<float> now)
    {
        if (first.Length != now.Length)
            throw new ArgumentException($"The copy holds {first.Length} values and the parameter {now.Length}.", nameof(now));
        var a = MemoryMarshal.Cast<float, Vector<float>>(first);
        var b = MemoryMarshal.Cast<float, Vector<float>>(now);
        // Two independent accumulators per sum, so that consecutive vectors do not wait for each other's additions.
        Vector<double> moved = Vector<double>.Zero, norm = Vector<double>.Zero, moved2 = Vector<double>.Zero, norm2 = Vector<double>.Zero;
        for (int i = 0; i < a.Length; i++)
        {
            Vector.Widen(a[i], out var a0, out var a1);
            Vector.Widen(b[i], out var b0, out var b1);
            var d0 = b0 - a0;
            var d1 = b1 - a1;
            moved += d0 * d0;
            moved2 += d1 * d1;
            norm += a0 * a0;
            norm2 += a1 * a1;
        }

        double m = Vector.Sum(moved + moved2), n = Vector.Sum(norm + norm2);
        for (int i = a.Length * Vector<float>.Count; i < first.Length; i++)
        {
            double d = (double)now[i] - first[i];
            m += d * d;
            n += (double)first[i] * first[i];
        }

        return (m, n);
    }
}

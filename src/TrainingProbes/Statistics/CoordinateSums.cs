using TorchSharp;
using TrainingProbes.Interop;
using static TorchSharp.torch;

namespace TrainingProbes.Statistics;

/// <summary>
/// The definition of one read of a window's gradients: for a block [K, L] of them, the K x K Gram matrix of each
/// geometry, the GSNR sums with the K jackknife influences (<see cref="GsnrStatistics"/>), and the fold of the block
/// into the diagonal Fisher F that whitens it (<see cref="Whitening"/>). This is the tensor backend (any device and
/// dtype); <see cref="WindowKernel"/> computes the same sums on a CPU in one managed pass, and the tests hold the two to
/// each other.
/// </summary>
/// <remarks>
/// Per coordinate c, in float64: the mean m_c and the sum of squared deviations SS_c of its K values. It varies when
/// <c>SS_c &gt; (K - 1) (8 eps |m_c|)^2</c>, eps the rounding of the dtype the gradients are stored in: K values that are
/// equal (a dead unit's zeros) or one rounding apart carry no noise to compare with. A coordinate that varies adds
/// <c>m_c^2 / (SS_c / (K - 1) + epsilon)</c> to R and 1 to U; every coordinate adds 1 to N. Its influences are
/// <c>alpha_c e_ic + beta_c e_ic^2</c> with <c>e_ic = g_ic - m_c</c>, <c>w = (K - 1) SS_c / (K (K - 2)) + epsilon</c>,
/// <c>alpha_c = 2 m_c / ((K - 1) w)</c>, <c>beta_c = -m_c^2 / ((K - 2) w^2)</c>: the derivatives of the ratio of K - 1
/// values at the leave-one-out average. F folds <c>q_c = SS_c / K + m_c^2</c>, the mean square, where it is finite:
/// <c>F_c &lt;- decay F_c + (1 - decay) q_c</c>; the fisher D is <c>1 / sqrt(max(F_c, floor) x bias)</c> where F_c &gt; 0
/// and that raised value is at least <see cref="Whitening.SmallestFisher"/>, else 0 (both written in <see cref="Whitening"/>). Gram matrices of float32 blocks are taken
/// with each block scaled by a power of two that brings its largest |value| near 1 (exact), so that squares of
/// gradients near 1e20 do not overflow float32 and those near 1e-25 do not underflow.
/// </remarks>
internal static class CoordinateSums
{
    /// <summary>How many units of the stored dtype's rounding a coordinate's spread must exceed to count as noise.</summary>
    public const double RoundingFactor = 8;

    /// <summary>The machine epsilon of the dtype gradients are stored in (bfloat16 storage rounds float32 to 8 bits).</summary>
    public static double Epsilon(ScalarType stored) => stored switch
    {
        ScalarType.Float64 => Math.Pow(2, -52),
        ScalarType.BFloat16 => Math.Pow(2, -7),
        ScalarType.Float16 => Math.Pow(2, -10),
        _ => Math.Pow(2, -23),
    };

    /// <summary>What one block's pass reads and updates besides the gradients.</summary>
    /// <param name="Fisher">F of the block's columns, float64, updated in place; null without the fisher geometry.</param>
    /// <param name="Decay">F's decay per window.</param>
    /// <param name="Floor">The floor of F for the block's parameter tensor (0: none).</param>
    /// <param name="Bias">The bias correction <c>1 / (1 - decay^w)</c>, w counting this window.</param>
    /// <param name="Theta">theta of the block's columns (the adaptive geometry's D is <c>|theta| + eta</c>); null without it.</param>
    /// <param name="Eta">eta of the adaptive geometry.</param>
    /// <param name="Stored">The dtype the gradients were stored in (its rounding decides which coordinates vary).</param>
    public readonly record struct BlockState(Tensor? Fisher, double Decay, double Floor, double Bias, Tensor? Theta, double Eta, ScalarType Stored);

    /// <summary>
    /// Adds block <paramref name="g"/> [K, L]'s sums into <paramref name="sums"/> (float64, on g's device; layout of
    /// <see cref="Layout"/>) and returns the sum of the block's new F (0 without the fisher geometry), as a float64 tensor.
    /// Call inside a dispose scope, without gradients.
    /// </summary>
    public static Tensor Accumulate(Tensor g, in BlockState state, Layout layout, double epsilon, Tensor sums)
    {
        using var scalars = new ScalarScope();
        int k = layout.K;
        var compute = WindowChunks.ComputeType(g.dtype);
        var gc = g.dtype == compute ? g : g.to(compute);
        var g64 = g.to(ScalarType.Float64);
        var mean = g64.sum([0]).div_(scalars[k]);
        var deviations = g64.sub(mean);
        var squares = deviations.mul(deviations).sum([0]);

        // GSNR: R, U, N, then the influences.
        var rounding = mean.abs().mul_(scalars[RoundingFactor * Epsilon(state.Stored)]);
        var varies = squares.gt(rounding.mul_(rounding).mul_(scalars[k - 1]));
        var ratio = mean.mul(mean).div_(squares.div(scalars[k - 1]).add_(scalars[epsilon], Scalars.One)).masked_fill_(varies.logical_not(), Scalars.Zero);
        var gsnr = sums.narrow(0, layout.Gsnr, GsnrStatistics.Length(k));
        gsnr.narrow(0, 0, 3).add_(torch.stack([ratio.sum(), varies.sum().to(ScalarType.Float64), torch.tensor((double)g.shape[1], ScalarType.Float64, g.device)]), Scalars.One);
        if (k >= 5)
        {
            var w = squares.mul(scalars[(k - 1.0) / (k * (k - 2.0))]).add_(scalars[epsilon], Scalars.One);
            var inverse = w.reciprocal().masked_fill_(varies.logical_not(), Scalars.Zero);
            var alpha = mean.mul(inverse).mul_(scalars[2.0 / (k - 1)]);
            var beta = mean.mul(mean).mul_(inverse).mul_(inverse).mul_(scalars[-1.0 / (k - 2)]);
            var e = deviations.masked_fill_(varies.logical_not(), Scalars.Zero);
            gsnr.narrow(0, 3, k).add_(e.mul(alpha).add_(e.mul(e).mul_(beta), Scalars.One).sum([1]), Scalars.One);
        }

        // The geometries, with F folded first: the fisher D of this window reads the new F.
        Tensor fisherSum = torch.zeros(1, ScalarType.Float64, g.device);
        for (int index = 0; index < layout.Geometries.Count; index++)
        {
            Tensor? d = null;
            switch (layout.Geometries[index])
            {
                case Geometry.Fisher:
                {
                    var fisher = state.Fisher ?? throw new InvalidOperationException("The fisher geometry needs F.");
                    Whitening.Fold(fisher, squares.div(scalars[k]).add_(mean.mul(mean), Scalars.One), state.Decay);
                    fisherSum = fisher.sum().reshape(1);
                    d = Whitening.FisherD(fisher, state.Floor, state.Bias, compute);
                    break;
                }
                case Geometry.Adaptive:
                    d = Whitening.AdaptiveD(state.Theta ?? throw new InvalidOperationException("The adaptive geometry needs theta."), state.Eta, compute);
                    break;
            }

            var h = d is null ? gc : gc.mul(d);
            sums.narrow(0, layout.Gram(index), k * k).view(k, k).add_(Gram(h), Scalars.One);
        }

        return fisherSum;
    }

    /// <summary>
    /// The Gram matrix of a block's rows, in float64. float32 rows are scaled by the power of two nearest the inverse of
    /// their largest |value| first (exact), and the product scaled back in float64: squares of values near 1e20 would
    /// overflow float32, and near 1e-25 underflow.
    /// </summary>
    private static Tensor Gram(Tensor h)
    {
        if (h.dtype == ScalarType.Float64) return h.mm(h.t());
        using var scalars = new ScalarScope();
        var exponent = h.abs().amax([0, 1]).clamp_min_(scalars[1e-38]).log2_().round_();   // max |h| is about 2^exponent
        var scale = exponent.neg().exp2_();
        var scaled = h.mul(scale);
        return scaled.mm(scaled.t()).to(ScalarType.Float64).mul_(exponent.to(ScalarType.Float64).mul_(scalars[2.0]).exp2_());
    }

    /// <summary>The sum of squares of a block's values, in float64 (for the first window's Fisher floor).</summary>
    public static Tensor SumOfSquares(Tensor g)
    {
        var g64 = g.to(ScalarType.Float64);
        return g64.mul(g64).sum();
    }

    /// <summary>Where each sum lives in a window's float64 sums: a K x K Gram matrix per geometry, then the GSNR sums.</summary>
    public sealed class Layout
    {
        public Layout(int k, IReadOnlyList<Geometry> geometries)
        {
            K = k;
            Geometries = geometries;
            Gsnr = geometries.Count * k * k;
            Length = Gsnr + GsnrStatistics.Length(k);
        }

        public int K { get; }

        /// <summary>The geometries in the order of their Gram matrices.</summary>
        public IReadOnlyList<Geometry> Geometries { get; }

        /// <summary>Offset of the GSNR sums.</summary>
        public int Gsnr { get; }

        public int Length { get; }

        /// <summary>Offset of geometry <paramref name="index"/>'s Gram matrix (row-major K x K).</summary>
        public int Gram(int index) => index * K * K;

        /// <summary>Index of <paramref name="geometry"/> among <see cref="Geometries"/>, or -1.</summary>
        public int IndexOf(Geometry geometry)
        {
            for (int i = 0; i < Geometries.Count; i++)
                if (Geometries[i] == geometry) return i;
            return -1;
        }
    }
}

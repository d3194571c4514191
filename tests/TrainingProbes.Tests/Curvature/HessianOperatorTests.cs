using TorchSharp;
using TrainingProbes.Curvature;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Curvature;

/// <summary>Unused and linear parameters, validation, the global RNG, and tensor lifetimes.</summary>
public sealed class HessianOperatorTests
{
    private static Tensor Parameter(params double[] values) =>
        torch.tensor(values, dtype: ScalarType.Float64).requires_grad_(true);

    [Fact]
    public void Unused_and_linear_parameters_give_zero_blocks()
    {
        var a = Parameter(1, -2, 3);
        var unused = Parameter(4, 5);
        var linear = Parameter(0.5);
        // f = sum a^3 + 3 * linear: H = diag(6 a) on a, zero elsewhere.
        var loss = a.pow(3).sum() + linear.sum().mul(3.0);
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        using (var op = new HessianOperator(loss, [unused, a, linear]))
        {
            Assert.False(op.IsZero);
            using var scope = torch.NewDisposeScope();
            var hv = op.Apply([torch.ones(2, dtype: ScalarType.Float64), torch.tensor(new double[] { 1, 2, 3 }), torch.ones(1, dtype: ScalarType.Float64)]);
            Assert.Equal(new double[] { 0, 0 }, CurvatureTestMath.Flatten([hv[0]]));
            Assert.Equal(new double[] { 6, -24, 54 }, CurvatureTestMath.Flatten([hv[1]]));
            Assert.Equal(new double[] { 0 }, CurvatureTestMath.Flatten([hv[2]]));
            using var generator = new Generator(7);
            var trace = CurvatureEstimators.Hutchinson(op, new HutchinsonOptions(), generator);
            Assert.Equal(12, trace.Trace, 12);
        }

        // No undefined-gradient wrappers left behind (they stay counted as live even after Dispose).
        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    [Fact]
    public void Unused_parameter_blocks_are_dense_zeros_and_change_no_estimate()
    {
        var a = Parameter(1, -2, 3);
        var unused = Parameter(4, 5);
        // f = sum a^3: H = diag(6 a) = diag(6, -12, 18) on a, zero on the unused parameter (listed first on purpose).
        using var with = new HessianOperator(a.pow(3).sum(), [unused, a]);
        using var without = new HessianOperator(a.pow(3).sum(), [a]);
        using (var scope = torch.NewDisposeScope())
        {
            var hv = with.Apply([torch.ones(2, dtype: ScalarType.Float64), torch.tensor(new double[] { 1, 2, 3 })]);
            // Guard before any in-place update: on an expanded (stride-0) block libtorch refuses it or aborts the process.
            Assert.True(hv[0].is_contiguous(), $"the unused block has strides [{string.Join(", ", hv[0].stride())}]");
            Assert.Equal(new double[] { 0, 0 }, CurvatureTestMath.Flatten([hv[0]]));
            hv[0].div_(torch.tensor(2.0, dtype: ScalarType.Float64));   // the power iteration normalizes its iterate in place
            Assert.Equal(new double[] { 6, -24, 54 }, CurvatureTestMath.Flatten([hv[1]]));
        }

        // No random draw lands on the unused block, so both operators see the same draws on a: the same estimates,
        // to float64 rounding (a norm summed with one more exact zero).
        var options = new PowerIterationOptions { MaxIterations = 500, Tolerance = 1e-12 };
        using var g1 = new Generator(3);
        using var g2 = new Generator(3);
        var top = CurvatureEstimators.TopEigenvalues(with, options, g1);
        var reference = CurvatureEstimators.TopEigenvalues(without, options, g2);
        Assert.Equal(18, top.LargestMagnitude.Eigenvalue, 6);
        Assert.Equal(18, top.LargestAlgebraic.Eigenvalue, 6);
        Assert.Equal(reference.LargestAlgebraic.Eigenvalue, top.LargestAlgebraic.Eigenvalue, 12);
        Assert.Equal(reference.LargestAlgebraic.Iterations, top.LargestAlgebraic.Iterations);

        // A quadratic with off-diagonal curvature, so that the Hutchinson samples vary with the draws.
        var b = Parameter(0.5, -1, 2);
        var unusedToo = Parameter(7);
        Tensor Loss() => b.pow(2).sum() * b.sum() + b[0] * b[1] * 3.0;
        using var traceWith = new HessianOperator(Loss(), [unusedToo, b]);
        using var traceWithout = new HessianOperator(Loss(), [b]);
        using var g3 = new Generator(4);
        using var g4 = new Generator(4);
        var hutchinsonOptions = new HutchinsonOptions { MinSamples = 5, MaxSamples = 5 };
        Assert.Equal(
            CurvatureEstimators.Hutchinson(traceWithout, hutchinsonOptions, g4).Trace,
            CurvatureEstimators.Hutchinson(traceWith, hutchinsonOptions, g3).Trace, 12);
    }

    [Fact]
    public void A_loss_linear_in_every_parameter_gives_zero_without_a_second_backward()
    {
        var a = Parameter(1, 2);
        var b = Parameter(3);
        var loss = a.mul(3.0).sum() + b.mul(-2.0).sum() + 1.0;
        using var op = new HessianOperator(loss, [a, b]);
        Assert.True(op.IsZero);
        for (int i = 0; i < 3; i++)
        {
            using var scope = torch.NewDisposeScope();
            var hv = op.Apply([torch.ones(2, dtype: ScalarType.Float64), torch.ones(1, dtype: ScalarType.Float64)]);
            Assert.Equal([2L], hv[0].shape);
            Assert.Equal(new double[] { 0, 0, 0 }, CurvatureTestMath.Flatten(hv));
        }

        Assert.Equal(3, op.Products);
        using var generator = new Generator(8);
        var trace = CurvatureEstimators.Hutchinson(op, new HutchinsonOptions(), generator);
        Assert.Equal(0, trace.Trace);
        Assert.True(trace.Converged);
        Assert.Equal(10, trace.Samples);
        var top = CurvatureEstimators.TopEigenvalues(op, new PowerIterationOptions(), generator);
        Assert.Equal(0, top.LargestMagnitude.Eigenvalue);
        Assert.Equal(0, top.LargestAlgebraic.Eigenvalue);
        Assert.True(top.LargestMagnitude.Converged);
    }

    [Fact]
    public void The_operator_can_be_built_under_no_grad()
    {
        var a = Parameter(1, -2, 3);
        var loss = a.pow(3).sum();
        using var noGrad = torch.no_grad();
        using var op = new HessianOperator(loss, [a]);
        Assert.False(op.IsZero);
        using var scope = torch.NewDisposeScope();
        var hv = op.Apply([torch.ones(3, dtype: ScalarType.Float64)]);
        Assert.Equal(new double[] { 6, -12, 18 }, CurvatureTestMath.Flatten(hv));
    }

    [Fact]
    public void Non_scalar_loss_is_rejected()
    {
        var a = Parameter(1, 2);
        var loss = a.pow(2);
        var e = Assert.Throws<ArgumentException>(() => new HessianOperator(loss, [a]));
        Assert.Contains("scalar", e.Message);
        Assert.Equal("loss", e.ParamName);
    }

    [Fact]
    public void Loss_without_graph_is_rejected()
    {
        var a = Parameter(1, 2);
        var loss = a.pow(2).sum().detach();
        var e = Assert.Throws<ArgumentException>(() => new HessianOperator(loss, [a]));
        Assert.Contains("does not require grad", e.Message);
        Assert.Equal("loss", e.ParamName);
    }

    [Fact]
    public void Parameter_without_requires_grad_is_rejected()
    {
        var a = Parameter(1, 2);
        var frozen = torch.tensor(new double[] { 3 });
        var loss = (a.pow(2).sum() * frozen).sum();
        var e = Assert.Throws<ArgumentException>(() => new HessianOperator(loss, [a, frozen]));
        Assert.Contains("parameters[1]", e.Message);
        Assert.Contains("does not require grad", e.Message);
    }

    [Fact]
    public void Mixed_dtypes_are_rejected()
    {
        var a = Parameter(1, 2);
        var b = torch.tensor(new float[] { 3 }, requires_grad: true);
        var loss = a.pow(2).sum() + b.pow(2).sum();
        var e = Assert.Throws<ArgumentException>(() => new HessianOperator(loss, [a, b]));
        Assert.Contains("dtype", e.Message);
    }

    [Fact]
    public void Scaling_of_the_wrong_shape_count_or_dtype_is_rejected()
    {
        var a = Parameter(1, 2, 3);
        var b = Parameter(4);
        var loss = a.pow(2).sum() * b.sum();

        var shape = Assert.Throws<ArgumentException>(() => new HessianOperator(loss, [a, b], [torch.ones(2, dtype: ScalarType.Float64), torch.ones(1, dtype: ScalarType.Float64)]));
        Assert.Contains("scaling[0]", shape.Message);
        Assert.Contains("shape [2]", shape.Message);
        Assert.Equal("scaling", shape.ParamName);

        var count = Assert.Throws<ArgumentException>(() => new HessianOperator(loss, [a, b], [torch.ones(3, dtype: ScalarType.Float64)]));
        Assert.Contains("scaling has 1 tensors", count.Message);

        var dtype = Assert.Throws<ArgumentException>(() => new HessianOperator(loss, [a, b], [torch.ones(3, dtype: ScalarType.Float64), torch.ones(1, dtype: ScalarType.Float32)]));
        Assert.Contains("scaling[1]", dtype.Message);
        Assert.Contains("dtype", dtype.Message);
    }

    [Fact]
    public void Vector_of_the_wrong_shape_is_rejected_and_the_operator_still_works()
    {
        var a = Parameter(1, 2, 3);
        var loss = a.pow(3).sum();
        using var op = new HessianOperator(loss, [a]);
        using var scope = torch.NewDisposeScope();
        var e = Assert.Throws<ArgumentException>(() => op.Apply([torch.ones(4, dtype: ScalarType.Float64)]));
        Assert.Contains("v[0]", e.Message);
        Assert.Throws<ArgumentException>(() => op.Apply([torch.ones(3, dtype: ScalarType.Float64), torch.ones(3, dtype: ScalarType.Float64)]));
        Assert.Throws<ArgumentException>(() => op.Apply([torch.ones(3, dtype: ScalarType.Float32)]));
        Assert.Equal(0, op.Products);
        var hv = op.Apply([torch.ones(3, dtype: ScalarType.Float64)]);
        Assert.Equal(new double[] { 6, 12, 18 }, CurvatureTestMath.Flatten(hv));
    }

    [Fact]
    public void Invalid_estimator_options_are_rejected()
    {
        var a = Parameter(1, 2, 3);
        using var op = new HessianOperator(a.pow(3).sum(), [a]);
        using var generator = new Generator(1);
        Assert.Throws<ArgumentException>(() => CurvatureEstimators.Hutchinson(op, new HutchinsonOptions { MinSamples = 1 }, generator));
        Assert.Throws<ArgumentException>(() => CurvatureEstimators.Hutchinson(op, new HutchinsonOptions { MinSamples = 20, MaxSamples = 10 }, generator));
        Assert.Throws<ArgumentException>(() => CurvatureEstimators.PowerIteration(op, new PowerIterationOptions { MaxIterations = 0 }, generator));
        Assert.Throws<ArgumentException>(() => CurvatureEstimators.PowerIteration(op, new PowerIterationOptions(), generator, double.NaN));
        Assert.Equal(0, op.Products);
    }

    [Fact]
    public void Estimators_leave_the_global_generator_untouched_and_follow_their_own()
    {
        var problem = new QuadraticProblem([5, 2, 1, 0.5, -0.3, 0.1, 0.05], 71);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        torch.manual_seed(1234);
        using var stateBefore = torch.random.get_rng_state();
        var bytesBefore = stateBefore.data<byte>().ToArray();

        (HutchinsonResult, TopEigenvaluesResult) Run(ulong seed)
        {
            using var generator = new Generator(seed);
            var trace = CurvatureEstimators.Hutchinson(op, new HutchinsonOptions { MaxSamples = 30 }, generator);
            var top = CurvatureEstimators.TopEigenvalues(op, new PowerIterationOptions(), generator);
            return (trace, top);
        }

        var first = Run(5);
        using var stateAfter = torch.random.get_rng_state();
        Assert.Equal(bytesBefore, stateAfter.data<byte>().ToArray());
        using var drawnAfter = torch.rand(1, dtype: ScalarType.Float64);
        torch.manual_seed(1234);
        using var drawnFresh = torch.rand(1, dtype: ScalarType.Float64);
        Assert.Equal(drawnFresh.item<double>(), drawnAfter.item<double>());

        // Same generator seed, same estimates, bit for bit; another seed, other probes.
        var second = Run(5);
        Assert.Equal(first.Item1, second.Item1);
        Assert.Equal(first.Item2.LargestMagnitude, second.Item2.LargestMagnitude);
        var other = Run(6);
        Assert.NotEqual(first.Item1.Trace, other.Item1.Trace);
    }

    [Fact]
    public void No_tensor_outlives_the_operator_and_the_estimates()
    {
        var problem = new QuadraticProblem([-6, 3, 1, 0.5, -0.3, 0.1, 0.05], 81);
        var random = new Random(81);
        var scalingValues = CurvatureTestMath.Gaussian(random, QuadraticProblem.N).Select(x => 1 + 0.1 * x).ToArray();
        var scaling = CurvatureTestMath.Split(scalingValues, problem.Parameters);
        var vector = CurvatureTestMath.Split(CurvatureTestMath.Gaussian(random, QuadraticProblem.N), problem.Parameters);
        using var generator = new Generator(81);

        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        double trace, top;
        using (var op = new HessianOperator(problem.Loss, problem.Parameters, scaling))
        {
            var hv = op.Apply(vector);
            foreach (var t in hv)
            {
                t.Dispose();
            }

            using (var scope = torch.NewDisposeScope())
            {
                _ = op.Apply(vector);
            }

            trace = CurvatureEstimators.Hutchinson(op, new HutchinsonOptions(), generator).Trace;
            top = CurvatureEstimators.TopEigenvalues(op, new PowerIterationOptions(), generator).LargestAlgebraic.Eigenvalue;
            Assert.True(op.Products > 12);
        }

        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.True(double.IsFinite(trace) && double.IsFinite(top));
    }

    [Fact]
    public void Disposed_operator_refuses_to_apply()
    {
        var a = Parameter(1, 2);
        var op = new HessianOperator(a.pow(3).sum(), [a]);
        op.Dispose();
        op.Dispose();
        using var v = torch.ones(2, dtype: ScalarType.Float64);
        Assert.Throws<ObjectDisposedException>(() => op.Apply([v]));
    }
}

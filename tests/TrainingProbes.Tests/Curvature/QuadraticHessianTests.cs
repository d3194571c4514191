using TorchSharp;
using TrainingProbes.Curvature;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Curvature;

/// <summary>The quadratic <c>1/2 theta^T A theta + b^T theta</c>: its Hessian is A, known in closed form.</summary>
public sealed class QuadraticHessianTests
{
    /// <summary>Dominated by a positive eigenvalue.</summary>
    private static readonly double[] PositiveDominant = [5, 2, 1, 0.5, -0.3, 0.1, 0.05];

    /// <summary>The most negative eigenvalue has the largest magnitude.</summary>
    private static readonly double[] NegativeDominant = [-6, 3, 1, 0.5, -0.3, 0.1, 0.05];

    private static readonly PowerIterationOptions Tight = new() { Tolerance = 1e-12, MaxIterations = 2000 };

    public static TheoryData<int, int> Cases => new() { { 0, 11 }, { 0, 12 }, { 1, 13 }, { 1, 14 } };

    private static double[] Spectrum(int which) => which == 0 ? PositiveDominant : NegativeDominant;

    [Theory]
    [MemberData(nameof(Cases))]
    public void Hessian_vector_product_equals_A_v(int which, int seed)
    {
        var problem = new QuadraticProblem(Spectrum(which), seed);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        Assert.False(op.IsZero);
        Assert.Equal(QuadraticProblem.N, op.Dimension);
        var random = new Random(seed);
        for (int trial = 0; trial < 3; trial++)
        {
            using var scope = torch.NewDisposeScope();
            var v = CurvatureTestMath.Gaussian(random, QuadraticProblem.N);
            var hv = op.Apply(CurvatureTestMath.Split(v, problem.Parameters));
            Assert.Equal([3L], hv[0].shape);
            Assert.Equal([2L, 2L], hv[1].shape);
            Assert.Equal(ScalarType.Float64, hv[1].dtype);
            CurvatureTestMath.AssertClose(CurvatureTestMath.MatVec(problem.A, v), CurvatureTestMath.Flatten(hv), 1e-12, "Hv");
        }

        Assert.Equal(3, op.Products);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Power_iteration_finds_the_largest_magnitude_eigenvalue(int which, int seed)
    {
        var problem = new QuadraticProblem(Spectrum(which), seed);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        using var generator = new Generator((ulong)seed);
        var result = CurvatureEstimators.PowerIteration(op, Tight, generator);
        double expected = which == 0 ? 5 : -6;
        Assert.True(result.Converged, $"not converged after {result.Iterations} iterations");
        Assert.True(Math.Abs(result.Eigenvalue - expected) <= 1e-6 * Math.Abs(expected), $"eigenvalue {result.Eigenvalue:R}, expected {expected}");
        Assert.True(result.Residual < 1e-3, $"residual {result.Residual}");
        Assert.Equal(result.Iterations, op.Products);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_warm_start_from_the_previous_eigenvector_needs_few_iterations(int which, int seed)
    {
        var problem = new QuadraticProblem(Spectrum(which), seed);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        using var generator = new Generator((ulong)seed);
        var options = new PowerIterationOptions { Tolerance = 1e-6, MaxIterations = 2000 };
        var vector = problem.Parameters.Select(p => torch.zeros_like(p)).ToArray();

        // A zero start is no start: a random one is drawn. The final iterate is handed back.
        var cold = CurvatureEstimators.PowerIteration(op, options, generator, start: vector, final: vector);
        double norm = Math.Sqrt(vector.Sum(v => v.square().sum().item<double>()));
        Assert.Equal(1.0, norm, 9);

        // From that vector (the previous window's eigenvector, theta unchanged), the same tolerance needs two iterations.
        var warm = CurvatureEstimators.PowerIteration(op, options, generator, start: vector);
        double expected = which == 0 ? 5 : -6;
        Assert.True(cold.Converged && warm.Converged);
        Assert.True(cold.Iterations > 5, $"a cold start took only {cold.Iterations} iterations: the case does not test the warm start");
        Assert.True(warm.Iterations <= 2, $"the warm start took {warm.Iterations} iterations");
        Assert.True(Math.Abs(warm.Eigenvalue - expected) <= 1e-5 * Math.Abs(expected), $"eigenvalue {warm.Eigenvalue:R}, expected {expected}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Top_eigenvalues_give_largest_magnitude_and_largest_algebraic(int which, int seed)
    {
        var problem = new QuadraticProblem(Spectrum(which), seed);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        using var generator = new Generator((ulong)seed + 100);
        var top = CurvatureEstimators.TopEigenvalues(op, Tight, generator);
        double magnitude = which == 0 ? 5 : -6, algebraic = which == 0 ? 5 : 3;
        Assert.True(Math.Abs(top.LargestMagnitude.Eigenvalue - magnitude) <= 1e-6 * Math.Abs(magnitude), $"largest magnitude {top.LargestMagnitude.Eigenvalue:R}");
        Assert.True(Math.Abs(top.LargestAlgebraic.Eigenvalue - algebraic) <= 1e-6 * Math.Abs(algebraic), $"largest algebraic {top.LargestAlgebraic.Eigenvalue:R}");
        Assert.True(top.LargestAlgebraic.Converged);
        if (which == 0)
        {
            Assert.Same(top.LargestMagnitude, top.LargestAlgebraic);
        }
        else
        {
            Assert.Equal(top.LargestMagnitude.Iterations + top.LargestAlgebraic.Iterations, op.Products);
        }
    }

    [Fact]
    public void Default_power_iteration_tolerance_is_loose_but_close()
    {
        var problem = new QuadraticProblem(PositiveDominant, 21);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        using var generator = new Generator(21);
        var result = CurvatureEstimators.PowerIteration(op, new PowerIterationOptions(), generator);
        Assert.True(result.Converged);
        Assert.True(result.Iterations < 100);
        Assert.True(Math.Abs(result.Eigenvalue - 5) <= 0.05, $"eigenvalue {result.Eigenvalue}");
    }

    [Fact]
    public void Hutchinson_confidence_interval_covers_the_trace_and_error_shrinks_with_samples()
    {
        var spectrum = PositiveDominant;
        double trace = spectrum.Sum();
        var problem = new QuadraticProblem(spectrum, 31);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);

        // For Rademacher probes Var(z^T A z) = 2 sum_{i != j} A_ij^2.
        double variance = 0;
        for (int i = 0; i < QuadraticProblem.N; i++)
        {
            for (int j = 0; j < QuadraticProblem.N; j++)
            {
                variance += i == j ? 0 : 2 * problem.A[i, j] * problem.A[i, j];
            }
        }

        (double MeanError, double MeanSd) Run(int samples, bool checkCoverage)
        {
            double error = 0, sd = 0;
            for (int seed = 0; seed < 20; seed++)
            {
                using var generator = new Generator((ulong)(1000 + seed));
                var options = new HutchinsonOptions { MinSamples = samples, MaxSamples = samples, RelativeTolerance = 0 };
                var result = CurvatureEstimators.Hutchinson(op, options, generator);
                Assert.Equal(samples, result.Samples);
                Assert.False(result.Converged);
                Assert.True(result.StandardError > 0);
                Assert.Equal(1.96 * result.StandardError, result.HalfWidth, 12);
                if (checkCoverage)
                {
                    Assert.True(Math.Abs(result.Trace - trace) <= 3 * result.HalfWidth,
                        $"seed {seed}: estimate {result.Trace} +- {result.HalfWidth}, true trace {trace}");
                }

                error += Math.Abs(result.Trace - trace);
                sd += result.StandardError * Math.Sqrt(samples);
            }

            return (error / 20, sd / 20);
        }

        // With 10 samples of a 7-dimensional quadratic form (64 distinct values, skewed) the sample standard deviation
        // is unreliable: a few percent of the seeds miss 3 half-widths there, so coverage is checked from 30 on.
        var small = Run(10, checkCoverage: false);
        var medium = Run(30, checkCoverage: true);
        var large = Run(400, checkCoverage: true);
        Assert.True(large.MeanError < small.MeanError / 2, $"mean error with 400 samples {large.MeanError}, with 10 samples {small.MeanError}");
        Assert.True(large.MeanError < medium.MeanError, $"mean error with 400 samples {large.MeanError}, with 30 samples {medium.MeanError}");
        Assert.True(Math.Abs(large.MeanSd - Math.Sqrt(variance)) < 0.1 * Math.Sqrt(variance),
            $"sample standard deviation {large.MeanSd}, closed form {Math.Sqrt(variance)}");
    }

    [Fact]
    public void Hutchinson_stops_at_the_tolerance()
    {
        var problem = new QuadraticProblem([4, 3, 2, 1, 1, 1, 1], 41);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        using var generator = new Generator(41);
        var options = new HutchinsonOptions { RelativeTolerance = 0.1, MaxSamples = 10_000 };
        var result = CurvatureEstimators.Hutchinson(op, options, generator);
        Assert.True(result.Converged);
        Assert.True(result.Samples >= options.MinSamples && result.Samples < options.MaxSamples, $"samples {result.Samples}");
        Assert.True(result.HalfWidth <= 0.1 * Math.Abs(result.Trace));
        Assert.Equal(result.Samples, op.Products);
    }

    [Fact]
    public void Hutchinson_is_exact_on_a_diagonal_Hessian()
    {
        // z^T A z = sum_i a_ii z_i^2 = tr A for every Rademacher z: zero variance, stops at MinSamples.
        var problem = new QuadraticProblem(NegativeDominant, 51, diagonal: true);
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        using var generator = new Generator(51);
        var result = CurvatureEstimators.Hutchinson(op, new HutchinsonOptions(), generator);
        Assert.True(result.Converged);
        Assert.Equal(10, result.Samples);
        Assert.Equal(NegativeDominant.Sum(), result.Trace, 12);
        Assert.Equal(0, result.HalfWidth, 12);
    }

    [Fact]
    public void Scaled_operator_equals_D_A_D()
    {
        var problem = new QuadraticProblem(NegativeDominant, 61);
        var random = new Random(61);
        var d = CurvatureTestMath.Gaussian(random, QuadraticProblem.N).Select(x => 0.5 + Math.Abs(x)).ToArray();
        var scaling = CurvatureTestMath.Split(d, problem.Parameters);
        using var op = new HessianOperator(problem.Loss, problem.Parameters, scaling);

        var dad = new double[QuadraticProblem.N, QuadraticProblem.N];
        for (int i = 0; i < QuadraticProblem.N; i++)
        {
            for (int j = 0; j < QuadraticProblem.N; j++)
            {
                dad[i, j] = d[i] * problem.A[i, j] * d[j];
            }
        }

        for (int trial = 0; trial < 3; trial++)
        {
            using var scope = torch.NewDisposeScope();
            var v = CurvatureTestMath.Gaussian(random, QuadraticProblem.N);
            var result = op.Apply(CurvatureTestMath.Split(v, problem.Parameters));
            CurvatureTestMath.AssertClose(CurvatureTestMath.MatVec(dad, v), CurvatureTestMath.Flatten(result), 1e-12, "DADv");
        }

        var eigenvalues = CurvatureTestMath.JacobiEigenvalues(dad);
        double largestMagnitude = eigenvalues.MaxBy(Math.Abs), largestAlgebraic = eigenvalues[^1];
        using var generator = new Generator(61);
        var top = CurvatureEstimators.TopEigenvalues(op, Tight, generator);
        Assert.True(Math.Abs(top.LargestMagnitude.Eigenvalue - largestMagnitude) <= 1e-6 * Math.Abs(largestMagnitude),
            $"largest magnitude {top.LargestMagnitude.Eigenvalue:R}, expected {largestMagnitude:R}");
        Assert.True(Math.Abs(top.LargestAlgebraic.Eigenvalue - largestAlgebraic) <= 1e-6 * Math.Abs(largestAlgebraic),
            $"largest algebraic {top.LargestAlgebraic.Eigenvalue:R}, expected {largestAlgebraic:R}");

        // The scaling is a constant: rescaling D changes the operator by the square of the factor.
        var scaled2 = scaling.Select(s => s.mul(2.0)).ToArray();
        using var op2 = new HessianOperator(problem.Loss, problem.Parameters, scaled2);
        using var scope2 = torch.NewDisposeScope();
        var probe = CurvatureTestMath.Split(CurvatureTestMath.Gaussian(random, QuadraticProblem.N), problem.Parameters);
        var once = CurvatureTestMath.Flatten(op.Apply(probe));
        var twice = CurvatureTestMath.Flatten(op2.Apply(probe));
        CurvatureTestMath.AssertClose(once.Select(x => 4 * x).ToArray(), twice, 1e-12, "(2D)A(2D)v");
    }

    [Fact]
    public void Float32_parameters_work_in_float32()
    {
        var a = torch.tensor(new float[] { 0.5f, -1f, 2f }, requires_grad: true);
        var loss = a.pow(3).sum();
        using var op = new HessianOperator(loss, [a]);
        Assert.Equal(ScalarType.Float32, op.DType);
        using var scope = torch.NewDisposeScope();
        var hv = op.Apply([torch.ones(3, dtype: ScalarType.Float32)]);
        Assert.Equal(ScalarType.Float32, hv[0].dtype);
        CurvatureTestMath.AssertClose([3, -6, 12], CurvatureTestMath.Flatten(hv), 1e-6, "6 a");
        using var generator = new Generator(3);
        var trace = CurvatureEstimators.Hutchinson(op, new HutchinsonOptions(), generator);
        Assert.Equal(9, trace.Trace, 4);
        var top = CurvatureEstimators.TopEigenvalues(op, new PowerIterationOptions { Tolerance = 1e-6, MaxIterations = 500 }, generator);
        Assert.Equal(12, top.LargestMagnitude.Eigenvalue, 3);
    }
}

using TorchSharp;
using TrainingProbes.Curvature;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Curvature;

/// <summary>
/// Logistic regression, mean binary cross-entropy of sigmoid(X w + c): the Hessian
/// <c>(1/n) sum_i s_i (1 - s_i) [x_i; 1][x_i; 1]^T</c> is computed independently in plain C# double.
/// </summary>
public sealed class LogisticRegressionHessianTests
{
    private const int Samples = 40;
    private const int Features = 4;

    private sealed class Problem
    {
        public Problem(int seed)
        {
            var random = new Random(seed);
            X = new double[Samples, Features];
            var xFlat = CurvatureTestMath.Gaussian(random, Samples * Features);
            for (int i = 0; i < Samples; i++)
            {
                for (int j = 0; j < Features; j++)
                {
                    X[i, j] = xFlat[i * Features + j] * (1 + j);
                }
            }

            Y = Enumerable.Range(0, Samples).Select(_ => random.Next(2) == 0 ? 0.0 : 1.0).ToArray();
            W = CurvatureTestMath.Gaussian(random, Features).Select(x => 0.3 * x).ToArray();
            C = 0.2;

            Weight = torch.tensor(W, [Features], dtype: ScalarType.Float64).requires_grad_(true);
            Bias = torch.tensor(new[] { C }, [1], dtype: ScalarType.Float64).requires_grad_(true);
            using var scope = torch.NewDisposeScope();
            var x = torch.tensor(Enumerable.Range(0, Samples * Features).Select(k => X[k / Features, k % Features]).ToArray(), [Samples, Features], dtype: ScalarType.Float64);
            var y = torch.tensor(Y, [Samples], dtype: ScalarType.Float64);
            var s = torch.sigmoid(x.mv(Weight) + Bias);
            var bce = -(y * s.log() + (1 - y) * (1 - s).log());
            Loss = bce.mean().MoveToOuterDisposeScope();
        }

        public double[,] X { get; }

        public double[] Y { get; }

        public double[] W { get; }

        public double C { get; }

        public Tensor Weight { get; }

        public Tensor Bias { get; }

        public Tensor[] Parameters => [Weight, Bias];

        public Tensor Loss { get; }

        /// <summary>The (d+1) x (d+1) Hessian over [w; c], in plain double.</summary>
        public double[,] Hessian()
        {
            int m = Features + 1;
            var h = new double[m, m];
            for (int i = 0; i < Samples; i++)
            {
                var xi = new double[m];
                double z = C;
                for (int j = 0; j < Features; j++)
                {
                    xi[j] = X[i, j];
                    z += W[j] * X[i, j];
                }

                xi[Features] = 1;
                double s = 1 / (1 + Math.Exp(-z)), weight = s * (1 - s) / Samples;
                for (int a = 0; a < m; a++)
                {
                    for (int b = 0; b < m; b++)
                    {
                        h[a, b] += weight * xi[a] * xi[b];
                    }
                }
            }

            return h;
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Hessian_vector_product_matches_the_closed_form(int seed)
    {
        var problem = new Problem(seed);
        var h = problem.Hessian();
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        var random = new Random(seed + 50);
        for (int trial = 0; trial < 4; trial++)
        {
            using var scope = torch.NewDisposeScope();
            var v = CurvatureTestMath.Gaussian(random, Features + 1);
            var hv = op.Apply(CurvatureTestMath.Split(v, problem.Parameters));
            CurvatureTestMath.AssertClose(CurvatureTestMath.MatVec(h, v), CurvatureTestMath.Flatten(hv), 1e-10, "Hv");
        }
    }

    [Theory]
    [InlineData(3)]
    [InlineData(4)]
    public void Hutchinson_trace_covers_the_closed_form_trace(int seed)
    {
        var problem = new Problem(seed);
        double trace = CurvatureTestMath.Trace(problem.Hessian());
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        for (int s = 0; s < 10; s++)
        {
            using var generator = new Generator((ulong)(seed * 100 + s));
            var result = CurvatureEstimators.Hutchinson(op, new HutchinsonOptions { MaxSamples = 200 }, generator);
            Assert.True(Math.Abs(result.Trace - trace) <= 3 * result.HalfWidth,
                $"probe seed {s}: estimate {result.Trace} +- {result.HalfWidth} ({result.Samples} samples), true trace {trace}");
            Assert.True(result.HalfWidth < 0.2 * trace, $"half-width {result.HalfWidth} for trace {trace}");
        }
    }

    [Theory]
    [InlineData(5)]
    [InlineData(6)]
    public void Power_iteration_matches_the_Jacobi_top_eigenvalue(int seed)
    {
        var problem = new Problem(seed);
        var eigenvalues = CurvatureTestMath.JacobiEigenvalues(problem.Hessian());
        Assert.True(eigenvalues[0] > -1e-12, "the logistic Hessian is positive semi-definite");
        double top = eigenvalues[^1];
        using var op = new HessianOperator(problem.Loss, problem.Parameters);
        using var generator = new Generator((ulong)seed);
        var options = new PowerIterationOptions { Tolerance = 1e-12, MaxIterations = 5000 };
        var result = CurvatureEstimators.PowerIteration(op, options, generator);
        Assert.True(result.Converged, $"not converged in {result.Iterations} iterations");
        Assert.True(Math.Abs(result.Eigenvalue - top) <= 1e-6 * top, $"power iteration {result.Eigenvalue:R}, Jacobi {top:R}");
        var both = CurvatureEstimators.TopEigenvalues(op, options, generator);
        Assert.Same(both.LargestMagnitude, both.LargestAlgebraic);
        Assert.True(Math.Abs(both.LargestAlgebraic.Eigenvalue - top) <= 1e-6 * top);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Curvature;

/// <summary>Plain double-precision linear algebra, independent of the code under test (and of libtorch).</summary>
internal static class CurvatureTestMath
{
    public static double[] Gaussian(Random random, int n)
    {
        var result = new double[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1.0 - random.NextDouble(), u2 = random.NextDouble();
            result[i] = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
        }

        return result;
    }

    /// <summary>A random orthogonal matrix: modified Gram-Schmidt on the columns of a Gaussian matrix.</summary>
    public static double[,] RandomOrthogonal(int n, int seed)
    {
        var random = new Random(seed);
        var q = new double[n, n];
        for (int j = 0; j < n; j++)
        {
            var column = Gaussian(random, n);
            for (int k = 0; k < j; k++)
            {
                double dot = 0;
                for (int i = 0; i < n; i++)
                {
                    dot += q[i, k] * column[i];
                }

                for (int i = 0; i < n; i++)
                {
                    column[i] -= dot * q[i, k];
                }
            }

            double norm = Math.Sqrt(column.Sum(c => c * c));
            for (int i = 0; i < n; i++)
            {
                q[i, j] = column[i] / norm;
            }
        }

        return q;
    }

    /// <summary><c>Q diag(lambda) Q^T</c>, symmetrized exactly.</summary>
    public static double[,] Compose(double[,] q, double[] eigenvalues)
    {
        int n = eigenvalues.Length;
        var a = new double[n, n];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j <= i; j++)
            {
                double s = 0;
                for (int k = 0; k < n; k++)
                {
                    s += q[i, k] * eigenvalues[k] * q[j, k];
                }

                a[i, j] = s;
                a[j, i] = s;
            }
        }

        return a;
    }

    public static double[] MatVec(double[,] a, double[] v)
    {
        int n = v.Length;
        var result = new double[n];
        for (int i = 0; i < n; i++)
        {
            double s = 0;
            for (int j = 0; j < n; j++)
            {
                s += a[i, j] * v[j];
            }

            result[i] = s;
        }

        return result;
    }

    public static double Trace(double[,] a)
    {
        double s = 0;
        for (int i = 0; i < a.GetLength(0); i++)
        {
            s += a[i, i];
        }

        return s;
    }

    /// <summary>Eigenvalues of a symmetric matrix by the cyclic Jacobi method, ascending.</summary>
    public static double[] JacobiEigenvalues(double[,] input)
    {
        int n = input.GetLength(0);
        var a = (double[,])input.Clone();
        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0;
            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    off += a[p, q] * a[p, q];
                }
            }

            if (off < 1e-30)
            {
                break;
            }

            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    if (Math.Abs(a[p, q]) < 1e-300)
                    {
                        continue;
                    }

                    double theta = (a[q, q] - a[p, p]) / (2 * a[p, q]);
                    double t = Math.Sign(theta == 0 ? 1 : theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    double c = 1 / Math.Sqrt(t * t + 1), s = t * c;
                    for (int k = 0; k < n; k++)
                    {
                        double akp = a[k, p], akq = a[k, q];
                        a[k, p] = c * akp - s * akq;
                        a[k, q] = s * akp + c * akq;
                    }

                    for (int k = 0; k < n; k++)
                    {
                        double apk = a[p, k], aqk = a[q, k];
                        a[p, k] = c * apk - s * aqk;
                        a[q, k] = s * apk + c * aqk;
                    }
                }
            }
        }

        var result = new double[n];
        for (int i = 0; i < n; i++)
        {
            result[i] = a[i, i];
        }

        Array.Sort(result);
        return result;
    }

    /// <summary>The blocks flattened and concatenated, as host doubles.</summary>
    public static double[] Flatten(IReadOnlyList<Tensor> blocks) =>
        blocks.SelectMany(b => b.detach().cpu().to(ScalarType.Float64).reshape(-1).data<double>().ToArray()).ToArray();

    /// <summary>Splits a flat vector into float64 tensors shaped like <paramref name="like"/>.</summary>
    public static Tensor[] Split(double[] flat, IReadOnlyList<Tensor> like, ScalarType dtype = ScalarType.Float64)
    {
        var result = new Tensor[like.Count];
        int offset = 0;
        for (int k = 0; k < like.Count; k++)
        {
            int count = (int)like[k].numel();
            result[k] = torch.tensor(flat[offset..(offset + count)], like[k].shape, dtype: dtype);
            offset += count;
        }

        return result;
    }

    public static void AssertClose(double[] expected, double[] actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = Math.Max(1, expected.Max(Math.Abs));
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance * scale,
                $"{what}[{i}]: expected {expected[i]:R}, got {actual[i]:R} (tolerance {tolerance} x {scale})");
        }
    }
}

/// <summary>
/// <c>f(theta) = 1/2 theta^T A theta + b^T theta</c> with theta split over parameters of shapes [3] and [2, 2], A built
/// from chosen eigenvalues and a random orthogonal matrix.
/// </summary>
internal sealed class QuadraticProblem
{
    public const int N = 7;

    public QuadraticProblem(double[] eigenvalues, int seed, bool diagonal = false)
    {
        Assert.Equal(N, eigenvalues.Length);
        Eigenvalues = eigenvalues;
        var q = diagonal ? Identity() : CurvatureTestMath.RandomOrthogonal(N, seed);
        A = CurvatureTestMath.Compose(q, eigenvalues);
        var random = new Random(seed + 1000);
        var b = CurvatureTestMath.Gaussian(random, N);
        var theta = CurvatureTestMath.Gaussian(random, N);

        P1 = torch.tensor(theta[..3], [3], dtype: ScalarType.Float64).requires_grad_(true);
        P2 = torch.tensor(theta[3..], [2, 2], dtype: ScalarType.Float64).requires_grad_(true);
        var flatA = new double[N * N];
        for (int i = 0; i < N; i++)
        {
            for (int j = 0; j < N; j++)
            {
                flatA[i * N + j] = A[i, j];
            }
        }

        using var scope = torch.NewDisposeScope();
        var at = torch.tensor(flatA, [N, N], dtype: ScalarType.Float64);
        var bt = torch.tensor(b, [N], dtype: ScalarType.Float64);
        var x = torch.cat([P1.reshape(-1), P2.reshape(-1)]);
        Loss = (at.mv(x).dot(x).mul(0.5) + bt.dot(x)).MoveToOuterDisposeScope();
    }

    public double[] Eigenvalues { get; }

    public double[,] A { get; }

    public Tensor P1 { get; }

    public Tensor P2 { get; }

    public Tensor[] Parameters => [P1, P2];

    public Tensor Loss { get; }

    private static double[,] Identity()
    {
        var q = new double[N, N];
        for (int i = 0; i < N; i++)
        {
            q[i, i] = 1;
        }

        return q;
    }
}

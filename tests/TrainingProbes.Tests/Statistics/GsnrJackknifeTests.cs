using TorchSharp;
using TrainingProbes.Statistics;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The GSNR's standard error, linearised from the K influences of one pass (<see cref="GsnrStatistics"/>), against the
/// exact delete-one jackknife computed by brute force: the corrected GSNR recomputed from the K - 1 gradients left with
/// each one out (corrected for K - 1), then <c>sqrt((K - 1) / K sum_i (v_i - mean v)^2)</c>.
/// </summary>
public sealed class GsnrJackknifeTests(ITestOutputHelper output)
{
    /// <summary>Gaussian draws by Box-Muller from a seeded generator.</summary>
    private static double Normal(Random random) =>
        Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());

    /// <summary>
    /// [K, P] gradients (float32 values): per coordinate a mean and a Gaussian noise of scale log-uniform in [e^-3, e^3],
    /// with signal-to-noise ratios log-uniform in [<paramref name="lowSnr"/>, <paramref name="highSnr"/>]; a fraction of
    /// the coordinates dead (zeros) and a fraction sparse (one nonzero minibatch).
    /// </summary>
    private static double[,] Window(int k, int p, double lowSnr, double highSnr, double dead, double sparse, int seed)
    {
        var random = new Random(seed);
        var g = new double[k, p];
        for (int c = 0; c < p; c++)
        {
            double u = random.NextDouble();
            if (u < dead) continue;
            if (u < dead + sparse)
            {
                g[random.Next(k), c] = (float)(Normal(random) * Math.Exp(random.NextDouble() * 6 - 3));
                continue;
            }

            double sigma = Math.Exp(random.NextDouble() * 6 - 3);
            double snr = Math.Exp(Math.Log(lowSnr) + random.NextDouble() * (Math.Log(highSnr) - Math.Log(lowSnr)));
            double mu = (random.Next(2) == 0 ? -1 : 1) * snr * sigma;
            for (int i = 0; i < k; i++) g[i, c] = (float)(mu + sigma * Normal(random));
        }

        return g;
    }

    /// <summary>The exact delete-one jackknife of the corrected GSNR, each leave-one-out value corrected for K - 1.</summary>
    private static double ExactJackknife(double[,] g, double storedEpsilon)
    {
        int k = g.GetLength(0), p = g.GetLength(1);
        var values = new double[k];
        for (int left = 0; left < k; left++)
        {
            double r = 0, u = 0;
            for (int c = 0; c < p; c++)
            {
                double m = 0;
                for (int i = 0; i < k; i++)
                    if (i != left) m += g[i, c];
                m /= k - 1;
                double ss = 0;
                for (int i = 0; i < k; i++)
                    if (i != left) ss += (g[i, c] - m) * (g[i, c] - m);
                if (!CoordinateReference.Varies(m, ss, k - 1, storedEpsilon)) continue;
                r += m * m / (ss / (k - 2));
                u++;
            }

            int n = k - 1;
            values[left] = ((n - 3.0) / (n - 1.0) * r - u / n) / p;
        }

        double mean = values.Average();
        return Math.Sqrt((k - 1.0) / k * values.Sum(v => (v - mean) * (v - mean)));
    }

    /// <summary>The sums of <paramref name="g"/> read by the tensor path in float64, and their GSNR and standard error.</summary>
    private static (double Value, double StandardError) Linearised(double[,] g)
    {
        int k = g.GetLength(0);
        using var scope = torch.NewDisposeScope();
        var layout = new CoordinateSums.Layout(k, []);
        var sums = torch.zeros(layout.Length, ScalarType.Float64);
        var state = new CoordinateSums.BlockState(null, 0, 0, 1, null, 0, ScalarType.Float32);
        using (torch.no_grad()) CoordinateSums.Accumulate(torch.tensor(g, ScalarType.Float64), state, layout, 0, sums);
        return GsnrStatistics.FromSums(sums.data<double>().ToArray(), k, 1);
    }

    /// <summary>The same from the managed kernel's float32 pass.</summary>
    private static (double Value, double StandardError) LinearisedByKernel(double[,] g)
    {
        int k = g.GetLength(0), p = g.GetLength(1);
        var layout = new CoordinateSums.Layout(k, []);
        var sums = new double[layout.Length];
        KernelCalls.Accumulate(new WindowKernel(layout, 0), new PinnedBlock(g).Rows(0), p,
            KernelCalls.State(0, 0, 0, 1, 0, 0, CoordinateReference.Float32Epsilon), sums);
        return GsnrStatistics.FromSums(sums, k, 1);
    }

    /// <summary>The corrected GSNR of all K gradients, from the definition.</summary>
    private static double Corrected(double[,] g)
    {
        int k = g.GetLength(0), p = g.GetLength(1);
        var (sums, _) = CoordinateReference.Gsnr(g, 0, p, CoordinateReference.Float32Epsilon, 0);
        return ((k - 3.0) / (k - 1.0) * sums[0] - sums[1] / k) / p;
    }

    /// <summary>
    /// Where the linearisation holds (K = 128: leaving one gradient out moves each variance by under 1%), the linearised
    /// error is the exact jackknife's to a few percent (observed 0.96 of it, seeds 1 to 3): the influences, their
    /// (K - 4) / (K - 2) and 1 / N factors are those of the brute force. A doubled or halved error would be far outside.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void With_many_gradients_the_linearised_error_is_the_exact_jackknifes(int seed)
    {
        const int K = 128, P = 4_000;
        var g = Window(K, P, 0.01, 10, dead: 0.05, sparse: 0.05, seed);
        var (value, linear) = Linearised(g);
        double exact = ExactJackknife(g, CoordinateReference.Float32Epsilon);
        output.WriteLine($"K = {K}, seed {seed}: GSNR {value:E4}, linearised error {linear:E4}, exact jackknife {exact:E4}, ratio {linear / exact:F4}");

        Assert.Equal(Corrected(g), value, 1e-12 * Math.Abs(value));
        Assert.InRange(linear / exact, 0.9, 1.1);
        Assert.False(2 * linear / exact is >= 0.9 and <= 1.1, "a doubled error passes");
        Assert.False(0.5 * linear / exact is >= 0.9 and <= 1.1, "a halved error passes");
    }

    /// <summary>
    /// With the windows' usual K the linearisation understates the exact jackknife: leaving out a gradient that holds a
    /// large share of a coordinate's squared deviations raises that coordinate's ratio by much more than its second-order
    /// expansion (1 / SS_(i) is convex). Observed on P = 20,000 realistic coordinates (signal-to-noise ratios from 0.01
    /// to 10, 5% dead, 5% sparse; seeds 1 to 3): 0.30 to 0.40 of the exact error at K = 8, 0.63 to 0.70 at K = 16 (0.96
    /// at K = 128). These bounds pin that gap, so that a change of either estimate shows here; the managed kernel's
    /// error is the tensor path's.
    /// </summary>
    [Theory]
    [InlineData(8, 0.25, 0.50)]
    [InlineData(16, 0.55, 0.80)]
    public void With_few_gradients_the_linearised_error_understates_the_exact_jackknife(int k, double low, double high)
    {
        const int P = 20_000;
        for (int seed = 1; seed <= 3; seed++)
        {
            var g = Window(k, P, 0.01, 10, dead: 0.05, sparse: 0.05, seed);
            var (value, linear) = Linearised(g);
            var (kernelValue, kernelLinear) = LinearisedByKernel(g);
            double exact = ExactJackknife(g, CoordinateReference.Float32Epsilon);
            output.WriteLine($"K = {k}, seed {seed}: GSNR {value:E4}, linearised error {linear:E4} (kernel {kernelLinear:E4}), exact jackknife {exact:E4}, ratio {linear / exact:F4}");

            Assert.Equal(Corrected(g), value, 1e-12 * Math.Abs(value));
            Assert.Equal(value, kernelValue, 1e-5 * Math.Abs(value));
            Assert.Equal(linear, kernelLinear, 1e-4 * linear);
            Assert.InRange(linear / exact, low, high);
            Assert.False(2 * linear / exact is var doubled && doubled >= low && doubled <= high, "a doubled error passes");
        }
    }
}

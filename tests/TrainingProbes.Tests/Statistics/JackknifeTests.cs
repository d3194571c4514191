using TrainingProbes.Statistics;

namespace TrainingProbes.Tests.Statistics;

/// <summary>The delete-one jackknife's standard error, against its closed form and at undefined and infinite values.</summary>
public sealed class JackknifeTests
{
    [Fact]
    public void Leave_one_out_means_give_the_standard_error_of_the_mean()
    {
        // For the mean, v_(i) = (sum - x_i) / (K - 1), and the jackknife reproduces s / sqrt(K) exactly.
        double[] x = [0.3, -1.2, 2.5, 0.7, 1.1, -0.4];
        int k = x.Length;
        double sum = x.Sum(), mean = sum / k;
        double[] leaveOneOut = x.Select(v => (sum - v) / (k - 1)).ToArray();
        double sampleVariance = x.Sum(v => (v - mean) * (v - mean)) / (k - 1);
        Assert.Equal(Math.Sqrt(sampleVariance / k), Jackknife.StandardError(leaveOneOut), 1e-12);
    }

    [Fact]
    public void An_infinite_leave_one_out_value_makes_the_error_unbounded_and_a_NaN_makes_it_unknown()
    {
        Assert.Equal(double.PositiveInfinity, Jackknife.StandardError([1.0, 2.0, double.PositiveInfinity, 1.5]));
        Assert.True(double.IsNaN(Jackknife.StandardError([1.0, double.NaN, double.PositiveInfinity, 1.5])));
    }
}

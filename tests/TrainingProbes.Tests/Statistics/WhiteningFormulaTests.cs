using TorchSharp;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.StatisticsTests;

/// <summary>
/// The forms of the whitening's formulas (<c>Whitening.Formulas.cs</c>) agree with each other and with the definition
/// written here in double and rounded to float32: the fisher D as the tensor backend and the managed pass's scalar fallback compute it, over F
/// from negative to huge (D = 0 where F &lt;= 0 or the raised F is below <see cref="Whitening.SmallestFisher"/>), and
/// the fold of F, which keeps F where the mean square is not finite. The managed pass's vector forms are held to the
/// same definition through the kernel (<see cref="Tests.Statistics.WindowKernelTests"/>).
/// </summary>
public sealed class WhiteningFormulaTests
{
    private static readonly double[] Fisher =
        [-1, 0, 1e-300, 1e-80, 1e-76, 1e-40, 1e-36, 1e-30, 1e-8, 0.5, 1, 3, 1e30, 1e36, 1e40, 1e200];

    [Theory]
    [InlineData(0.0, 1.0)]
    [InlineData(1e-8, 1.0)]
    [InlineData(0.0, 10.0)]
    [InlineData(1e-78, 2.5)]
    public void The_fisher_d_of_the_tensor_and_scalar_forms_is_the_definition(double floor, double bias)
    {
        using var scope = torch.NewDisposeScope();
        var d = Whitening.FisherD(torch.tensor(Fisher, ScalarType.Float64), floor, bias, ScalarType.Float32).data<float>().ToArray();
        for (int i = 0; i < Fisher.Length; i++)
        {
            double raised = Math.Max(Fisher[i], floor) * bias;
            float expected = Fisher[i] > 0 && raised >= Whitening.SmallestFisher ? (float)(1 / Math.Sqrt(raised)) : 0;   // rounded to float32
            Assert.Equal(expected, Whitening.FisherD(Fisher[i], floor, bias), expected * 1.2e-7);
            Assert.Equal(expected, d[i], expected * 1.2e-7);
        }
    }

    [Fact]
    public void The_fold_keeps_f_where_the_mean_square_is_not_finite()
    {
        using var scope = torch.NewDisposeScope();
        double[] old = [1, 2, 3, 4], meanSquare = [4, double.PositiveInfinity, double.NaN, 0];
        var fisher = torch.tensor(old, ScalarType.Float64);
        Whitening.Fold(fisher, torch.tensor(meanSquare, ScalarType.Float64), 0.9);
        var folded = fisher.data<double>().ToArray();
        for (int i = 0; i < old.Length; i++)
            Assert.Equal(double.IsFinite(meanSquare[i]) ? 0.9 * old[i] + 0.1 * meanSquare[i] : old[i], folded[i], 1e-15);
    }

    [Fact]
    public void The_adaptive_d_is_the_absolute_theta_plus_eta_in_the_targets_dtype()
    {
        using var scope = torch.NewDisposeScope();
        var theta = torch.tensor(new[] { -2.0, 0, 0.25, 1e-3 }, ScalarType.Float64);
        var d = Whitening.AdaptiveD(theta, 0.05, ScalarType.Float32);
        Assert.Equal(ScalarType.Float32, d.dtype);
        double[] expected = [2.05, 0.05, 0.3, 0.051];
        var actual = d.data<float>().ToArray();
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], expected[i] * 1.2e-7);
    }
}

using System.Globalization;
using System.Text.RegularExpressions;
using TorchSharp;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The rule docs/REFERENCE.md states for a GSNR coordinate that counts as constant, read from the document and checked
/// against both implementations (the tensor definition and the managed kernel): a coordinate varies when
/// SS_c &gt; (K - 1) (f eps |m_c|)^2, f and eps as the document gives them for float32.
/// </summary>
public sealed partial class DocumentedGsnrRuleTests
{
    private const int K = 8;

    private static (double Factor, double Epsilon) DocumentedRule()
    {
        string text = File.ReadAllText(Path.Combine(RepositoryRoot(), "docs", "REFERENCE.md"));
        var rule = Rule().Match(text);
        Assert.True(rule.Success, "docs/REFERENCE.md does not state the GSNR's rule for a constant coordinate as 'SS_c must exceed (K - 1) (f eps |m_c|)^2'");
        var epsilon = Float32Epsilon().Match(text);
        Assert.True(epsilon.Success, "docs/REFERENCE.md does not give eps for float32 as 2^-n");
        return (double.Parse(rule.Groups["f"].Value, CultureInfo.InvariantCulture), Math.Pow(2, -int.Parse(epsilon.Groups["n"].Value, CultureInfo.InvariantCulture)));
    }

    /// <summary>
    /// Two float32 columns of K values 1.5 +- d, alternating (mean exactly 1.5, SS = K d^2): one with d half the
    /// documented threshold, one with d twice it. Returns how many of them the implementation counts as varying.
    /// </summary>
    private static (double[,] G, int ExpectedVarying) Columns(double factor, double epsilon)
    {
        double threshold = factor * epsilon * 1.5 * Math.Sqrt((K - 1.0) / K);   // d at which K d^2 = (K - 1) (f eps m)^2
        double below = Math.Round(0.5 * threshold / epsilon) * epsilon, above = Math.Round(2 * threshold / epsilon) * epsilon;
        var g = new double[K, 2];
        for (int i = 0; i < K; i++)
        {
            double sign = i % 2 == 0 ? 1 : -1;
            g[i, 0] = (float)(1.5 + sign * below);
            g[i, 1] = (float)(1.5 + sign * above);
        }

        return (g, 1);
    }

    [Fact]
    public void The_tensor_definition_applies_the_documented_rule()
    {
        var (factor, epsilon) = DocumentedRule();
        var (g, expected) = Columns(factor, epsilon);
        using var scope = torch.NewDisposeScope();
        var layout = new CoordinateSums.Layout(K, [Geometry.Euclidean]);
        var sums = torch.zeros(layout.Length, ScalarType.Float64);
        var state = new CoordinateSums.BlockState(null, 0.9, 0, 1, null, 0, ScalarType.Float32);
        using (torch.no_grad())
            CoordinateSums.Accumulate(torch.tensor(g, ScalarType.Float64).to(ScalarType.Float32), state, layout, 0, sums);
        Assert.Equal(expected, sums[layout.Gsnr + 1].item<double>());
    }

    [Fact]
    public void The_managed_kernel_applies_the_documented_rule()
    {
        var (factor, epsilon) = DocumentedRule();
        var (g, expected) = Columns(factor, epsilon);
        var padded = new double[K, 8];   // the kernel reads 8 columns at a time: the other 6 are zeros (constant)
        for (int i = 0; i < K; i++)
            for (int c = 0; c < 2; c++) padded[i, c] = g[i, c];
        var layout = new CoordinateSums.Layout(K, [Geometry.Euclidean]);
        var kernel = new WindowKernel(layout, 0);
        var sums = new double[layout.Length];
        KernelCalls.Accumulate(kernel, new PinnedBlock(padded).Rows(0), 8, KernelCalls.State(0, 0.9, 0, 1, 0, 0, epsilon), sums);
        Assert.Equal(expected, sums[layout.Gsnr + 1]);
    }

    private static string RepositoryRoot()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "TrainingProbes.sln"))) directory = directory.Parent;
        return directory?.FullName ?? throw new InvalidOperationException("TrainingProbes.sln not found above " + AppContext.BaseDirectory);
    }

    [GeneratedRegex(@"SS_c must exceed \(K - 1\) \((?<f>[0-9.]+) eps \|m_c\|\)\^2")]
    private static partial Regex Rule();

    [GeneratedRegex(@"\(2\^-(?<n>[0-9]+) for float32\)")]
    private static partial Regex Float32Epsilon();
}

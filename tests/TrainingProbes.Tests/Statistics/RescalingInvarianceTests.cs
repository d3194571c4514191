using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>
/// A ReLU MLP and the same function with layer 1 (weights and bias) times a and layer 2's weights divided by a:
/// the fisher and adaptive quantities and the GSNR must not move, the euclidean ones must; in the default family (the
/// micro-batches of each window's step) and in the step family alike.
/// </summary>
public sealed class RescalingInvarianceTests
{
    private const int K = 5;
    private const int N = 6;
    private const int Windows = 2;
    private const int Batch = 8;

    // With eta = 0 every value of the first-order family is invariant in the fisher and adaptive geometries.
    private static readonly string[] InvariantNames = ReferenceIndicators.FirstOrderNames;

    private static readonly string[] EuclideanChanging =
    [
        Indicators.GradientNorm,
        Indicators.Regret,
        Indicators.Cosine,
        Indicators.Disparity,
    ];

    [Theory]
    [InlineData(0.1)]
    [InlineData(10.0)]
    public void FisherAdaptiveAndGsnrAreInvariantEuclideanIsNot(double a)
    {
        // A seed of its own: drawn from whatever state earlier tests left, the weights were sometimes a network whose
        // ReLUs were all off on these batches, where only the last layer (not rescaled) has a gradient and the
        // euclidean values cannot move.
        torch.manual_seed(17);
        using var original = Mlp();
        using var rescaled = Mlp();
        using (torch.no_grad())
        {
            foreach (var ((_, source), (name, target)) in original.named_parameters().Zip(rescaled.named_parameters()))
            {
                target.copy_(source);
                if (name is "fc1.weight" or "fc1.bias") target.mul_(a);
                if (name is "fc2.weight") target.div_(a);
            }
        }

        var batches = Batches(seed: 5, count: Windows * N);
        AssertSameFunction(original, rescaled, batches[0].X);

        var snapshotsOriginal = Train(original, batches);
        var snapshotsRescaled = Train(rescaled, batches);

        for (int w = 0; w < Windows; w++)
            foreach (var prefix in new[] { "", "step." })
            {
                var s1 = snapshotsOriginal[w];
                var s2 = snapshotsRescaled[w];
                foreach (var geometry in new[] { Geometry.Fisher, Geometry.Adaptive })
                {
                    foreach (var name in InvariantNames)
                    {
                        double v1 = s1.Get(prefix + name, geometry), v2 = s2.Get(prefix + name, geometry);
                        Assert.True(!double.IsNaN(v1), $"window {w}: {prefix}{name} [{geometry}] is {v1}");
                        double scale = name is Indicators.Regret or Indicators.RegretUpper
                            ? s1.Get(prefix + Indicators.GradientNorm, geometry)
                            : name is Indicators.Cosine ? 1 : 0;
                        Close.Assert(v1, v2, 1e-9, $"a={a} window {w}: {prefix}{name} [{geometry}]", scale);
                    }
                }

                Close.Assert(s1.Get(prefix + Indicators.Gsnr), s2.Get(prefix + Indicators.Gsnr), 1e-9, $"a={a} window {w}: {prefix}gsnr");
                Close.Assert(s1.Get(prefix + Indicators.EbCriterion), s2.Get(prefix + Indicators.EbCriterion), 1e-9,
                    $"a={a} window {w}: {prefix}eb_criterion", scale: 1 + K * Math.Abs(s1.Get(prefix + Indicators.Gsnr)));

                foreach (var name in EuclideanChanging)
                {
                    double v1 = s1.Get(prefix + name, Geometry.Euclidean), v2 = s2.Get(prefix + name, Geometry.Euclidean);
                    double change = Close.RelativeDifference(v1, v2);
                    Assert.True(change > 1e-3, $"a={a} window {w}: euclidean {prefix}{name} should move under the rescaling, but {v1:R} -> {v2:R} (relative {change:E3}).");
                }
            }
    }

    private static Sequential Mlp() => nn.Sequential(
        ("fc1", nn.Linear(6, 5, dtype: ScalarType.Float64)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(5, 4, dtype: ScalarType.Float64)),
        ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(4, 3, dtype: ScalarType.Float64)));

    private static void AssertSameFunction(Sequential first, Sequential second, double[] x)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var input = torch.tensor(x, dtype: ScalarType.Float64).reshape(Batch, 6);
        var y1 = first.forward(input).data<double>().ToArray();
        var y2 = second.forward(input).data<double>().ToArray();
        double largest = y1.Max(Math.Abs);
        for (int i = 0; i < y1.Length; i++)
            Assert.True(Math.Abs(y1[i] - y2[i]) <= 1e-12 * largest, $"output {i}: {y1[i]:R} vs {y2[i]:R}: the rescaled MLP is not the same function");
    }

    private static IReadOnlyList<ProbeSnapshot> Train(Sequential model, List<(double[] X, long[] Labels)> batches)
    {
        var optimizer = new GcSafeSgd(model.parameters(), 0.0);   // theta fixed: both models see the same points
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = K, Interval = N, Output = null, OverheadBudget = null, StepStatistics = true, Loss = (output, target) => nn.functional.cross_entropy(output, target),
        }, optimizer);
        foreach (var (x, labels) in batches)
        {
            using var scope = torch.NewDisposeScope();
            optimizer.zero_grad();
            var input = torch.tensor(x, dtype: ScalarType.Float64).reshape(Batch, 6);
            var target = torch.tensor(labels, dtype: ScalarType.Int64);
            var loss = nn.functional.cross_entropy(model.forward(input), target);
            loss.backward();
            session.Step(loss, input, target);
            optimizer.step();
        }

        Assert.Equal(0, session.FailureCount);
        session.Flush();
        var history = session.History;
        Assert.Equal(Windows, history.Count);
        return history;
    }

    private static List<(double[] X, long[] Labels)> Batches(int seed, int count)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count)
            .Select(_ => (
                Enumerable.Range(0, Batch * 6).Select(_ => 2 * random.NextDouble() - 1).ToArray(),
                Enumerable.Range(0, Batch).Select(_ => (long)random.Next(3)).ToArray()))
            .ToList();
    }
}

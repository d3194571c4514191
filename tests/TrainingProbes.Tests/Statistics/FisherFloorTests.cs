using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>
/// The per-tensor Fisher floor, against a hand computation, and its invariance to layer rescaling: a window's floor is
/// FisherFloor times the tensor's mean F after the previous window (the first window's, after its own fold).
/// </summary>
public sealed class FisherFloorTests
{
    /// <summary>Copies each window's gradients, per parameter tensor, to the host.</summary>
    private sealed class Recorder : TrainingProbe
    {
        public List<double[][][]> Windows { get; } = [];   // window -> K -> tensor -> values

        public override string Name => "recorder";

        public override void OnWindowClosed(ProbeWindowContext window) =>
            Windows.Add(Enumerable.Range(0, window.WindowSize).Select(i =>
                window.ParameterNames.Select(n => window.Gradients(n)[i].flatten().data<double>().ToArray()).ToArray()).ToArray());
    }

    private static nn.Module<Tensor, Tensor> Network()
    {
        torch.manual_seed(12);
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(ScalarType.Float64);
    }

    /// <summary>Two windows (steps 0 and 4, K = 4 micro-batches of 2) on inputs whose last feature is almost always zero.</summary>
    private static IReadOnlyList<ProbeSnapshot> Run(nn.Module<Tensor, Tensor> model, double floor, Recorder? recorder = null)
    {
        // The last feature's weights get tiny Fisher values.
        var generator = new Generator(31);
        var x = torch.randn([5 * 8, 6], dtype: ScalarType.Float64, generator: generator);
        x[TensorIndex.Colon, 5] = torch.where(torch.rand([40], dtype: ScalarType.Float64, generator: generator) < 0.1, 1e-6, 0.0);
        var y = torch.randint(0, 3, [40], generator: generator);
        var options = new ProbeOptions
        {
            WindowSize = 4, Interval = 4, Output = null, OverheadBudget = null, FisherDecay = 0, FisherFloor = floor,
            Probes = recorder is null ? [] : [recorder], Loss = (output, target) => nn.functional.cross_entropy(output, target),
        };
        using var session = ProbeSession.Attach(model, options);
        for (int i = 0; i < 5; i++)
        {
            using var scope = torch.NewDisposeScope();
            model.zero_grad();
            var input = x.narrow(0, 8 * i, 8);
            var target = y.narrow(0, 8 * i, 8);
            var loss = nn.functional.cross_entropy(model.call(input), target);
            loss.backward();
            session.Step(loss, input, target);
        }
        session.Flush();
        Assert.Equal(2, session.History.Count);
        return session.History;
    }

    /// <summary>F = mean_i g_i^2 per coordinate of each tensor (FisherDecay 0: one window).</summary>
    private static double[][] Fisher(double[][][] window) =>
        Enumerable.Range(0, window[0].Length).Select(t => Enumerable.Range(0, window[0][t].Length)
            .Select(c => Enumerable.Range(0, window.Length).Average(i => window[i][t][c] * window[i][t][c])).ToArray()).ToArray();

    [Fact]
    public void The_floor_raises_each_coordinates_Fisher_to_a_fraction_of_its_tensors_mean()
    {
        const double Floor = 1e-3;
        var recorder = new Recorder();
        var snapshots = Run(Network(), Floor, recorder);

        // By hand: D = 1/sqrt(max(F, floor)) where F > 0, the floor per tensor Floor x mean(F) of the first window (its
        // own, in the first window; the first window's again, in the second).
        var first = Fisher(recorder.Windows[0]);
        for (int w = 0; w < 2; w++)
        {
            var window = recorder.Windows[w];
            var f = Fisher(window);
            var d = f.SelectMany((tensor, t) => tensor.Select(v => v > 0 ? 1 / Math.Sqrt(Math.Max(v, Floor * first[t].Average())) : 0)).ToArray();
            int k = window.Length;
            var g = Enumerable.Range(0, k).Select(i => window[i].SelectMany(v => v).ToArray()).ToList();
            var expected = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, d), 0.9, scale: k);
            foreach (var (name, value) in expected)
                Close.Assert(value, snapshots[w].Get(name, Geometry.Fisher), 1e-9, $"window {w}: {name} [fisher] with floor", scale: expected[Indicators.GradientNorm]);
        }

        // And the floor mattered: without it the fisher values differ.
        var unfloored = Run(Network(), 0);
        for (int w = 0; w < 2; w++)
        {
            double change = Close.RelativeDifference(unfloored[w].Get(Indicators.GradientNorm, Geometry.Fisher), snapshots[w].Get(Indicators.GradientNorm, Geometry.Fisher));
            Assert.True(change > (w == 0 ? 1e-3 : 1e-5), $"window {w}: the floor moved the fisher norm by {change:E2} only");
        }
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(10.0)]
    public void The_floor_keeps_the_invariance_to_layer_rescaling(double a)
    {
        var original = Network();
        var rescaled = Network();
        using (torch.no_grad())
        {
            var first = (Linear)((Sequential)rescaled)[0];
            var second = (Linear)((Sequential)rescaled)[2];
            first.weight!.mul_(a);
            first.bias!.mul_(a);
            second.weight!.div_(a);
        }

        var before = Run(original, 1e-3)[1];
        var after = Run(rescaled, 1e-3)[1];
        foreach (var name in ReferenceIndicators.FirstOrderNames)
            Assert.True(Close.RelativeDifference(before.Get(name, Geometry.Fisher), after.Get(name, Geometry.Fisher)) < 1e-9, $"{name} [fisher] moved");
        Assert.True(Close.RelativeDifference(before.Get(Indicators.GradientNorm, Geometry.Euclidean), after.Get(Indicators.GradientNorm, Geometry.Euclidean)) > 1e-3);
    }

    [Fact]
    public void A_floor_outside_zero_to_one_is_rejected()
    {
        Assert.Contains("FisherFloor", Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { FisherFloor = 1 }).Message);
        Assert.Contains("FisherFloor", Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { FisherFloor = -1e-3 }).Message);
    }
}

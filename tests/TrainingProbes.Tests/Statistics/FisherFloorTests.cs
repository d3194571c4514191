using static TrainingProbes.Tests.StepNames;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>The per-tensor Fisher floor, against a hand computation, and its invariance to layer rescaling.</summary>
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

    private static ProbeSnapshot Run(nn.Module<Tensor, Tensor> model, double floor, Recorder? recorder = null)
    {
        // Inputs where the last feature is almost always zero: its weights get tiny Fisher values.
        var generator = new Generator(31);
        var x = torch.randn([4 * 8, 6], dtype: ScalarType.Float64, generator: generator);
        x[TensorIndex.Colon, 5] = torch.where(torch.rand([32], dtype: ScalarType.Float64, generator: generator) < 0.1, 1e-6, 0.0);
        var y = torch.randint(0, 3, [32], generator: generator);
        var options = new ProbeOptions
        {
            WindowSize = 4, Interval = 4, Output = null, OverheadBudget = null, FisherDecay = 0, FisherFloor = floor,
            Probes = recorder is null ? [] : [recorder],
        };
        using var session = ProbeSession.Attach(model, options);
        for (int i = 0; i < 4; i++)
        {
            using var scope = torch.NewDisposeScope();
            model.zero_grad();
            var loss = nn.functional.cross_entropy(model.call(x.narrow(0, 8 * i, 8)), y.narrow(0, 8 * i, 8));
            loss.backward();
            session.Step(loss);
        }
        session.Flush();
        return session.Latest!;
    }

    [Fact]
    public void The_floor_raises_each_coordinates_Fisher_to_a_fraction_of_its_tensors_mean()
    {
        const double Floor = 1e-3;
        var recorder = new Recorder();
        var snapshot = Run(Network(), Floor, recorder);

        // By hand: F = mean_i g_i^2 per coordinate (FisherDecay 0, one window), raised per tensor to Floor x mean(F),
        // D = 1/sqrt(F) where F > 0.
        var window = recorder.Windows[0];
        int k = window.Length, tensors = window[0].Length;
        var d = new List<double>();
        for (int t = 0; t < tensors; t++)
        {
            int n = window[0][t].Length;
            var f = Enumerable.Range(0, n).Select(c => Enumerable.Range(0, k).Average(i => window[i][t][c] * window[i][t][c])).ToArray();
            double floor = Floor * f.Average();
            d.AddRange(f.Select(v => v > 0 ? 1 / Math.Sqrt(Math.Max(v, floor)) : 0));
        }

        var g = Enumerable.Range(0, k).Select(i => window[i].SelectMany(v => v).ToArray()).ToList();
        var expected = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, d.ToArray()), 0.9);
        foreach (var (name, value) in expected)
            Close.Assert(value, snapshot.Get(Step(name), Geometry.Fisher), 1e-9, $"{name} [fisher] with floor", scale: expected[Indicators.GradientNorm]);

        // And the floor mattered: without it the fisher values differ.
        var unfloored = Run(Network(), 0);
        Assert.True(Close.RelativeDifference(unfloored.Get(Step(Indicators.GradientNorm), Geometry.Fisher), snapshot.Get(Step(Indicators.GradientNorm), Geometry.Fisher)) > 1e-3);
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

        var before = Run(original, 1e-3);
        var after = Run(rescaled, 1e-3);
        foreach (var name in ReferenceIndicators.FirstOrderNames)
            Assert.True(Close.RelativeDifference(before.Get(Step(name), Geometry.Fisher), after.Get(Step(name), Geometry.Fisher)) < 1e-9, $"{name} [fisher] moved");
        Assert.True(Close.RelativeDifference(before.Get(Step(Indicators.GradientNorm), Geometry.Euclidean), after.Get(Step(Indicators.GradientNorm), Geometry.Euclidean)) > 1e-3);
    }

    [Fact]
    public void A_floor_outside_zero_to_one_is_rejected()
    {
        Assert.Contains("FisherFloor", Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { FisherFloor = 1 }).Message);
        Assert.Contains("FisherFloor", Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { FisherFloor = -1e-3 }).Message);
    }
}

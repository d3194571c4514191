using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Probes;

public sealed class ParameterDriftTests
{
    /// <summary>Records the watched parameters, as doubles, at a window's first step and when it closes.</summary>
    private sealed class ThetaRecorder : TrainingProbe
    {
        public override string Name => "theta_recorder";

        public double[]? First { get; private set; }

        public double[]? Last { get; private set; }

        private static double[] Read(nn.Module model) =>
            model.parameters().SelectMany(p => p.detach().to(ScalarType.Float64).data<double>().ToArray()).ToArray();

        public override void OnStep(ProbeStepContext step)
        {
            if (step.WindowSlot == 0) First = Read(step.Model);
        }

        public override void OnWindowClosed(ProbeWindowContext window) => Last = Read(window.Model);
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float64)]
    public void Drift_is_the_relative_change_of_theta_over_the_window(ScalarType dtype)
    {
        torch.manual_seed(3);
        var model = nn.Sequential(nn.Linear(37, 19), nn.Tanh(), nn.Linear(19, 3)).to(dtype);
        var optimizer = optim.SGD(model.parameters(), 0.2);
        var recorder = new ThetaRecorder();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 5, Interval = 10, OverheadBudget = null, Output = null, Probes = [recorder],
        }, optimizer);
        var generator = new Generator(4);
        for (int step = 0; step < 25; step++)
        {
            using var scope = torch.NewDisposeScope();
            var x = torch.randn([16, 37], generator: generator).to(dtype);
            var y = torch.randint(0, 3, [16], generator: generator);
            optimizer.zero_grad();
            var loss = nn.functional.cross_entropy(model.call(x), y);
            loss.backward();
            session.Step(loss, x, y);
            optimizer.step();
        }

        double moved = recorder.First!.Zip(recorder.Last!).Sum(p => (p.Second - p.First) * (p.Second - p.First));
        double norm = recorder.First!.Sum(v => v * v);
        double expected = Math.Sqrt(moved / norm);
        session.Flush();
        double published = session.Latest!.Get(Indicators.ParameterDrift);
        Assert.True(expected > 1e-3, $"the parameters barely moved ({expected})");
        Assert.Equal(expected, published, expected * 1e-6);
    }
}

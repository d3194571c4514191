using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Probes;

public sealed class ParameterDriftTests
{
    /// <summary>Records the watched parameters, as doubles, when each window closes.</summary>
    private sealed class ThetaRecorder : TrainingProbe
    {
        public override string Name => "theta_recorder";

        public List<double[]> AtClose { get; } = [];

        public override void OnWindowClosed(ProbeWindowContext window) =>
            AtClose.Add(window.Model.parameters().SelectMany(p => p.detach().to(ScalarType.Float64).data<double>().ToArray()).ToArray());
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float64)]
    public void Drift_is_the_relative_change_of_theta_since_the_previous_window(ScalarType dtype)
    {
        torch.manual_seed(3);
        var model = nn.Sequential(nn.Linear(37, 19), nn.Tanh(), nn.Linear(19, 3)).to(dtype);
        var optimizer = new GcSafeSgd(model.parameters(), 0.2);
        var recorder = new ThetaRecorder();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 5, Interval = 10, OverheadBudget = null, Output = null, Probes = [recorder],
            Loss = (output, target) => nn.functional.cross_entropy(output, target),
        }, optimizer);
        // Inputs drawn in float32 and converted (randn in float64 would draw other values).
        using var generator = new Generator(4);
        var task = new Classification(Features: 37);
        Trainer.Train(model, optimizer, 0, 25, _ =>
        {
            var (x, y) = task.Draw(generator);
            return (x.to(dtype), y);
        }, (loss, x, y) => session.Step(loss, x, y));

        // Windows at steps 0, 10 and 20: the first has no previous window, no drift.
        session.Flush();
        Assert.Equal(3, session.History.Count);
        Assert.False(session.History[0].TryGetValue(Indicators.ParameterDrift, Geometry.None, out _));
        for (int w = 1; w < 3; w++)
        {
            var (previous, now) = (recorder.AtClose[w - 1], recorder.AtClose[w]);
            double moved = previous.Zip(now).Sum(p => (p.Second - p.First) * (p.Second - p.First));
            double expected = Math.Sqrt(moved / previous.Sum(v => v * v));
            double published = session.History[w].Get(Indicators.ParameterDrift);
            Assert.True(expected > 1e-3, $"the parameters barely moved ({expected})");
            Assert.Equal(expected, published, expected * 1e-6);
        }
    }
}

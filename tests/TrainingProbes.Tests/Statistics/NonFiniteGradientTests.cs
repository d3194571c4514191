using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// One NaN gradient: the window that holds it publishes none of its step family's values, and the Fisher average,
/// on the managed path (float32 on a CPU) and on the tensor path (float64), keeps its old value where the square is
/// not finite, so every later window's fisher values are as finite as without the NaN.
/// </summary>
public sealed class NonFiniteGradientTests
{
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float64)]
    public void One_nan_gradient_is_reported_in_its_window_and_poisons_no_later_one(ScalarType dtype)
    {
        torch.manual_seed(3);
        var model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).to(dtype);
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null, Strict = false, BuiltInProbes = true, StepStatistics = true,
            Loss = (output, target) => nn.functional.cross_entropy(output, target),
        });
        var first = (TorchSharp.Modules.Linear)model.children().First();
        for (int step = 0; step < 60; step++)
        {
            using var scope = torch.NewDisposeScope();
            var generator = new Generator((ulong)(50 + step));
            var x = torch.randn([16, 6], generator: generator).to(dtype);
            var y = torch.randint(0, 3, [16], generator: generator);
            optimizer.zero_grad();
            var loss = nn.functional.cross_entropy(model.call(x), y);
            loss.backward();
            if (step == 11)
                using (torch.no_grad())
                    first.weight!.grad![0, 0] = torch.tensor(double.NaN);
            session.Step(loss, x, y);
            if (step != 11) optimizer.step();
        }

        session.Flush();
        var poisoned = session.History.Single(s => s.Window == 1);
        Assert.False(poisoned.TryGetValue("step." + Indicators.Cosine, Geometry.Euclidean, out _));
        Assert.Contains(poisoned.Failures, f => f.Reason == "non_finite_gradient");
        foreach (var later in session.History.Where(s => s.Window > 1))
        {
            Assert.True(later.TryGetValue("step." + Indicators.Cosine, Geometry.Fisher, out double cosine), $"window {later.Window} has no fisher cosine");
            Assert.True(double.IsFinite(cosine), $"window {later.Window}: step.gradient.cosine[fisher] = {cosine}");
        }
    }
}

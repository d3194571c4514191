using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Session;

// The custom probe shown in docs/REFERENCE.md ("Your own probes"), verbatim.
sealed class GradientShareProbe(string parameter) : TrainingProbe
{
    public override string Name => "gradient_share";

    public override void OnWindowClosed(ProbeWindowContext window)
    {
        var total = window.ParameterNames.Select(n => window.Gradients(n).square().sum()).Aggregate((a, b) => a + b);
        // Reported as a tensor: read with the window's other values, in one transfer.
        window.Report("gradient_share.of_parameter", window.Gradients(parameter).square().sum() / total);
    }
}

public sealed class ReadmeExampleTests
{
    private static readonly Scalar Two = 2.ToScalar();

    private static Tensor SquaredError(Tensor output, Tensor target) => (output - target).pow(Two).mean();

    [Fact]
    public void The_readme_probe_reports_the_share_of_gradient_energy_of_its_parameter()
    {
        torch.manual_seed(11);
        var model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(ScalarType.Float64);
        var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 3, Interval = 3, Output = null, OverheadBudget = null, Probes = [new GradientShareProbe("2.weight")],
        }, optimizer);

        // Hand bookkeeping at the window's step (step 0): the squared norms of each micro-batch's gradient (3 micro-batches of
        // 2 of the 8 examples), by autograd on the model itself before the optimizer step.
        double share = 0, total = 0;
        for (int step = 0; step < 3; step++)
        {
            using var scope = torch.NewDisposeScope();
            var x = torch.randn(8, 4, dtype: ScalarType.Float64);
            var y = torch.zeros(8, 2, dtype: ScalarType.Float64);
            optimizer.zero_grad();
            var loss = SquaredError(model.call(x), y);
            loss.backward();
            if (step == 0)
                for (int k = 0; k < 3; k++)
                {
                    var micro = SquaredError(model.call(x.narrow(0, 2 * k, 2)), y.narrow(0, 2 * k, 2));
                    var names = model.named_parameters().Select(p => p.name).ToArray();
                    var grads = torch.autograd.grad([micro], model.parameters().ToArray());
                    for (int i = 0; i < names.Length; i++)
                    {
                        double squared = grads[i].data<double>().ToArray().Sum(v => v * v);
                        total += squared;
                        if (names[i] == "2.weight") share += squared;
                    }
                }

            model.Probe(loss, optimizer, x, y, SquaredError);
            optimizer.step();
        }

        session.Flush();
        var value = session.Latest!.Values.Single(v => v.Name == "gradient_share.of_parameter");
        Assert.Equal("gradient_share", value.Probe);
        Assert.Equal(share / total, value.Value, 12);
        Assert.InRange(value.Value, 1e-6, 1 - 1e-6);
    }
}

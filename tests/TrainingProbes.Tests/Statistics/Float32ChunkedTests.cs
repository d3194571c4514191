using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>
/// The default path: a float32 model whose layers span many blocks of the managed pass (the Gram matrices, GSNR sums
/// and Fisher fold accumulated block by block, the micro-batch gradients made from the layers' factors as they are
/// read), checked against the double-precision reference on the micro-batch gradients a probe reads.
/// </summary>
public sealed class Float32ChunkedTests
{
    /// <summary>Copies each window's gradients and the parameters at window close to the host.</summary>
    private sealed class Recorder(IReadOnlyList<Parameter> parameters) : TrainingProbe
    {
        public List<(double[][] Gradients, double[] Theta)> Windows { get; } = [];

        public override string Name => "recorder";

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            var gradients = Enumerable.Range(0, window.WindowSize).Select(i =>
                window.ParameterNames.SelectMany(n => window.Gradients(n)[i].flatten().data<float>().ToArray()).Select(v => (double)v).ToArray())
                .ToArray();
            var theta = parameters.SelectMany(p => p.detach().flatten().data<float>().ToArray()).Select(v => (double)v).ToArray();
            Windows.Add((gradients, theta));
        }
    }

    [Fact]
    public void Float32_statistics_over_several_chunks_match_the_double_reference()
    {
        torch.manual_seed(5);
        var model = nn.Sequential(nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 10));
        var parameters = model.parameters().ToList();
        Assert.True(parameters.Sum(p => p.numel()) > 32768, "the model must span two chunks (32768 columns each for K = 8)");
        var recorder = new Recorder(parameters);
        var optimizer = new GcSafeSgd(model.parameters(), 0.1, momentum: 0.9);
        // No Fisher floor: the reference whitens with 1/sqrt(F) itself (FisherFloorTests check the floor).
        var lossFunction = nn.CrossEntropyLoss();
        var options = new ProbeOptions
        {
            WindowSize = 8, Interval = 10, Output = null, OverheadBudget = null, FisherFloor = 0, Probes = [recorder], Loss = lossFunction.call,
        };
        using var session = ProbeSession.Attach(model, options, optimizer);

        using var generator = new Generator(9);   // uniform inputs (rand), not the Classification task's normal ones
        Trainer.Train(model, optimizer, 0, 30, _ => (torch.rand([32, 784], generator: generator), torch.randint(0, 10, [32], generator: generator)),
            (loss, x, y) => session.Step(loss, x, y), lossFunction.call);

        Assert.Equal(0, session.FailureCount);
        Assert.Equal(3, recorder.Windows.Count);
        var fisher = new ReferenceFisher(recorder.Windows[0].Theta.Length, options.FisherDecay);
        for (int w = 0; w < 3; w++)
        {
            var (g, theta) = recorder.Windows[w];
            session.Flush();
            var snapshot = session.History[w];
            var expected = new Dictionary<Geometry, Dictionary<string, double>>
            {
                [Geometry.Euclidean] = ReferenceIndicators.FirstOrder(g, options.RegretQuantile, scale: 8),
                [Geometry.Fisher] = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, fisher.NextWindow(g)), options.RegretQuantile, scale: 8),
                [Geometry.Adaptive] = ReferenceIndicators.FirstOrder(
                    ReferenceIndicators.Whiten(g, ReferenceIndicators.AdaptiveWhitening(theta, 0)), options.RegretQuantile, scale: 8),
            };
            foreach (var (geometry, values) in expected)
            {
                // Differences of similar terms (regret, noise, the tests) are compared on the scale of their terms.
                double scale = values[Indicators.GradientNorm];
                foreach (var (name, value) in values)
                    Close.Assert(value, snapshot.Get(name, geometry), 2e-4, $"window {w}: {name} [{geometry}]",
                        name is Indicators.GradientNoise ? scale * scale : name.StartsWith("test.") || name == Indicators.Cosine ? 1 : scale);
            }

            double gsnr = 8 * ReferenceIndicators.Gsnr(g, 0);
            Close.Assert(gsnr, snapshot.Get(Indicators.Gsnr), 2e-4, $"window {w}: gsnr");
        }
    }
}

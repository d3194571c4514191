using TorchSharp;
using TrainingProbes.Examples;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The per-example indicators (<c>gradient.noise_scale</c>, <c>gradient.noise_per_example</c>) on a real model at one
/// theta: an MLP partly trained on 2,048 MNIST digits, probed at batch sizes 32 to 256 with the default window (K = 8
/// micro-batches of the step's batch), 32 windows each, batches drawn with replacement from the 2,048 digits. The truth
/// is computed independently, in double precision, from the closed-form per-example gradients of the two-layer network
/// over all 2,048 digits. The pooled values (<c>.smoothed</c>) must agree with it and with each other within their
/// published standard errors, while the batch-bound cosine must not agree across batch sizes and must match
/// b / (b + B_noise).
/// </summary>
public sealed class PortableIndicatorTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const int Population = 2048, Windows = 32;

    private static Tensor CrossEntropy(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

    [Theory]
    [InlineData(64, false)]    // 784-64-10 trained with SGD
    [InlineData(128, true)]    // 784-128-10 trained with Adam
    public void Noise_scale_and_per_example_noise_agree_across_batch_sizes_32_to_256_with_the_exact_values(int hidden, bool adam)
    {
        var (images, labels) = Mnist.Load(Mnist.DefaultDirectory, count: Population);
        using var x = images.reshape(Population, 784);
        torch.manual_seed(0);
        var model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10));
        torch.optim.Optimizer optimizer = adam ? new GcSafeAdam(model.parameters(), 1e-3) : new GcSafeSgd(model.parameters(), 0.1);
        Trainer.Train(model, optimizer, 0, 150, _ =>
        {
            var batch = torch.randint(0, Population, [64]);   // from the global generator, seeded above
            return (x[batch], labels[batch]);
        });

        var (trueNoise, trueSignal) = ExactMoments(model, x, labels);
        double trueScale = trueNoise / trueSignal;
        optimizer.zero_grad();
        CrossEntropy(model.call(x), labels).backward();   // the full-population gradient is m itself
        double autogradSignal = model.parameters().Sum(q => q.grad!.to(ScalarType.Float64).pow(2).sum().item<double>());
        Assert.Equal(trueSignal, autogradSignal, trueSignal * 1e-4);
        output.WriteLine($"exact: tr(Sigma) {trueNoise:G6}, |m|^2 {trueSignal:G6}, B_noise {trueScale:G6}");

        var measured = new Dictionary<int, Dictionary<string, (double Value, double Error)>>();
        var generator = new torch.Generator(7);
        foreach (int b in new[] { 32, 64, 128, 256 })
        {
            using var session = ProbeSession.Attach(model, new ProbeOptions
            {
                Interval = 1, OverheadBudget = null, Output = null, Geometries = Geometry.Euclidean, Loss = CrossEntropy,
            }, optimizer);
            for (int window = 0; window < Windows; window++)
            {
                using var scope = torch.NewDisposeScope();
                var batch = torch.randint(0, Population, [b], generator: generator);
                var (input, target) = (x[batch], labels[batch]);
                optimizer.zero_grad();
                var loss = CrossEntropy(model.call(input), target);
                loss.backward();
                session.Step(loss, input, target);   // no optimizer step: every window sees the same theta
            }

            session.Flush();
            Assert.Equal(Windows, session.History.Count);
            Assert.Equal(0, session.FailureCount);
            var last = session.History[^1];
            measured[b] = new[] { Indicators.ExampleSnr, Indicators.ExampleNoise, Indicators.NoiseScale, Indicators.Cosine }.ToDictionary(
                name => name,
                name => (last.Get(name + Indicators.SmoothedSuffix, Geometry.Euclidean),
                    last.Get(name + Indicators.SmoothedSuffix + Indicators.StandardErrorSuffix, Geometry.Euclidean)));
            output.WriteLine($"b = {b,3}: " + string.Join(", ", measured[b].Select(p => $"{p.Key} {p.Value.Value:G4} +- {p.Value.Error:G3}")) +
                $" (b / (b + B) = {b / (b + trueScale):F4})");
        }

        var truth = new Dictionary<string, Func<int, double>>
        {
            [Indicators.ExampleSnr] = _ => 1 / trueScale,
            [Indicators.ExampleNoise] = _ => trueNoise,
            [Indicators.Cosine] = b => b / (b + trueScale),   // the batch-bound value the portable ones predict
        };
        foreach (var (b, values) in measured)
            foreach (var (name, exact) in truth)
            {
                var (value, error) = values[name];
                Assert.True(error > 0 && error < Math.Abs(exact(b)), $"{name} at b = {b}: standard error {error:G3} for a value near {exact(b):G3}");
                Assert.True(Math.Abs(value - exact(b)) <= 3 * error, $"{name} at b = {b}: {value:G4} +- {error:G3}, exact {exact(b):G4}");
            }

        // Portable: the smallest and the largest batch agree within their combined error. Batch-bound: the cosine does not.
        double Gap(string name) => Math.Abs(measured[32][name].Value - measured[256][name].Value) /
            Math.Sqrt(Math.Pow(measured[32][name].Error, 2) + Math.Pow(measured[256][name].Error, 2));
        Assert.InRange(Gap(Indicators.ExampleSnr), 0, 3);
        Assert.InRange(Gap(Indicators.ExampleNoise), 0, 3);
        Assert.True(Gap(Indicators.Cosine) > 3, $"the cosine should differ between b = 32 and b = 256 (it describes the trainer's batch); gap {Gap(Indicators.Cosine):F2} errors");
    }

    /// <summary>
    /// tr(Sigma) and |m|^2 of the per-example gradients over the whole population, in double precision, from the closed
    /// form of a Linear-ReLU-Linear network with cross-entropy: delta2 = softmax(z2) - onehot(y), delta1 = W2^T delta2
    /// where z1 &gt; 0; the weight gradients are outer products, so their squared norms are products of squared norms.
    /// </summary>
    private static (double Noise, double Signal) ExactMoments(nn.Module model, Tensor images, Tensor labels)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var p = model.parameters().Select(t => t.detach().to(ScalarType.Float64)).ToArray();   // W1, b1, W2, b2
        var xs = images.to(ScalarType.Float64);
        var z1 = xs.mm(p[0].t()) + p[1];
        var h = z1.relu();
        var z2 = h.mm(p[2].t()) + p[3];
        var delta2 = z2.softmax(1) - nn.functional.one_hot(labels, 10).to(ScalarType.Float64);
        var delta1 = delta2.mm(p[2]) * (z1 > 0).to(ScalarType.Float64);

        double n = images.shape[0];
        Tensor SquaredNorms(Tensor delta, Tensor input) => delta.pow(2).sum(1) * input.pow(2).sum(1) + delta.pow(2).sum(1);
        double meanSquaredNorm = (SquaredNorms(delta1, xs) + SquaredNorms(delta2, h)).mean().item<double>();
        var meanW1 = delta1.t().mm(xs) / n;
        var meanW2 = delta2.t().mm(h) / n;
        double signal = (meanW1.pow(2).sum() + delta1.mean([0L]).pow(2).sum() + meanW2.pow(2).sum() + delta2.mean([0L]).pow(2).sum()).item<double>();
        return (meanSquaredNorm - signal, signal);
    }
}

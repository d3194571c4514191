using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Examples;
using Xunit.Abstractions;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// A trained ReLU MLP on real MNIST digits (784-32-32-10, float64), its measurements by
/// <see cref="FixedPointProbe.Measure"/> (K = 4 minibatches of 32 at one theta), and those of rescaled copies, shared
/// by the tests of <see cref="ReluRescalingTests"/>: training and each measurement run once.
/// </summary>
public sealed class TrainedReluNetwork : IDisposable
{
    public const int Minibatches = 5, MinibatchSize = 32, TrainDigits = 1500;

    private readonly Dictionary<(double A, double Eta, double GsnrEpsilon), ProbeSnapshot> _snapshots = [];
    private readonly Dictionary<double, Sequential> _rescaled = [];

    public TrainedReluNetwork()
    {
        (Images, Labels) = Mnist.Load(Mnist.DefaultDirectory, count: 2000, dtype: ScalarType.Float64);
        torch.manual_seed(31);
        Model = Mlp();
        using (var optimizer = new GcSafeSgd(Model.parameters(), lr: 0.05, momentum: 0.9))
        using (var draws = new Generator(5, device: CPU))
        {
            Trainer.Train(Model, optimizer, 0, 300, _ =>
            {
                var batch = torch.randint(0, TrainDigits, [MinibatchSize], generator: draws);
                return (Images[batch], Labels[batch]);
            });
        }

        using (torch.no_grad())
            TrainingLoss = nn.functional.cross_entropy(Model.call(Images.narrow(0, 0, TrainDigits)), Labels.narrow(0, 0, TrainDigits)).item<double>();
        Batches = Enumerable.Range(0, Minibatches)
            .Select(k => (Images.narrow(0, k * MinibatchSize, MinibatchSize), Labels.narrow(0, k * MinibatchSize, MinibatchSize)))
            .ToList();
    }

    public Tensor Images { get; }

    public Tensor Labels { get; }

    public Sequential Model { get; }

    public double TrainingLoss { get; }

    public List<(Tensor Input, Tensor Target)> Batches { get; }

    public static Sequential Mlp() => nn.Sequential(
        ("fc1", nn.Linear(784, 32)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(32, 32)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(32, 10))).to(ScalarType.Float64);

    /// <summary>The trained network with fc1's weights and bias times a and fc2's weights divided by a (a = 1: the network itself).</summary>
    public Sequential Rescaled(double a)
    {
        if (a == 1) return Model;
        if (_rescaled.TryGetValue(a, out var cached)) return cached;
        var copy = Mlp();
        var source = Model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        using (torch.no_grad())
        {
            foreach (var (name, parameter) in copy.named_parameters())
            {
                parameter.copy_(source[name]);
                if (name is "fc1.weight" or "fc1.bias") parameter.mul_(a);
                else if (name == "fc2.weight") parameter.div_(a);
            }
        }

        return _rescaled[a] = copy;
    }

    /// <summary>
    /// One fixed-point window on the network rescaled by <paramref name="a"/> (default options but at most 12 Hutchinson
    /// samples, to keep the class fast).
    /// </summary>
    public ProbeSnapshot Measure(double a, double eta = 0, double gsnrEpsilon = 0)
    {
        if (_snapshots.TryGetValue((a, eta, gsnrEpsilon), out var snapshot)) return snapshot;
        var options = new FixedPointOptions
        {
            Loss = (output, target) => nn.functional.cross_entropy(output, target),
            Batches = Batches,
            WindowSize = Minibatches,
            TraceSamples = 12,
        };
        var settings = new ProbeOptions { FisherDecay = 0, AdaptiveEta = eta, GsnrEpsilon = gsnrEpsilon };
        return _snapshots[(a, eta, gsnrEpsilon)] = FixedPointProbe.Measure(Rescaled(a), options, settings);
    }

    public void Dispose()
    {
        foreach (var copy in _rescaled.Values) copy.Dispose();
        Model.Dispose();
        Images.Dispose();
        Labels.Dispose();
    }
}

/// <summary>
/// INDICATORS.md, "How to prove it": a ReLU network rescaled layer by layer (fc1 times a, fc2 divided by a) computes
/// the same function; every Fisher and adaptive value and the GSNR must not move, the Euclidean flatness must.
/// </summary>
public sealed class ReluRescalingTests(TrainedReluNetwork network, ITestOutputHelper output) : IClassFixture<TrainedReluNetwork>
{
    private const double InvarianceTolerance = 1e-3;
    private const double MovedAtLeast = 1e-2;

    /// <summary>Values the session reports about itself (timing, schedule), not about the model.</summary>
    private static bool IsBookkeeping(IndicatorValue value) => value.Name.StartsWith("probe.", StringComparison.Ordinal);

    private static bool IsClaimedInvariant(IndicatorValue value) =>
        !IsBookkeeping(value) && value.Geometry is Geometry.Fisher or Geometry.Adaptive or Geometry.None;

    private static double RelativeChange(double before, double after) => Math.Abs(after - before) / Math.Abs(before);

    /// <summary>Relative change of every value of <paramref name="before"/> that <paramref name="select"/> keeps, largest first.</summary>
    private static List<(IndicatorValue Value, double After, double Change)> Changes(ProbeSnapshot before, ProbeSnapshot after, Func<IndicatorValue, bool> select) =>
        before.Values.Where(select)
            .Select(v => (Value: v, After: after.Get(v.Name, v.Geometry, v.Layer)))
            .Select(x => (x.Value, x.After, Change: RelativeChange(x.Value.Value, x.After)))
            .OrderByDescending(x => double.IsNaN(x.Change) ? double.PositiveInfinity : x.Change)
            .ToList();

    private static string Describe((IndicatorValue Value, double After, double Change) x) =>
        $"{x.Value.Name} [{x.Value.Geometry}] {x.Value.Value:G8} -> {x.After:G8} (relative change {x.Change:0.0e+00})";

    [Fact]
    public void The_network_is_trained_and_not_at_initialization()
    {
        output.WriteLine($"training loss {network.TrainingLoss:F4} (ln 10 = {Math.Log(10):F4} at initialization)");
        Assert.InRange(network.TrainingLoss, 0, 0.6);
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(10)]
    public void The_rescaled_network_computes_the_same_outputs_with_other_parameters(double a)
    {
        var rescaled = network.Rescaled(a);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var y = network.Model.call(network.Images);
        var z = rescaled.call(network.Images);
        double difference = ((z - y).abs().max() / y.abs().max()).item<double>();
        output.WriteLine($"a = {a}: max |difference| / max |output| over {network.Images.shape[0]} digits = {difference:0.0e+00}");
        Assert.True(difference < 1e-12, $"outputs moved by {difference:0.0e+00} relative");

        var original = network.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, parameter) in rescaled.named_parameters())
        {
            double ratio = (parameter.norm() / original[name].norm()).item<double>();
            double expected = name is "fc1.weight" or "fc1.bias" ? a : name == "fc2.weight" ? 1 / a : 1;
            Assert.True(Math.Abs(ratio - expected) < 1e-12 * expected, $"{name}: norm ratio {ratio}, expected {expected}");
        }
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(10)]
    public void Every_fisher_adaptive_and_gsnr_value_is_invariant(double a)
    {
        var before = network.Measure(1);
        var after = network.Measure(a);

        // The snapshot holds what INDICATORS.md asks for, in both invariant geometries: the first-order family, the
        // finite-radius values and the top eigenvalue of D H D; and the geometry-free GSNR and EB criterion.
        foreach (var geometry in new[] { Geometry.Fisher, Geometry.Adaptive })
        {
            foreach (var name in new[]
            {
                Indicators.GradientNorm, Indicators.MeanGradientNorm, Indicators.Cosine, Indicators.Regret, Indicators.RegretUpper,
                Indicators.RelativeRegret, Indicators.JensenRatio, Indicators.ContrastiveFlatness, Indicators.GradientNoise,
                Indicators.Coherence, Indicators.Disparity, Indicators.NormTest, Indicators.InnerProductTest, Indicators.OrthogonalityTest,
                Indicators.FiniteRegret, Indicators.Sharpness, Indicators.FiniteContrastiveFlatness, Indicators.Radius,
            })
            {
                Assert.True(before.TryGetValue(FixedPointProbe.Prefix + name, geometry, out _), $"no {FixedPointProbe.Prefix + name} [{geometry}]");
            }

            Assert.True(before.TryGetValue(Indicators.CurvatureLambdaMax, geometry, out _), $"no {Indicators.CurvatureLambdaMax} [{geometry}]");
        }

        Assert.True(before.TryGetValue(FixedPointProbe.Prefix + Indicators.Gsnr, Geometry.None, out _));
        Assert.True(before.TryGetValue(FixedPointProbe.Prefix + Indicators.EbCriterion, Geometry.None, out _));

        var changes = Changes(before, after, IsClaimedInvariant);
        // Per invariant geometry 19 values and the standard errors of the 14 first-order ones; GSNR, EB and their errors
        // (a GSNR standard error needs K >= 5).
        // The invariant curvature also publishes its power iteration's iterations, convergence and residual.
        Assert.Equal(2 * (19 + 14 + 3) + 4, changes.Count);
        output.WriteLine($"a = {a}: {changes.Count} invariant values; the worst: {Describe(changes[0])}");
        foreach (var x in changes.Take(5)) output.WriteLine("  " + Describe(x));

        var notFinite = changes.Where(x => !double.IsFinite(x.Value.Value) || !double.IsFinite(x.After)).ToList();
        Assert.True(notFinite.Count == 0, "not finite: " + string.Join("; ", notFinite.Select(Describe)));
        var moved = changes.Where(x => !(x.Change < InvarianceTolerance)).ToList();
        Assert.True(moved.Count == 0, $"moved by {InvarianceTolerance:0e+00} relative or more under a = {a}: " + string.Join("; ", moved.Select(Describe)));
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(10)]
    public void Euclidean_sharpness_curvature_and_gradient_norm_move(double a)
    {
        var before = network.Measure(1);
        var after = network.Measure(a);
        var watched = new HashSet<string>
        {
            FixedPointProbe.Prefix + Indicators.Sharpness, Indicators.CurvatureLambdaMax, Indicators.CurvatureTrace,
            FixedPointProbe.Prefix + Indicators.GradientNorm,
        };

        var changes = Changes(before, after, v => v.Geometry == Geometry.Euclidean && watched.Contains(v.Name));
        Assert.Equal(watched.Count, changes.Count);
        foreach (var x in changes) output.WriteLine(Describe(x));
        var steady = changes.Where(x => !(x.Change > MovedAtLeast)).ToList();
        Assert.True(steady.Count == 0, $"expected to move by more than {MovedAtLeast:0e+00} relative under a = {a}: " + string.Join("; ", steady.Select(Describe)));
    }

    /// <summary>
    /// Negative control: with eta &gt; 0 the adaptive whitening D = |theta| + eta is no longer rescaled with the
    /// parameters, and the same comparison must see the adaptive values move (so it would see a broken invariance).
    /// </summary>
    [Fact]
    public void Adaptive_values_move_when_eta_is_not_zero()
    {
        var before = network.Measure(1, eta: 0.1);
        var after = network.Measure(10, eta: 0.1);
        var adaptive = Changes(before, after, v => v.Geometry == Geometry.Adaptive);
        foreach (var x in adaptive.Take(5)) output.WriteLine(Describe(x));
        output.WriteLine($"... the least moved: {Describe(adaptive[^1])}");

        foreach (var name in new[]
        {
            FixedPointProbe.Prefix + Indicators.GradientNorm, FixedPointProbe.Prefix + Indicators.Cosine,
            FixedPointProbe.Prefix + Indicators.RelativeRegret, FixedPointProbe.Prefix + Indicators.Sharpness, Indicators.CurvatureLambdaMax,
        })
        {
            var x = adaptive.Single(c => c.Value.Name == name);
            Assert.True(x.Change > MovedAtLeast, $"expected to move with eta = 0.1: {Describe(x)}");
        }

        // eta touches the adaptive geometry only: the Fisher values still hold.
        var fisher = Changes(before, after, v => v.Geometry == Geometry.Fisher);
        Assert.True(fisher[0].Change < InvarianceTolerance, Describe(fisher[0]));
    }

    /// <summary>Negative control: a variance floor in the GSNR (GsnrEpsilon &gt; 0) is not rescaled with the gradients.</summary>
    [Fact]
    public void Gsnr_moves_when_its_epsilon_is_not_zero()
    {
        var before = network.Measure(1, gsnrEpsilon: 1e-8);
        var after = network.Measure(10, gsnrEpsilon: 1e-8);
        var gsnr = Changes(before, after, v => v.Name == FixedPointProbe.Prefix + Indicators.Gsnr).Single();
        output.WriteLine(Describe(gsnr));
        Assert.True(gsnr.Change > MovedAtLeast, Describe(gsnr));
    }

    /// <summary>
    /// The top eigenvalue of D H D is one and the same matrix before and after the rescaling, so its estimate must be
    /// the same up to rounding, whatever the euclidean estimates did before it. Their draw counts are data dependent:
    /// the Hutchinson trace draws as many probes as its stopping rule needs (with a tolerance of 0.12 that number
    /// differs between these networks). When all estimates shared one random stream, the invariant power iterations
    /// then started from other vectors and moved by 5e-6 to 2e-4 here (by 2e-3 to 3e-3 on the 784-128-128-10 network
    /// of examples/InvarianceReport with tolerances 0.1 or 0.15); with a stream per estimate they move by rounding only.
    /// </summary>
    [Fact]
    public void Invariant_curvature_does_not_depend_on_how_many_samples_the_euclidean_trace_drew()
    {
        ProbeSnapshot Measure(double a) => FixedPointProbe.Measure(network.Rescaled(a), new FixedPointOptions
        {
            Loss = (output, target) => nn.functional.cross_entropy(output, target),
            Batches = network.Batches,
            WindowSize = TrainedReluNetwork.Minibatches,
            FiniteRadius = false,
            TraceSamples = 30,
            TraceTolerance = 0.12,
        }, new ProbeOptions { FisherDecay = 0 });

        var before = Measure(1);
        foreach (double a in new[] { 0.1, 10 })
        {
            var changes = Changes(before, Measure(a), v => v.Name == Indicators.CurvatureLambdaMax && v.Geometry != Geometry.Euclidean);
            foreach (var x in changes) output.WriteLine(Describe(x));
            Assert.True(changes[0].Change < 1e-8, Describe(changes[0]));   // the same matrix, the same start: rounding only
        }
    }
}

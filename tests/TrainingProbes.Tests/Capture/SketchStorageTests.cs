using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Examples;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Capture;

/// <summary>
/// <see cref="WindowStorage.Sketch"/> keeps the K x P buffers as CountSketches (here the step family's ring): the
/// indicators estimated from them agree with the exact ones on real MNIST gradients at the default d, the default family
/// (made from one pass, with no K x P buffer) is not touched, and the sketch's error on adversarially structured vectors
/// stays at the size its variance formula gives (the chunked hash does not let a layer's periodic structure add up).
/// </summary>
public sealed class SketchStorageTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const int K = 16, Batch = 64;

    private static Tensor CrossEntropy(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

    private static (List<ProbeSnapshot> Snapshots, List<double> Losses) TrainOnMnist(WindowStorage storage, int steps)
    {
        var (images, labels) = Mnist.Load(Mnist.DefaultDirectory, count: 4096);
        using var x = images.reshape(-1, 784);
        torch.manual_seed(3);
        var model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10));
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        var snapshots = new List<ProbeSnapshot>();
        var losses = new List<double>();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = K, Interval = 40, OverheadBudget = null, Output = null, Storage = storage,
            Geometries = Geometry.Euclidean | Geometry.Adaptive, AdaptiveEta = 1e-3, Loss = CrossEntropy, StepStatistics = true,
        }, optimizer);
        session.WindowClosed += (_, snapshot) => snapshots.Add(snapshot);
        Trainer.Train(model, optimizer, 0, steps, step =>
        {
            long start = step * Batch % (4096 - Batch);
            return (x.narrow(0, start, Batch), labels.narrow(0, start, Batch));
        }, (value, input, target) =>
        {
            losses.Add(value.item<float>());
            session.Step(value, input, target);
        });

        return (snapshots, losses);
    }

    [Fact]
    public void Sketched_cosine_regret_and_coherence_over_K_are_within_0_02_of_the_exact_ones_on_MNIST_gradients()
    {
        var (exact, exactLosses) = TrainOnMnist(WindowStorage.Full, 200);
        var (sketched, sketchedLosses) = TrainOnMnist(WindowStorage.Sketch, 200);
        Assert.Equal(exactLosses, sketchedLosses);   // the sketches do not touch training: the same trajectory
        Assert.Equal(5, exact.Count);
        Assert.Equal(exact.Count, sketched.Count);

        double largest = 0;
        int compared = 0;
        foreach (var (full, sketch) in exact.Zip(sketched))
        {
            foreach (var name in new[] { Indicators.Cosine, Indicators.RelativeRegret, Indicators.Coherence })
                foreach (var geometry in new[] { Geometry.Euclidean, Geometry.Adaptive })
                {
                    // m-coherence lies in [0, K]: compared as coherence / K, the mean cosine-like fraction in [0, 1].
                    double scale = name == Indicators.Coherence ? K : 1;
                    double want = full.Get("step." + name, geometry) / scale, got = sketch.Get("step." + name, geometry) / scale;
                    Assert.True(double.IsFinite(want) && double.IsFinite(got), $"step.{name} {geometry}: {want} vs {got}");
                    Assert.True(Math.Abs(got - want) <= 0.02, $"window {full.Window} step.{name} {geometry}: sketch {got}, exact {want}");
                    largest = Math.Max(largest, Math.Abs(got - want));
                    output.WriteLine($"window {full.Window} step.{name} [{geometry.ToName()}]: exact {want:G4}, sketch {got:G4}");
                    compared++;
                    // The default family needs no K x P buffer: the same exact values with either storage.
                    Assert.Equal(full.Get(name, geometry), sketch.Get(name, geometry));
                }

            Assert.Equal(full.TryGetValue(Indicators.ParameterDrift, Geometry.None, out double drift), sketch.TryGetValue(Indicators.ParameterDrift, Geometry.None, out double sketchDrift));
            Assert.Equal(drift, sketchDrift);
            // Per-coordinate values of the sketched ring need the gradients themselves: not published rather than wrong.
            Assert.False(sketch.TryGetValue("step." + Indicators.Gsnr, Geometry.None, out _));
            Assert.True(full.TryGetValue("step." + Indicators.Gsnr, Geometry.None, out _));
            Assert.Equal(full.Get(Indicators.Gsnr), sketch.Get(Indicators.Gsnr));
        }

        Assert.Equal(5 * 3 * 2, compared);
        output.WriteLine($"largest |sketch - exact| over {compared} values: {largest:G3}");
        Assert.True(largest > 0, "the sketched values are exactly the full ones: the sketch path did not run");
    }

    [Fact]
    public void BFloat16_storage_gives_the_full_values_within_its_rounding_GSNR_included()
    {
        var (exact, _) = TrainOnMnist(WindowStorage.Full, 120);
        var (rounded, _) = TrainOnMnist(WindowStorage.BFloat16, 120);
        Assert.Equal(3, rounded.Count);
        double largest = 0, largestGsnr = 0;
        foreach (var (full, half) in exact.Zip(rounded))
        {
            foreach (var name in new[] { "step." + Indicators.Cosine, "step." + Indicators.RelativeRegret })
                foreach (var geometry in new[] { Geometry.Euclidean, Geometry.Adaptive })
                {
                    double want = full.Get(name, geometry), got = half.Get(name, geometry);
                    // Each coordinate rounded to 8 significant bits (relative error <= 2^-9): Gram entries move by far less.
                    Assert.True(Math.Abs(got - want) <= 1e-3, $"window {full.Window} {name} {geometry}: bfloat16 {got}, full {want}");
                    largest = Math.Max(largest, Math.Abs(got - want));
                }

            double gsnr = full.Get("step." + Indicators.Gsnr), halfGsnr = half.Get("step." + Indicators.Gsnr);
            Assert.InRange(halfGsnr / gsnr, 0.99, 1.01);
            largestGsnr = Math.Max(largestGsnr, Math.Abs(halfGsnr / gsnr - 1));
        }

        output.WriteLine($"largest |bfloat16 - full|: {largest:G3}; largest relative GSNR difference {largestGsnr:G3}");
    }

    [Fact]
    public void The_sketch_error_on_periodic_nonnegative_vectors_is_within_five_standard_deviations_of_its_formula()
    {
        // Vectors with a positive mean and period 1024 (which divides the chunk length): with a hash that repeats per
        // chunk, the same offsets of every chunk would collide with the same sign and the error would be of the order of
        // |a| |b| itself instead of |a| |b| / sqrt(d).
        long n = 4L * GradientSketch.TableLength + 777;
        int d = 4096;
        var i = torch.arange(n, dtype: ScalarType.Float64);
        torch.manual_seed(11);
        var a = (1 + torch.sin(i * (2 * Math.PI / 1024)) + 0.1 * torch.randn(n, dtype: ScalarType.Float64));
        var b = (1 + torch.cos(i * (2 * Math.PI / 1024)) + 0.1 * torch.randn(n, dtype: ScalarType.Float64));
        var model = nn.Linear(n, 1, hasBias: false);
        using var window = new GradientWindow(new ParameterLayout(model, null), k: 2, WindowStorage.Sketch, d, Geometry.Euclidean);
        using (torch.no_grad())
        {
            window.Store(0, [a.to(ScalarType.Float32).reshape(1, n)]);
            window.Store(1, [b.to(ScalarType.Float32).reshape(1, n)]);
        }

        var s = window.Sketch!.Windows[0][0].to(ScalarType.Float64);
        double sab = s[0].dot(s[1]).item<double>(), saa = s[0].dot(s[0]).item<double>();
        double ab = a.dot(b).item<double>(), aa = a.dot(a).item<double>(), bb = b.dot(b).item<double>();
        double sd = Math.Sqrt((aa * bb + ab * ab) / d);
        Assert.True(Math.Abs(sab - ab) < 5 * sd, $"<Sa, Sb> = {sab}, <a, b> = {ab}, sd {sd}");
        Assert.True(Math.Abs(saa - aa) < 5 * Math.Sqrt(2.0 / d) * aa, $"|Sa|^2 = {saa}, |a|^2 = {aa}");
        Assert.True(Math.Abs(sab - ab) > 0, "the sketch reproduced the inner product exactly: it is not a sketch");
    }

    [Fact]
    public void Over_many_random_pairs_the_sketched_inner_product_is_unbiased_with_the_CountSketch_variance()
    {
        const int pairs = 400, d = 1024;
        long n = 3000;
        var model = nn.Linear(n, 1, hasBias: false);
        using var window = new GradientWindow(new ParameterLayout(model, null), k: 2, WindowStorage.Sketch, d, Geometry.Euclidean);
        torch.manual_seed(5);
        var standardized = new double[pairs];
        for (int p = 0; p < pairs; p++)
        {
            using var scope = torch.NewDisposeScope();
            var a = torch.randn(n, dtype: ScalarType.Float64);
            var b = 0.6 * a + 0.8 * torch.randn(n, dtype: ScalarType.Float64);
            using (torch.no_grad())
            {
                window.Store(0, [a.to(ScalarType.Float32).reshape(1, n)]);
                window.Store(1, [b.to(ScalarType.Float32).reshape(1, n)]);
            }

            var s = window.Sketch!.Windows[0][0].to(ScalarType.Float64);
            double sab = s[0].dot(s[1]).item<double>(), ab = a.dot(b).item<double>();
            double aa = a.dot(a).item<double>(), bb = b.dot(b).item<double>();
            double a4b4 = (a.square() * b.square()).sum().item<double>();
            standardized[p] = (sab - ab) / Math.Sqrt((aa * bb + ab * ab - 2 * a4b4) / d);
        }

        double mean = standardized.Average();
        double variance = standardized.Sum(z => (z - mean) * (z - mean)) / (pairs - 1);
        Assert.InRange(mean, -4 / Math.Sqrt(pairs), 4 / Math.Sqrt(pairs));   // unbiased
        Assert.InRange(variance, 0.7, 1.3);                                   // the formula's variance (400 draws: +-0.07 sd)
    }

    [Fact]
    public void Sketch_storage_refuses_what_it_cannot_compute_with_a_message_that_says_how_to_fix_it()
    {
        var model = nn.Linear(4, 2);
        var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        var fisher = Assert.Throws<ArgumentException>(() => ProbeSession.Attach(model,
            new ProbeOptions { Storage = WindowStorage.Sketch, Geometries = Geometry.All, Output = null }, optimizer));
        Assert.Contains("fisher", fisher.Message);
        Assert.Contains("Storage = Full", fisher.Message);
        var layers = Assert.Throws<ArgumentException>(() => ProbeSession.Attach(model,
            new ProbeOptions { Storage = WindowStorage.Sketch, LayerMetrics = 2, Output = null }, optimizer));
        Assert.Contains("LayerMetrics = 0", layers.Message);
        var rule = Assert.Throws<ArgumentException>(() => ProbeSession.Attach(model,
            new ProbeOptions { Storage = WindowStorage.Sketch, Output = null, Stopping = [TrainingProbes.Stopping.StoppingRule.Parse("gradient.gsnr < 0.01 for 3")] }, optimizer));
        Assert.Contains("gradient.gsnr", rule.Message);
        Assert.Contains("never fire", rule.Message);
        Assert.Equal(Geometry.Euclidean | Geometry.Adaptive, new ProbeOptions { Storage = WindowStorage.Sketch }.Geometries);
        Assert.Equal(Geometry.All, new ProbeOptions().Geometries);
        Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { SketchDimension = 100 });
    }
}

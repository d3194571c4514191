// The evidence matrix (issue "Indicators that transfer"): every run trains one configuration at the library's defaults,
// with no stopping, and records the default indicators at each window and the validation and test values every
// EvaluateEvery steps. Rules are replayed on those records afterwards (MatrixReport), so one set of runs serves every
// candidate rule.
//
// Configurations: 2 data sets (the repository's digits; a teacher network's labels on Gaussian images) x 2 architectures
// (MLP, CNN) x 3 optimizers (SGD, SGD with momentum, Adam) x 3 batch sizes (32, 96, 256) x 3 label-noise levels
// (0%, 30%, 100% uniformly random; validation labels carry the same noise, test labels none) x 2 seeds = 216 runs.
// A part is one (data set, architecture) pair: 54 runs.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Examples;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

internal sealed record MatrixConfig(string Data, string Architecture, string Optimizer, int Batch, double Noise, int Seed)
{
    public static readonly string[] DataSets = ["digits", "teacher"];
    public static readonly string[] Architectures = ["mlp", "cnn"];
    public static readonly string[] Optimizers = ["sgd", "momentum", "adam"];
    public static readonly int[] Batches = [32, 96, 256];
    public static readonly double[] NoiseLevels = [0.0, 0.3, 1.0];
    public static readonly int[] Seeds = [0, 1];

    /// <summary>
    /// The stated split: a checkerboard over (data set, architecture, optimizer, batch size), so each half holds both
    /// data sets, both architectures, every optimizer and every batch size, each cell with all noise levels and seeds.
    /// </summary>
    public bool Selection =>
        (Array.IndexOf(DataSets, Data) + Array.IndexOf(Architectures, Architecture) + Array.IndexOf(Optimizers, Optimizer) + Array.IndexOf(Batches, Batch)) % 2 == 0;

    public string Cell => $"{Data}/{Architecture}/{Optimizer}/b{Batch}";

    public string Id => $"{Cell}/noise{Noise.ToString("0.0", CultureInfo.InvariantCulture)}/seed{Seed}";

    public static IEnumerable<MatrixConfig> Part(string data, string architecture) =>
        from optimizer in Optimizers
        from batch in Batches
        from noise in NoiseLevels
        from seed in Seeds
        select new MatrixConfig(data, architecture, optimizer, batch, noise, seed);
}

internal static class MatrixRuns
{
    public const int EvaluateEvery = 50;

    // The series each window records (monitor name, geometry, CSV column).
    public static readonly (string Monitor, Geometry Geometry, string Column)[] Series =
    [
        (Indicators.Loss, Geometry.None, "training_loss"),
        (Indicators.Gsnr, Geometry.None, "gsnr"),
        (Indicators.Gsnr + Indicators.SmoothedSuffix, Geometry.None, "gsnr_smoothed"),
        (Indicators.Cosine, Geometry.Euclidean, "cosine"),
        (Indicators.Cosine + Indicators.SmoothedSuffix, Geometry.Euclidean, "cosine_smoothed"),
        (Indicators.RelativeRegret + Indicators.SmoothedSuffix, Geometry.Fisher, "regret_fisher_smoothed"),
        (Indicators.ExampleNoise, Geometry.Euclidean, "noise_per_example"),
        (Indicators.ExampleNoise + Indicators.SmoothedSuffix, Geometry.Euclidean, "noise_per_example_smoothed"),
        (Indicators.ExampleSnr, Geometry.Euclidean, "snr_per_example"),
        (Indicators.ExampleSnr + Indicators.SmoothedSuffix, Geometry.Euclidean, "snr_per_example_smoothed"),
        (Indicators.ExampleSnr + Indicators.SpreadSuffix, Geometry.Euclidean, "snr_per_example_spread"),
    ];

    public static int Run(string part, string dataDirectory, string output, int steps)
    {
        var pieces = part.Split('-');
        if (pieces.Length != 2 || !MatrixConfig.DataSets.Contains(pieces[0]) || !MatrixConfig.Architectures.Contains(pieces[1]))
        {
            Console.Error.WriteLine($"Unknown part '{part}': one of {string.Join(", ", from d in MatrixConfig.DataSets from a in MatrixConfig.Architectures select $"{d}-{a}")}.");
            return 2;
        }

        torch.set_num_threads(1);
        var clock = Stopwatch.StartNew();
        var (x, y) = pieces[0] == "digits" ? LoadDigits(dataDirectory) : Teacher();
        using (x) using (y)
        {
            var windows = new StringBuilder("run,selection,data,architecture,optimizer,batch,noise,seed,step," + string.Join(',', Series.Select(s => s.Column)) + "\n");
            var evaluations = new StringBuilder("run,step,val_loss,val_accuracy,test_accuracy\n");
            foreach (var config in MatrixConfig.Part(pieces[0], pieces[1]))
            {
                var (w, e, summary) = Train(config, x, y, steps);
                windows.Append(w);
                evaluations.Append(e);
                Console.WriteLine($"{config.Id,-44} {summary} ({clock.Elapsed.TotalSeconds:F0} s)");
            }

            Directory.CreateDirectory(output);
            File.WriteAllText(Path.Combine(output, $"{part}.windows.csv"), windows.ToString());
            File.WriteAllText(Path.Combine(output, $"{part}.evaluations.csv"), evaluations.ToString());
            Console.WriteLine($"{part}: {clock.Elapsed.TotalMinutes:F1} min; records in {output}");
        }

        return 0;
    }

    private static (Tensor X, Tensor Y) LoadDigits(string directory)
    {
        var (images, labels) = Mnist.Load(directory);
        using (images)
            return (images.reshape(-1, 1, 28, 28), labels);
    }

    // 10,000 Gaussian "images" labelled by a fixed random teacher network (784-32-10, tanh): a task whose clean signal
    // is known to be learnable by both students. The teacher's seed is fixed; run seeds change the students only.
    private static (Tensor X, Tensor Y) Teacher()
    {
        using var scope = torch.NewDisposeScope();
        var generator = new Generator(20261207);
        var x = torch.randn([10000, 1, 28, 28], generator: generator);
        var w1 = torch.randn([784, 32], generator: generator) / Math.Sqrt(784) * 3;
        var w2 = torch.randn([32, 10], generator: generator);
        var y = torch.tanh(x.reshape(-1, 784).matmul(w1)).matmul(w2).argmax(1);
        return (x.MoveToOuterDisposeScope(), y.MoveToOuterDisposeScope());
    }

    private static nn.Module<Tensor, Tensor> Model(string architecture) => architecture == "mlp"
        ? nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        : nn.Sequential(nn.Conv2d(1, 8, 5, stride: 2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride: 2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10));

    private static torch.optim.Optimizer Optimizer(string name, nn.Module model) => name switch
    {
        "sgd" => new GcSafeSgd(model.parameters(), lr: 0.05),
        "momentum" => new GcSafeSgd(model.parameters(), lr: 0.01, momentum: 0.9),
        _ => new GcSafeAdam(model.parameters(), lr: 1e-3),
    };

    private static (string Windows, string Evaluations, string Summary) Train(MatrixConfig config, Tensor images, Tensor labels, int steps)
    {
        var inv = CultureInfo.InvariantCulture;
        torch.manual_seed(config.Seed);
        var generator = new Generator((ulong)(1000 + config.Seed));
        var train = images[..8000];
        var validation = images[8000..9000];
        var test = images[9000..];
        using var trainLabels = Noisy(labels[..8000], config.Noise, generator);
        using var validationLabels = Noisy(labels[8000..9000], config.Noise, generator);
        using var testLabels = labels[9000..].clone();

        var model = Model(config.Architecture);
        var optimizer = Optimizer(config.Optimizer, model);
        var lossFunction = nn.CrossEntropyLoss();
        var windows = new StringBuilder();
        var evaluations = new StringBuilder();
        string prefix = string.Join(',', config.Id, config.Selection ? 1 : 0, config.Data, config.Architecture, config.Optimizer,
            config.Batch.ToString(inv), config.Noise.ToString(inv), config.Seed.ToString(inv));
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            // The library's defaults but for these: no console, a history long enough for the run, the loss function.
            Output = null, RunId = config.Id, HistoryCapacity = 4096, Loss = lossFunction.call,
        }, optimizer);
        int windowCount = 0;
        session.WindowClosed += (_, snapshot) =>
        {
            windowCount++;
            windows.Append(prefix).Append(',').Append(snapshot.Step.ToString(inv));
            foreach (var (monitor, geometry, _) in Series)
                windows.Append(',').Append((snapshot.TryGetValue(monitor, geometry, out double v) ? v : double.NaN).ToString("R", inv));
            windows.Append('\n');
        };

        double lastTest = double.NaN, bestTest = 0;
        for (int step = 0; step < steps; step++)
        {
            using var scope = torch.NewDisposeScope();
            var index = torch.randint(0, 8000, [config.Batch], generator: generator);
            var (x, target) = (train[index], trainLabels[index]);
            optimizer.zero_grad();
            var loss = lossFunction.call(model.call(x), target);
            loss.backward();
            if (step % EvaluateEvery == 0 || step == steps - 1)
                using (torch.no_grad())
                {
                    // At the parameters the window of this step sees (before the optimizer step), keyed by steps seen.
                    var (valLoss, valAccuracy) = Evaluate(model, validation, validationLabels);
                    var (_, testAccuracy) = Evaluate(model, test, testLabels);
                    evaluations.Append(config.Id).Append(',').Append((step + 1).ToString(inv)).Append(',')
                        .Append(valLoss.ToString("R", inv)).Append(',').Append(valAccuracy.ToString("R", inv)).Append(',')
                        .Append(testAccuracy.ToString("R", inv)).Append('\n');
                    lastTest = testAccuracy;
                    bestTest = Math.Max(bestTest, testAccuracy);
                }

            session.Step(loss, x, target);
            optimizer.step();
        }

        session.Flush();
        return (windows.ToString(), evaluations.ToString(),
            $"{windowCount} windows, {session.FailureCount} failures, test accuracy best {bestTest:P1} last {lastTest:P1}");
    }

    private static Tensor Noisy(Tensor labels, double noise, Generator generator)
    {
        var y = labels.clone();
        if (noise <= 0) return y;
        using var flip = torch.rand([labels.shape[0]], generator: generator) < noise;
        using var random = torch.randint(0, 10, [labels.shape[0]], generator: generator);
        y.copy_(torch.where(flip, random, y));
        return y;
    }

    private static (double Loss, double Accuracy) Evaluate(nn.Module<Tensor, Tensor> model, Tensor x, Tensor y)
    {
        using var scope = torch.NewDisposeScope();
        var logits = model.call(x);
        double loss = nn.functional.cross_entropy(logits, y).item<float>();
        double accuracy = logits.argmax(1).eq(y).to(ScalarType.Float64).mean().item<double>();
        return (loss, accuracy);
    }
}

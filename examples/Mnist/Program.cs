// Mnist: a conventional TorchSharp trainer on MNIST digits with the probes attached by the one line
// `if (model.Probe(loss, optimizer, x, y, lossFunction.call).ShouldStop) break;`.
//
// It trains an MLP (784-128-128-10) or a small CNN (two 3x3 convolutions) with SGD on the repository's 10,000 digits
// (data/mnist-10k: the first 7,000 train, the next 1,000 validate, the last 2,000 are a held-out test split never
// trained on), or on a full MNIST download (--data <folder>: train-*-ubyte for training and validation, t10k-*-ubyte
// for testing when present). After every epoch it reports the validation loss to the probe session
// (session.Report("val.loss", ...)), where the library's default rule stops training when it has not improved for 5
// epochs, and prints one line with the test accuracy and the headline indicators of the latest window. --label-noise
// replaces that fraction of the training labels by other, random ones. At the end it writes <output>/summary.json,
// the trained weights as <output>/model.pt (a PyTorch state_dict) and the report.
//
//   dotnet run -c Release --project examples/Mnist -- [--model mlp|cnn] [--epochs N] [--steps N] [--label-noise 0.2]
//       [--data <folder>] [--prometheus [port]] [--seed S] [--output <folder>] [--help]
using System.Diagnostics;
using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Checkpoints;
using TrainingProbes.Examples;
using TrainingProbes.Prometheus;
using TrainingProbes.Reporting;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

const string Usage = """
    usage: Mnist [options]
      --model mlp|cnn       the model: a 784-128-128-10 MLP (default) or a small CNN
      --epochs N            passes over the training split (default 20)
      --steps N             a budget of optimizer steps; overrides --epochs
      --batch N             minibatch size (default 64)
      --lr X                SGD learning rate, momentum 0.9 (default 0.05)
      --label-noise P       replace the labels of this fraction of the training split by random other labels (default 0)
      --interval N|budget   a window every N steps, or "budget" (the default, the session's): its 5% overhead
                            budget sets the interval
      --stop RULE|none      the stopping rule (default: the library's, "early_stopping(monitor=val.loss, patience=5)")
      --data <folder>       a full MNIST download (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], and
                            t10k-*-ubyte[.gz] for the test split); default the repository's data/mnist-10k, whose last
                            2,000 digits are the test split
      --prometheus [port]   serve the indicators at http://127.0.0.1:<port>/metrics (default port 9464)
      --seed S              seeds initialization, shuffling and label noise (default 1)
      --output <folder>     where summary.json, model.pt, report.csv and report.png go (default ./mnist-results)
      --help                this text
    """;

const int RepositoryTestSize = 2000, ValidationSize = 1000, Classes = 10, Pixels = 28 * 28;

Settings settings;
try
{
    settings = Settings.Parse(args);
}
catch (UsageException e)
{
    Console.Error.WriteLine($"Mnist: {e.Message}");
    Console.Error.WriteLine(Usage);
    return 2;
}

if (settings.Help)
{
    Console.WriteLine(Usage);
    return 0;
}

// Data. A missing or damaged file ends the program with a message that names it and the format it should have.
Tensor trainX, trainY, validationX, validationY, testX, testY;
try
{
    if (Mnist.HasTestSet(settings.Data))
    {
        (trainX, trainY) = Mnist.Load(settings.Data);
        (testX, testY) = Mnist.LoadTest(settings.Data);
    }
    else
    {
        var (images, labels) = Mnist.Load(settings.Data);
        long n = images.shape[0];
        if (n <= RepositoryTestSize)
            throw new InvalidDataException($"{settings.Data} holds {n} digits: too few to hold out {RepositoryTestSize} for testing and train on the rest.");
        (trainX, trainY) = (images[..(int)(n - RepositoryTestSize)], labels[..(int)(n - RepositoryTestSize)]);
        (testX, testY) = (images[(int)(n - RepositoryTestSize)..], labels[(int)(n - RepositoryTestSize)..]);
    }

    // The validation split: the last 1,000 of the training digits (clean labels), for the stopping rule.
    int trainCount = (int)trainX.shape[0] - ValidationSize;
    if (trainCount <= 0) throw new InvalidDataException($"{settings.Data} holds too few training digits to hold out {ValidationSize} for validation.");
    (validationX, validationY) = (trainX[trainCount..], trainY[trainCount..]);
    (trainX, trainY) = (trainX[..trainCount], trainY[..trainCount]);
    if (trainX.shape[1] != Pixels || testX.shape[1] != Pixels)
        throw new InvalidDataException($"the images in {settings.Data} are not 28x28 (MNIST's size).");
}
catch (Exception e) when (e is FileNotFoundException or InvalidDataException or UnauthorizedAccessException or DirectoryNotFoundException)
{
    Console.Error.WriteLine($"Mnist: cannot read the MNIST data. {e.Message}");
    return 2;
}

torch.manual_seed(settings.Seed);
int trainSize = (int)trainX.shape[0], testSize = (int)testX.shape[0];
int noisy = settings.LabelNoise > 0 ? AddLabelNoise(ref trainY, settings.LabelNoise, settings.Seed) : 0;

var model = settings.Model == "cnn"
    ? nn.Sequential(
        nn.Unflatten(1, [1, 28, 28]),
        nn.Conv2d(1, 16, 3, padding: 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding: 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64), nn.ReLU(),
        nn.Linear(64, Classes))
    : nn.Sequential(
        nn.Linear(Pixels, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, Classes));
// torch.optim.SGD with a step whose scalars stay alive: the same steps, bit for bit, but immune to TorchSharp 0.107's
// freed-scalar fault when other threads collect garbage, as the /metrics endpoint's do (docs/KNOWN-ISSUES.md).
var optimizer = new GcSafeSgd(model.parameters(), lr: settings.LearningRate, momentum: 0.9);
var lossFunction = nn.CrossEntropyLoss();

// The /metrics endpoint, when asked for: it serves every session of the process until the program ends.
using var endpoint = settings.PrometheusPort is int port ? PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = port }) : null;

// The session, attached before the loop so that it carries the stopping rule; the one line in the loop then uses
// it. Its own per-window console lines are off: the per-epoch line below shows the headline values.
ProbeSession session;
try
{
    session = ProbeSession.Attach(model, new ProbeOptions
    {
        RunId = $"mnist-{settings.Model}-seed{settings.Seed}",
        Stopping = settings.StopRule is { } rule ? [rule] : [],
        Output = null,
        Interval = settings.Interval ?? new ProbeOptions().Interval,
        OverheadBudget = settings.Interval is null ? new ProbeOptions().OverheadBudget : null,
    }, optimizer);
}
catch (Exception e) when (e is InvalidOperationException or IOException)
{
    Console.Error.WriteLine($"Mnist: the probe session could not start: {e.Message}");
    return 2;
}

int windows = 0;
string? firedRule = null;
session.WindowClosed += (_, _) => windows++;
session.RuleFired += (_, e) =>
{
    if (e.Action == RuleAction.Stop) firedRule ??= e.Rule.ToString();
    Console.WriteLine($"rule fired ({e.Action}) at step {e.Step}: {e.Reason}" + (e.Probes.Length > 0 ? $" The probes (smoothed ± spread): {e.Probes}" : ""));
};

int stepsPerEpoch = (trainSize + settings.Batch - 1) / settings.Batch;
int budget = settings.Steps ?? settings.Epochs * stepsPerEpoch;
Console.WriteLine($"MNIST from {settings.Data}: {trainSize} training digits ({noisy} with noisy labels), {testSize} test digits; " +
                  $"{settings.Model}, batch {settings.Batch}, lr {settings.LearningRate}, {budget} steps ({stepsPerEpoch} per epoch); " +
                  $"stopping rule: {settings.StopRule?.ToString() ?? "none"}");
if (endpoint is not null) Console.WriteLine($"metrics at {endpoint.Address}");

var clock = Stopwatch.StartNew();
int step = 0, epoch = 0;
double testAccuracy = double.NaN, testLoss = double.NaN;
bool stopped = false;
while (step < budget && !stopped)
{
    epoch++;
    double lossSum = 0;
    int lossCount = 0;
    model.train();
    using (var order = torch.randperm(trainSize))
    {
        for (int start = 0; start < trainSize && step < budget; start += settings.Batch, step++)
        {
            using var scope = torch.NewDisposeScope();
            var batch = order[start..Math.Min(start + settings.Batch, trainSize)];
            var (x, y) = (trainX[batch], trainY[batch]);
            optimizer.zero_grad();
            var loss = lossFunction.call(model.call(x), y);
            loss.backward();
            if (model.Probe(loss, optimizer, x, y, lossFunction.call).ShouldStop) { stopped = true; break; }
            optimizer.step();
            lossSum += loss.item<float>();
            lossCount++;
        }
    }

    (testAccuracy, testLoss) = Evaluate(testX, testY);
    var (_, validationLoss) = Evaluate(validationX, validationY);
    session.Report("val.loss", validationLoss);   // the default rule's monitor
    session.Report("test.accuracy", testAccuracy);
    session.Report("test.loss", testLoss);
    if (session.ShouldStop) stopped = true;
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"epoch {epoch,3} step {step,6} | train loss {lossSum / Math.Max(lossCount, 1):F4} | test accuracy {testAccuracy:F4} loss {testLoss:F4} | {Headline(session.Latest)}"));
}

bool stoppedByRule = session.ShouldStop;   // before Flush: a rule that fires on the last window did not stop this loop
session.Flush();                           // the last window's statistics may still be running beside training
if (stoppedByRule) Console.WriteLine($"stopped at step {step} by the rule '{firedRule}'.");
Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
    $"done: {step} steps in {clock.Elapsed.TotalSeconds:F1} s, test accuracy {testAccuracy:F4}, test loss {testLoss:F4}, {windows} windows, {session.FailureCount} probe failures."));

Directory.CreateDirectory(settings.Output);
string summaryPath = Path.Combine(settings.Output, "summary.json");
// The trained weights, a PyTorch state_dict that torch.load reads (the integration test recomputes the test accuracy
// from them with PyTorch).
string weightsPath = Path.Combine(settings.Output, "model.pt");
CheckpointFile.Save(model, weightsPath, CheckpointFormat.PyTorch);
var summary = new Dictionary<string, object?>
{
    ["model"] = settings.Model,
    ["data"] = settings.Data,
    ["train_size"] = trainSize,
    ["validation_size"] = ValidationSize,
    ["test_size"] = testSize,
    ["label_noise"] = settings.LabelNoise,
    ["noisy_labels"] = noisy,
    ["seed"] = settings.Seed,
    ["batch"] = settings.Batch,
    ["interval"] = settings.Interval,
    ["learning_rate"] = settings.LearningRate,
    ["step_budget"] = budget,
    ["steps"] = step,
    ["epochs"] = epoch,
    ["test_accuracy"] = testAccuracy,
    ["test_loss"] = testLoss,
    ["stopped_by_rule"] = stoppedByRule,
    ["stopping_rule"] = settings.StopRule?.ToString(),
    ["fired_rule"] = firedRule,
    ["windows_published"] = windows,
    ["probe_failures"] = session.FailureCount,
    ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1),
    ["weights"] = weightsPath,
    ["latest"] = session.Latest is { } latest
        ? latest.Values.Where(v => double.IsFinite(v.Value) && !v.Name.EndsWith(Indicators.StandardErrorSuffix, StringComparison.Ordinal))
            .GroupBy(v => v.Geometry == Geometry.None ? v.Name : $"{v.Name}[{v.Geometry.ToString().ToLowerInvariant()}]")
            .ToDictionary(g => g.Key, g => g.First().Value)
        : null,
};
File.WriteAllText(summaryPath, JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
Console.WriteLine($"summary: {summaryPath}");
// The run's picture: every published value per window (report.csv) and one panel per family (report.png).
foreach (var written in session.WriteReport(settings.Output)) Console.WriteLine($"report: {written}");
session.Dispose();
return 0;

(double Accuracy, double Loss) Evaluate(Tensor images, Tensor labels)
{
    using var scope = torch.NewDisposeScope();
    using var noGrad = torch.no_grad();
    model.eval();
    double correct = 0, lossSum = 0;
    int size = (int)images.shape[0];
    for (int start = 0; start < size; start += 1000)
    {
        int end = Math.Min(start + 1000, size);
        var logits = model.call(images[start..end]);
        var y = labels[start..end];
        lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
        correct += logits.argmax(1).eq(y).sum().item<long>();
    }

    model.train();
    return (correct / size, lossSum / size);
}

static int AddLabelNoise(ref Tensor labels, double fraction, int seed)
{
    // Exactly round(fraction * n) labels, chosen by a seeded shuffle, each replaced by a uniformly random other class.
    var values = labels.data<long>().ToArray();
    var random = new Random(seed);
    int count = (int)Math.Round(fraction * values.Length);
    var indices = Enumerable.Range(0, values.Length).ToArray();
    random.Shuffle(indices);
    foreach (int i in indices.AsSpan(0, count))
        values[i] = (values[i] + random.Next(1, Classes)) % Classes;
    labels = torch.tensor(values);
    return count;
}

static string Headline(ProbeSnapshot? s)
{
    if (s is null) return "no window yet";
    // The smoothed values (over the last SmoothingWindows windows): one window sees one minibatch and is noisy.
    string Value(string label, string name, Geometry g) =>
        s.TryGetValue(name + Indicators.SmoothedSuffix, g, out double v) && !double.IsNaN(v) ? string.Create(CultureInfo.InvariantCulture, $" {label} {v:G3}") : "";
    return $"window {s.Window} (step {s.Step}), smoothed:" + Value("gsnr", Indicators.Gsnr, Geometry.None)
        + Value("cos", Indicators.Cosine, Geometry.Euclidean)
        + Value("regret[fisher]", Indicators.RelativeRegret, Geometry.Fisher)
        + Value("kappa[fisher]", Indicators.ContrastiveFlatness, Geometry.Fisher);
}

/// <summary>The command line, checked: every problem is a <see cref="UsageException"/> with what was expected.</summary>
internal sealed record Settings(
    string Model, int Epochs, int? Steps, int? Interval, int Batch, double LearningRate, double LabelNoise, StoppingRule? StopRule,
    string Data, int? PrometheusPort, int Seed, string Output, bool Help)
{
    public static Settings Parse(string[] args)
    {
        string model = "mlp", output = Path.GetFullPath("mnist-results"), data = Mnist.DefaultDirectory;
        int epochs = 20, batch = 64, seed = 1;
        int? steps = null, port = null, interval = null;
        double lr = 0.05, noise = 0;
        StoppingRule? stop = ProbeOptions.DefaultStoppingRule();
        bool help = false;
        for (int i = 0; i < args.Length; i++)
        {
            string option = args[i];
            string Value(string what) =>
                i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal)
                    ? args[++i]
                    : throw new UsageException($"{option} needs {what} after it.");
            int Integer(string what, int min)
            {
                string text = Value(what);
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v >= min
                    ? v
                    : throw new UsageException($"{option} needs {what}, an integer of at least {min}; found '{text}'.");
            }

            double Number(string what, double min, double max)
            {
                string text = Value(what);
                return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v >= min && v <= max
                    ? v
                    : throw new UsageException($"{option} needs {what} between {min} and {max}; found '{text}'.");
            }

            switch (option)
            {
                case "--model":
                    model = Value("mlp or cnn");
                    if (model is not ("mlp" or "cnn")) throw new UsageException($"--model is mlp or cnn, not '{model}'.");
                    break;
                case "--epochs": epochs = Integer("a number of epochs", 1); break;
                case "--steps": steps = Integer("a number of steps", 1); break;
                case "--interval":
                    if (i + 1 < args.Length && args[i + 1] == "budget") (interval, i) = (null, i + 1);
                    else interval = Integer("a number of steps (at least 1) or budget", 1);
                    break;
                case "--batch": batch = Integer("a batch size", 1); break;
                case "--lr": lr = Number("a learning rate", 1e-9, 10); break;
                case "--label-noise": noise = Number("a fraction of the training labels", 0, 1); break;
                case "--seed": seed = Integer("a seed", 0); break;
                case "--output": output = Path.GetFullPath(Value("a folder")); break;
                case "--data": data = Path.GetFullPath(Value("the folder of a full MNIST download")); break;
                case "--prometheus":
                    port = 9464;
                    if (i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal)) port = Integer("a port", 1);
                    if (port > 65535) throw new UsageException($"--prometheus needs a port up to 65535, not {port}.");
                    break;
                case "--stop":
                    string text = Value("a stopping rule (for example \"regret.relative.smoothed[fisher] > 0.99 for 3\") or none");
                    try
                    {
                        stop = text == "none" ? null : StoppingRule.Parse(text);
                    }
                    catch (ArgumentException e)
                    {
                        throw new UsageException(e.Message);
                    }

                    break;
                case "--help" or "-h": help = true; break;
                default: throw new UsageException($"unknown argument '{option}'.");
            }
        }

        return new Settings(model, epochs, steps, interval, batch, lr, noise, stop, data, port, seed, output, help);
    }
}

internal sealed class UsageException(string message) : Exception(message);

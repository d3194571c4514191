// InvarianceReport: shows which indicators depend only on the function a network computes.
//
// A ReLU network computes the same function after its first layer's weights and bias are multiplied by a and the
// second layer's weights divided by a (relu(a z) = a relu(z) for a > 0). Flatness measured in the Euclidean geometry
// (sharpness, Hessian eigenvalues and trace) changes under that rescaling although nothing a user could observe
// did (Dinh et al. 2017); the Fisher and adaptive geometries, and the GSNR, are built to be invariant to it.
//
// The program trains a 784-128-128-10 MLP on MNIST digits in float64, measures the fixed-point family of one active
// window (FixedPointProbe.Measure, K = 8 minibatches of 64 digits at one theta), measures it again on rescaled
// copies of the network (a = 0.1 and a = 10), and prints a markdown table of every value with its relative change.
// It exits with 0 when the rescaled networks compute the same outputs and every Fisher, adaptive and
// geometry-free value moved by less than 1e-3 relative; with 1 otherwise, and with 2 for a bad argument or missing data.
//
//   dotnet run -c Release --project examples/InvarianceReport -- [--data <mnist folder>] [--output <file.md>] [--fisher-floor <fraction>]
//
// The MNIST folder holds images-idx3-ubyte.gz and labels-idx1-ubyte.gz (or a full MNIST download's
// train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]); by default the one named by TRAININGPROBES_MNIST,
// else the repository's data/mnist-10k (10,000 digits).
using System.Diagnostics;
using System.Globalization;
using System.Text;
using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes;
using TrainingProbes.Examples;
using static TorchSharp.torch;

const int TrainDigits = 8000, Steps = 400, BatchSize = 64, Minibatches = 8, MinibatchSize = 64;
const double OutputTolerance = 1e-10, InvarianceTolerance = 1e-3;
double[] scales = [0.1, 10];

string? dataDirectory = null, outputFile = null;
double fisherFloor = new ProbeOptions().FisherFloor;   // the library's default unless --fisher-floor says otherwise
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--data" when i + 1 < args.Length:
            dataDirectory = args[++i];
            break;
        case "--output" when i + 1 < args.Length:
            outputFile = args[++i];
            break;
        case "--fisher-floor" when i + 1 < args.Length && double.TryParse(args[i + 1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double parsedFloor):
            fisherFloor = parsedFloor;
            i++;
            break;
        case "-h" or "--help":
            Console.WriteLine("usage: InvarianceReport [--data <folder with the MNIST IDX files>] [--output <markdown file>] [--fisher-floor <fraction, e.g. 1e-4>]");
            return 0;
        default:
            Console.Error.WriteLine($"Unknown or incomplete argument '{args[i]}'. usage: InvarianceReport [--data <folder>] [--output <file>] [--fisher-floor <fraction>]");
            return 2;
    }
}

// One intra-op thread: this network's operations are too small to gain from more, and OpenMP's spinning workers
// slow them down more than tenfold when other processes compete for the cores.
torch.set_num_threads(1);
var clock = Stopwatch.StartNew();
dataDirectory ??= Mnist.DefaultDirectory;
Tensor images, labels;
try
{
    (images, labels) = Mnist.Load(dataDirectory, dtype: ScalarType.Float64);
}
catch (Exception ex) when (ex is FileNotFoundException or InvalidDataException)
{
    Console.Error.WriteLine(ex.Message);
    return 2;
}

long digits = images.shape[0];
if (digits < TrainDigits)
{
    Console.Error.WriteLine($"{dataDirectory} holds {digits} digits; the report trains on the first {TrainDigits}.");
    return 2;
}

// 1. Train briefly, so that the measurement is not at initialization.
torch.manual_seed(20170515);
var model = Mlp();
var trainX = images.narrow(0, 0, TrainDigits);
var trainY = labels.narrow(0, 0, TrainDigits);
using (var optimizer = torch.optim.SGD(model.parameters(), learningRate: 0.05, momentum: 0.9))
using (var batches = new Generator(1, device: CPU))
{
    for (int step = 0; step < Steps; step++)
    {
        using var scope = torch.NewDisposeScope();
        var batch = torch.randint(0, TrainDigits, [BatchSize], generator: batches);
        optimizer.zero_grad();
        var loss = nn.functional.cross_entropy(model.call(trainX[batch]), trainY[batch]);
        loss.backward();
        optimizer.step();
    }
}

double trainLoss, heldOutAccuracy;
using (torch.no_grad())
{
    trainLoss = nn.functional.cross_entropy(model.call(trainX), trainY).item<double>();
    heldOutAccuracy = digits > TrainDigits
        ? model.call(images.narrow(0, TrainDigits, digits - TrainDigits)).argmax(1).eq(labels.narrow(0, TrainDigits, digits - TrainDigits)).to(ScalarType.Float64).mean().item<double>()
        : double.NaN;
}

Console.WriteLine($"MLP 784-128-128-10 (ReLU, float64), {Steps} SGD steps of {BatchSize} on the first {TrainDigits} of {digits} MNIST digits from {dataDirectory}");
Console.WriteLine($"training loss {trainLoss:F4}, accuracy on the other {digits - TrainDigits} digits {heldOutAccuracy:P1}; torch threads {torch.get_num_threads()}");

// 2. One fixed-point window: K fixed minibatches of training digits, at the trained theta and at the rescaled ones.
var probeBatches = Enumerable.Range(0, Minibatches)
    .Select(k => (Input: trainX.narrow(0, k * MinibatchSize, MinibatchSize), Target: trainY.narrow(0, k * MinibatchSize, MinibatchSize)))
    .ToList();
var options = new FixedPointOptions
{
    Loss = (output, target) => nn.functional.cross_entropy(output, target),
    Batches = probeBatches,
    WindowSize = Minibatches,
};
var settings = new ProbeOptions { FisherDecay = 0, FisherFloor = fisherFloor };   // one window: the Fisher diagonal is that window's mean g^2

var before = FixedPointProbe.Measure(model, options, settings);
var after = new List<ProbeSnapshot>();
bool outputsHold = true;
foreach (double a in scales)
{
    var rescaled = Rescaled(model, a);
    double difference = MaxRelativeDifference(model, rescaled, images);
    bool same = difference < OutputTolerance;
    outputsHold &= same;
    Console.WriteLine($"a = {a}: layer 1 weights and bias x {a}, layer 2 weights / {a}; outputs on all {digits} digits: max |difference| / max |output| = {difference:0.0e+00}{(same ? "" : $" (NOT below {OutputTolerance:0e+00})")}");
    after.Add(FixedPointProbe.Measure(rescaled, options, settings));
    rescaled.Dispose();
}

if (!outputsHold)
{
    Console.Error.WriteLine("The rescaled networks do not compute the same outputs: the comparison below means nothing.");
    return 1;
}

// 3. The table: every value, with its relative change under each rescaling.
var table = new StringBuilder();
table.Append("| indicator | geometry | value |");
foreach (double a in scales) table.Append(CultureInfo.InvariantCulture, $" after a={a} | rel. change |");
table.AppendLine();
table.Append("| --- | --- | ---: |");
foreach (double _ in scales) table.Append(" ---: | ---: |");
table.AppendLine();

// The session's own bookkeeping (probe.overhead, probe.overhead_total, probe.interval: the timing and schedule of the
// Measure call) describes the probe, not the model: it is left out.
var bookkeeping = before.Values.Where(v => v.Name.StartsWith("probe.", StringComparison.Ordinal)).Select(v => v.Name).Distinct().ToList();
var rows = new List<(IndicatorValue Value, bool Invariant, double[] Changes)>();
foreach (var value in before.Values.Where(v => !bookkeeping.Contains(v.Name)))
{
    bool invariant = value.Geometry is Geometry.Fisher or Geometry.Adaptive or Geometry.None;
    var changes = new double[scales.Length];
    string name = value.Layer is null ? value.Name : $"{value.Name} ({value.Layer})";
    table.Append(CultureInfo.InvariantCulture, $"| {name} | {GeometryName(value.Geometry)} | {Number(value.Value)} |");
    for (int s = 0; s < scales.Length; s++)
    {
        double moved = after[s].TryGetValue(value.Name, value.Geometry, out double v, value.Layer) ? v : double.NaN;
        changes[s] = RelativeChange(value.Value, moved);
        table.Append(CultureInfo.InvariantCulture, $" {Number(moved)} | {Change(changes[s])} |");
    }

    table.AppendLine();
    rows.Add((value, invariant, changes));
}

// 4. The verdict.
var claimed = rows.Where(r => r.Invariant).ToList();
var worst = claimed.Select(r => (Row: r, Change: r.Changes.Max(c => double.IsNaN(c) ? double.PositiveInfinity : c)))
    .OrderByDescending(r => r.Change).First();
var broken = claimed.Where(r => r.Changes.Any(c => !(c < InvarianceTolerance))).ToList();
var euclidean = rows.Where(r => !r.Invariant).ToList();
var movedEuclidean = euclidean.Where(r => r.Changes.Any(c => c >= InvarianceTolerance)).ToList();
var steadyEuclidean = euclidean.Except(movedEuclidean).Select(r => Short(r.Value)).ToList();
string worstText = $"{Short(worst.Row.Value)} [{GeometryName(worst.Row.Value.Geometry)}], {Change(worst.Change)}";
string verdict = broken.Count == 0
    ? $"Invariance holds: all {claimed.Count} fisher, adaptive and geometry-free values (GSNR, EB) moved by less than {InvarianceTolerance:0e+00} relative (most: {worstText}); "
    : $"Invariance BROKEN: {broken.Count} of {claimed.Count} fisher, adaptive or geometry-free values moved by {InvarianceTolerance:0e+00} relative or more ({string.Join(", ", broken.Select(r => $"{Short(r.Value)} [{GeometryName(r.Value.Geometry)}]"))}; most: {worstText}); ";
verdict += $"{movedEuclidean.Count} of {euclidean.Count} euclidean values moved by more than {InvarianceTolerance:0e+00}"
    + (steadyEuclidean.Count == 0 ? " (all of them)." : $" (all but {string.Join(", ", steadyEuclidean)}).");

Console.WriteLine();
Console.Write(table);
if (bookkeeping.Count > 0) Console.WriteLine($"(not shown: {string.Join(", ", bookkeeping)}, the timing and schedule of the measurement itself)");
Console.WriteLine();
Console.WriteLine(verdict);
Console.WriteLine($"({clock.Elapsed.TotalSeconds:F1} s)");
if (outputFile is not null)
{
    File.WriteAllText(outputFile, table + Environment.NewLine + verdict + Environment.NewLine);
    Console.WriteLine($"table written to {Path.GetFullPath(outputFile)}");
}

return broken.Count == 0 ? 0 : 1;

static Sequential Mlp() => nn.Sequential(
    ("fc1", nn.Linear(784, 128)), ("relu1", nn.ReLU()),
    ("fc2", nn.Linear(128, 128)), ("relu2", nn.ReLU()),
    ("fc3", nn.Linear(128, 10))).to(ScalarType.Float64);

// A copy computing the same function: fc1 (weights and bias) times a, fc2's weights divided by a.
static Sequential Rescaled(Sequential source, double a)
{
    var copy = Mlp();
    var sourceParameters = source.named_parameters().ToDictionary(p => p.name, p => p.parameter);
    using (torch.no_grad())
    {
        foreach (var (name, parameter) in copy.named_parameters())
        {
            parameter.copy_(sourceParameters[name]);
            if (name is "fc1.weight" or "fc1.bias") parameter.mul_(a);
            else if (name == "fc2.weight") parameter.div_(a);
        }
    }

    return copy;
}

static double MaxRelativeDifference(Sequential model, Sequential other, Tensor inputs)
{
    using var scope = torch.NewDisposeScope();
    using var noGrad = torch.no_grad();
    var y = model.call(inputs);
    var z = other.call(inputs);
    return ((z - y).abs().max() / y.abs().max()).item<double>();
}

static double RelativeChange(double before, double after) =>
    before == after ? 0                                  // also both infinite with the same sign
    : double.IsNaN(before) && double.IsNaN(after) ? 0    // undefined both times
    : Math.Abs(after - before) / Math.Abs(before);       // NaN when only one is NaN; infinite when before is 0

static string Number(double value) => double.IsNaN(value) ? "NaN" : value.ToString("G6", CultureInfo.InvariantCulture).Replace("E", "e", StringComparison.Ordinal);

static string Change(double change) => double.IsNaN(change) ? "NaN" : double.IsPositiveInfinity(change) ? "inf"
    : change.ToString("0.0e+00", CultureInfo.InvariantCulture);

static string GeometryName(Geometry geometry) => geometry == Geometry.None ? "-" : geometry.ToString().ToLowerInvariant();

static string Short(IndicatorValue value) => value.Name.StartsWith(FixedPointProbe.Prefix, StringComparison.Ordinal)
    ? value.Name[FixedPointProbe.Prefix.Length..]
    : value.Name;

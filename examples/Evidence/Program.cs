// Evidence: do the default indicators carry the effects the literature reports, how noisy are they, and can a rule on
// them stop training as well as a validation set does?
//
// On the repository's MNIST digits (data/mnist-10k: the first 8,000 train, 1,000 validate, 1,000 test) it trains a
// 784-128-128-10 ReLU MLP with plain SGD and a probe session at its defaults (K micro-batches of the closing step's
// minibatch, windows scheduled by the 5% overhead budget, statistics on the session's worker), and records for every
// window the default indicators with their standard errors, and the validation and test loss and accuracy of the model
// at the window's step (evaluated every 10 steps; the evaluation at or just before the window's step). Runs place their
// windows at different steps, so clean and random runs are compared window by window at the nearest step.
//   (a) label noise 0, 20, 50 and 100% of the training labels replaced by uniform random ones (batch 64, lr 0.05);
//   (b) batch 64 vs 1000, both trained to the same training loss (lr 0.05);
//   (c) learning rate 0.01 vs 0.2 (batch 64, clean labels).
// Then it compares stopping: none; validation-loss early stopping (patience 5 evaluations, Lightning's semantics);
// and candidate probe rules that see no validation data, chosen on the selection seeds and reported on the others.
// It writes results/windows.csv (one row per window) and results/summary.md (the tables docs/EVIDENCE.md shows).
//
//   dotnet run -c Release --project examples/Evidence -- [--data <mnist folder>] [--output <folder>] [--steps N]
//
// The evidence matrix (MatrixRuns, MatrixReport; docs/EVIDENCE.md): `-- <part>` (digits-mlp, digits-cnn, teacher-mlp,
// teacher-cnn) trains one part's 54 runs, `-- matrix-report` replays the rules on every part recorded.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Examples;
using TrainingProbes.Stopping;
using static TorchSharp.torch;

var arguments = args.ToList();
string dataDirectory = Mnist.DirectoryFromArguments(arguments);
// A part's name alone is the matrix part: `Evidence digits-mlp` is `Evidence matrix digits-mlp`.
if (arguments is [string first, ..] && first.Contains('-') && !first.StartsWith("--", StringComparison.Ordinal) && first != "matrix-report")
    arguments.Insert(0, "matrix");
if (arguments is ["matrix" or "matrix-report", ..])
{
    // The evidence matrix: `matrix <part>` trains one part's 54 runs; `matrix-report` replays the rules on all parts.
    string matrixOutput = Take(arguments, "--output") ?? MatrixReport.DefaultFolder;
    int matrixSteps = int.Parse(Take(arguments, "--steps") ?? "3000", CultureInfo.InvariantCulture);
    return arguments switch
    {
        ["matrix", string part] => MatrixRuns.Run(part, dataDirectory, matrixOutput, matrixSteps),
        ["matrix-report"] => MatrixReport.Run(matrixOutput),
        _ => Usage("usage: Evidence matrix <digits-mlp|digits-cnn|teacher-mlp|teacher-cnn> [--steps N] [--output <folder>] | Evidence matrix-report [--output <folder>]"),
    };
}

static int Usage(string text)
{
    Console.Error.WriteLine(text);
    return 2;
}
string output = Take(arguments, "--output") ?? Path.Combine(AppContext.BaseDirectory, "results");
int steps = int.Parse(Take(arguments, "--steps") ?? "3000", CultureInfo.InvariantCulture);
int windowSize = int.Parse(Take(arguments, "--window-size") ?? new ProbeOptions().WindowSize.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
string experiments = Take(arguments, "--experiments") ?? "abc";
if (arguments.Count > 0)
{
    Console.Error.WriteLine($"Unknown argument '{arguments[0]}'. usage: Evidence [--data <folder>] [--output <folder>] [--steps N] [--window-size K] [--experiments abc]");
    return 2;
}

torch.set_num_threads(1);
var clock = Stopwatch.StartNew();
var (images, labels) = Mnist.Load(dataDirectory);
var train = (X: images[..8000], Y: labels[..8000]);
var validation = (X: images[8000..9000], Y: labels[8000..9000]);
var test = (X: images[9000..], Y: labels[9000..]);
const int EvaluateEvery = 10, WarmUp = 200;
int smoothing = new ProbeOptions().SmoothingWindows;
const string S = Indicators.SmoothedSuffix, E = Indicators.StandardErrorSuffix;
int[] selectionSeeds = [1, 2], reportSeeds = [3, 4];
int[] allSeeds = [.. selectionSeeds, .. reportSeeds];

var runs = new List<Run>();
foreach (int seed in experiments.Contains('a') ? allSeeds : [])
    foreach (double noise in new[] { 0.0, 0.2, 0.5, 1.0 })
        runs.Add(Train($"noise {noise:P0}", "a", seed, noise, batch: 64, lr: 0.05, steps, targetLoss: null));
foreach (int seed in experiments.Contains('b') ? selectionSeeds : [])
{
    runs.Add(Train("batch 64", "b", seed, 0, batch: 64, lr: 0.05, steps * 4, targetLoss: 0.05));
    runs.Add(Train("batch 1000", "b", seed, 0, batch: 1000, lr: 0.05, steps * 4, targetLoss: 0.05));
}
foreach (int seed in experiments.Contains('c') ? selectionSeeds : [])
{
    runs.Add(Train("lr 0.01", "c", seed, 0, batch: 64, lr: 0.01, steps, targetLoss: null));
    runs.Add(Train("lr 0.2", "c", seed, 0, batch: 64, lr: 0.2, steps, targetLoss: null));
}

Directory.CreateDirectory(output);
WriteCsv(Path.Combine(output, "windows.csv"), runs);
var summary = Summarize(runs);
File.WriteAllText(Path.Combine(output, "summary.md"), summary);
Console.WriteLine(summary);
Console.WriteLine($"({runs.Count} runs, {clock.Elapsed.TotalSeconds:F0} s; CSV and summary in {output})");
return 0;

static string? Take(List<string> args, string option)
{
    int i = args.IndexOf(option);
    if (i < 0 || i + 1 >= args.Count) return null;
    string value = args[i + 1];
    args.RemoveRange(i, 2);
    return value;
}

Run Train(string condition, string experiment, int seed, double noise, int batch, double lr, int maxSteps, double? targetLoss)
{
    torch.manual_seed(seed);
    var generator = new Generator((ulong)seed);
    using var y = train.Y.clone();
    if (noise > 0)
    {
        using var flip = torch.rand([8000], generator: generator) < noise;
        using var random = torch.randint(0, 10, [8000], generator: generator);
        y.copy_(torch.where(flip, random, y));
    }

    var model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10));
    var optimizer = torch.optim.SGD(model.parameters(), lr);
    var lossFunction = nn.CrossEntropyLoss();
    var run = new Run(condition, experiment, seed, noise, batch, lr);
    using var session = ProbeSession.Attach(model, new ProbeOptions
    {
        // The library's defaults but for these: no console, a history long enough for the run, the loss function.
        WindowSize = windowSize, Output = null, RunId = $"{condition}-{seed}", HistoryCapacity = 4096, Loss = lossFunction.call,
    }, optimizer);
    // The model's validation and test values every EvaluateEvery steps (at the parameters the window saw: before the
    // optimizer step), read for each window from the evaluation at or just before its step.
    var evaluations = new SortedList<long, (double ValLoss, double ValAccuracy, double TestLoss, double TestAccuracy)>();
    session.WindowClosed += (_, snapshot) =>
    {
        double Get(string name, Geometry g = Geometry.None) => snapshot.TryGetValue(name, g, out double v) ? v : double.NaN;
        var at = evaluations.Keys.LastOrDefault(k => k <= snapshot.Step);
        var (valLoss, valAccuracy, testLoss, testAccuracy) = evaluations.GetValueOrDefault(at, (double.NaN, double.NaN, double.NaN, double.NaN));
        run.Windows.Add(new Window(snapshot.Step, Get(Indicators.Loss), valLoss, valAccuracy, testLoss, testAccuracy,
            Get(Indicators.Cosine, Geometry.Euclidean), Get(Indicators.Cosine + Indicators.StandardErrorSuffix, Geometry.Euclidean),
            Get(Indicators.RelativeRegret, Geometry.Fisher), Get(Indicators.RelativeRegret + Indicators.StandardErrorSuffix, Geometry.Fisher),
            Get(Indicators.Gsnr), Get(Indicators.Gsnr + Indicators.StandardErrorSuffix),
            Get(Indicators.EbCriterion), Get(Indicators.EbCriterion + Indicators.StandardErrorSuffix),
            Get(Indicators.Cosine + S, Geometry.Euclidean), Get(Indicators.Cosine + S + E, Geometry.Euclidean),
            Get(Indicators.RelativeRegret + S, Geometry.Fisher), Get(Indicators.RelativeRegret + S + E, Geometry.Fisher),
            Get(Indicators.Gsnr + S), Get(Indicators.Gsnr + S + E), Get(Indicators.EbCriterion + S),
            Get(Indicators.GradientNorm, Geometry.Euclidean), Get(Indicators.GradientNoise, Geometry.Euclidean),
            Get(Indicators.GradientNorm, Geometry.Fisher), Get(Indicators.GradientNoise, Geometry.Fisher)));
    };

    double average = double.NaN;
    for (int step = 0; step < maxSteps; step++)
    {
        using var scope = torch.NewDisposeScope();
        var index = torch.randint(0, 8000, [batch], generator: generator);
        var (x, target) = (train.X[index], y[index]);
        optimizer.zero_grad();
        var loss = lossFunction.call(model.call(x), target);
        loss.backward();
        if (step % EvaluateEvery == 0)
            using (torch.no_grad())
            {
                var (valLoss, valAccuracy) = Evaluate(model, validation);
                var (testLoss, testAccuracy) = Evaluate(model, test);
                evaluations[step + 1] = (valLoss, valAccuracy, testLoss, testAccuracy);   // keyed by steps seen, as snapshots count
                run.Evaluations.Add(new Evaluation(step + 1, valLoss, valAccuracy, testLoss, testAccuracy));
            }

        session.Step(loss, x, target);
        optimizer.step();
        double value = loss.item<float>();
        average = double.IsNaN(average) ? value : 0.98 * average + 0.02 * value;
        if (targetLoss is { } goal && step > 200 && average <= goal) break;
    }

    session.Flush();
    run.Steps = session.StepCount;
    run.Failures = session.FailureCount;
    Console.WriteLine($"{condition,-12} seed {seed}: {run.Steps} steps, train loss {average:F3}, test accuracy {run.Evaluations[^1].TestAccuracy:P1}, {run.Windows.Count} windows ({clock.Elapsed.TotalSeconds:F0} s)");
    return run;
}

static (double Loss, double Accuracy) Evaluate(nn.Module<Tensor, Tensor> model, (Tensor X, Tensor Y) data)
{
    var logits = model.call(data.X);
    double loss = nn.functional.cross_entropy(logits, data.Y).item<float>();
    double accuracy = logits.argmax(1).eq(data.Y).to(ScalarType.Float64).mean().item<double>();
    return (loss, accuracy);
}

static void WriteCsv(string path, List<Run> runs)
{
    var text = new StringBuilder("experiment,condition,seed,noise,batch,lr,step,train_loss,val_loss,val_accuracy,test_loss,test_accuracy,cosine,cosine_stderr,regret_relative_fisher,regret_relative_fisher_stderr,gsnr,gsnr_stderr,eb,eb_stderr,cosine_smoothed,cosine_smoothed_stderr,regret_relative_fisher_smoothed,regret_relative_fisher_smoothed_stderr,gsnr_smoothed,gsnr_smoothed_stderr,eb_smoothed,norm_euclidean,noise_euclidean,norm_fisher,noise_fisher\n");
    foreach (var r in runs)
        foreach (var w in r.Windows)
            text.AppendLine(string.Join(',', new object[] { r.Experiment, r.Condition, r.Seed, r.Noise, r.Batch, r.LearningRate, w.Step, w.TrainLoss, w.ValLoss, w.ValAccuracy,
                w.TestLoss, w.TestAccuracy, w.Cosine, w.CosineError, w.Regret, w.RegretError, w.Gsnr, w.GsnrError, w.Eb, w.EbError,
                w.CosineSmoothed, w.CosineSmoothedError, w.RegretSmoothed, w.RegretSmoothedError, w.GsnrSmoothed, w.GsnrSmoothedError, w.EbSmoothed, w.Norm, w.Noise, w.NormFisher, w.NoiseFisher }
                .Select(v => Convert.ToString(v, CultureInfo.InvariantCulture))));
    File.WriteAllText(path, text.ToString());
}

string Summarize(List<Run> all)
{
    var md = new StringBuilder();
    var inv = CultureInfo.InvariantCulture;
    string F(double v, string format = "F3") => double.IsNaN(v) ? "n/a" : v.ToString(format, inv);

    // (a) and the stopping rules need the label-noise runs; (b), (c) the batch and learning-rate runs.
    bool labelNoise = all.Any(r => r.Experiment == "a");
    if (labelNoise)
    {
        // (a) Label noise: the indicators averaged over windows after the warm-up, per noise level (all seeds).
        md.AppendLine("### (a) Label noise (batch 64, lr 0.05, K = " + windowSize + ", " + steps + " steps; means over windows after step " + WarmUp + " and over seeds " + string.Join(", ", allSeeds) + ")");
        md.AppendLine();
        md.AppendLine("| training labels replaced | windows per run | cosine (euclidean) | typical stderr | relative regret (fisher) | GSNR | EB | final test accuracy |");
        md.AppendLine("| --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (var group in all.Where(r => r.Experiment == "a").GroupBy(r => r.Noise).OrderBy(g => g.Key))
        {
            var w = group.SelectMany(r => r.Windows.Where(x => x.Step > WarmUp)).ToList();
            md.AppendLine($"| {group.Key:P0} | {group.Average(r => r.Windows.Count):F0} | {F(w.Average(x => x.Cosine), "F4")} | {F(Median(w.Select(x => x.CosineError)), "F4")} | {F(w.Average(x => x.Regret))} | {F(w.Average(x => x.Gsnr), "F4")} | {F(w.Average(x => x.Eb))} | {F(group.Average(r => r.Evaluations[^1].TestAccuracy), "P1")} |");
        }

        var levels = all.Where(r => r.Experiment == "a").GroupBy(r => r.Noise).OrderBy(g => g.Key)
            .Select(g => g.SelectMany(r => r.Windows.Where(x => x.Step > WarmUp)).ToList()).ToList();
        bool Monotone(Func<Window, double> f, bool decreasing) => levels.Zip(levels.Skip(1)).All(p => decreasing ? p.First.Average(f) > p.Second.Average(f) : p.First.Average(f) < p.Second.Average(f));
        md.AppendLine();
        md.AppendLine($"Monotone in the noise level (averaged over windows): cosine {(Monotone(x => x.Cosine, true) ? "yes" : "no")}, relative regret {(Monotone(x => x.Regret, false) ? "yes" : "no")}, GSNR {(Monotone(x => x.Gsnr, true) ? "yes" : "no")}, EB {(Monotone(x => x.Eb, false) ? "yes" : "no")}.");

        // Clean vs random labels, window by window (same steps), per seed.
        md.AppendLine();
        md.AppendLine("Clean vs 100% random labels, window by window after step " + WarmUp + " (each clean window against the random run's window nearest in step): how often the clean run's value is on the clean side, and how often the two 95% intervals (value +- 1.96 stderr) do not overlap.");
        md.AppendLine();
        md.AppendLine("| indicator | clean side | intervals apart | windows |");
        md.AppendLine("| --- | --- | --- | --- |");
        var headline = new (string Label, Func<Window, double> Value, Func<Window, double> Error, bool HigherIsClean)[]
        {
            ("gradient.cosine [euclidean]", x => x.Cosine, x => x.CosineError, true),
            ("regret.relative [fisher]", x => x.Regret, x => x.RegretError, false),
            ("gradient.gsnr", x => x.Gsnr, x => x.GsnrError, true),
        };
        foreach (var (label, value, error, higherIsClean) in headline.Concat(new (string, Func<Window, double>, Func<Window, double>, bool)[]
        {
            ($"gradient.cosine.smoothed [euclidean] ({smoothing} windows, pooled moments)", x => x.CosineSmoothed, x => x.CosineSmoothedError, true),
            ($"regret.relative.smoothed [fisher] ({smoothing} windows, pooled moments)", x => x.RegretSmoothed, x => x.RegretSmoothedError, false),
            ($"gradient.gsnr.smoothed ({smoothing} windows, mean)", x => x.GsnrSmoothed, x => x.GsnrSmoothedError, true),
        }))
        {
            int windows = 0, side = 0, apart = 0;
            foreach (int seed in allSeeds)
            {
                var clean = all.Single(r => r.Experiment == "a" && r.Seed == seed && r.Noise == 0).Windows;
                var random = all.Single(r => r.Experiment == "a" && r.Seed == seed && r.Noise == 1).Windows;
                foreach (var (i, j) in Pairs(clean, random))
                {
                    var (c, r) = (clean[i], random[j]);
                    windows++;
                    double sign = higherIsClean ? 1 : -1;
                    if (sign * (value(c) - value(r)) > 0) side++;
                    if (sign * ((value(c) - sign * 1.96 * error(c)) - (value(r) + sign * 1.96 * error(r))) > 0) apart++;
                }
            }

            md.AppendLine($"| {label} | {(double)side / windows:P0} | {(double.IsNaN(error(all[0].Windows[^1])) ? "n/a" : ((double)apart / windows).ToString("P0", inv))} | {windows} |");
        }

        // How the separation of 95% intervals grows with the number of windows averaged (the mean of the last n windows'
        // values, standard error sqrt(sum se^2) / n), from the same runs.
        md.AppendLine();
        md.AppendLine("Intervals apart (clean vs random, same pairs of windows as above) for a mean over each run's last n windows:");
        md.AppendLine();
        md.AppendLine("| indicator | n = 1 | n = 5 | n = 10 | n = 20 |");
        md.AppendLine("| --- | --- | --- | --- | --- |");
        foreach (var (label, value, error, higherIsClean) in headline)
        {
            var cells = new List<string>();
            foreach (int n in new[] { 1, 5, 10, 20 })
            {
                int windows = 0, apart = 0;
                foreach (int seed in allSeeds)
                {
                    var clean = all.Single(r => r.Experiment == "a" && r.Seed == seed && r.Noise == 0).Windows;
                    var random = all.Single(r => r.Experiment == "a" && r.Seed == seed && r.Noise == 1).Windows;
                    foreach (var (i, j) in Pairs(clean, random))
                    {
                        (double Mean, double Error) Smooth(List<Window> w, int last)
                        {
                            var recent = w.Skip(Math.Max(0, last + 1 - n)).Take(Math.Min(n, last + 1)).ToList();
                            return (recent.Average(value), Math.Sqrt(recent.Sum(x => error(x) * error(x))) / recent.Count);
                        }

                        var (c, ce) = Smooth(clean, i);
                        var (r, re) = Smooth(random, j);
                        windows++;
                        double sign = higherIsClean ? 1 : -1;
                        if (sign * (c - r) - 1.96 * (ce + re) > 0) apart++;
                    }
                }

                cells.Add(((double)apart / windows).ToString("P0", inv));
            }

            md.AppendLine($"| {label} | {string.Join(" | ", cells)} |");
        }
    }

    if (all.Any(r => r.Experiment is "b" or "c"))
    {
        // (b), (c): batch size and learning rate.
        md.AppendLine();
        md.AppendLine("### (b) Batch size and (c) learning rate (clean labels; means over the windows of the last third of each run, seeds " + string.Join(", ", selectionSeeds) + ")");
        md.AppendLine();
        md.AppendLine("| condition | steps | final training loss (window mean) | cosine | relative regret (fisher) | GSNR | test accuracy |");
        md.AppendLine("| --- | --- | --- | --- | --- | --- | --- |");
        foreach (var group in all.Where(r => r.Experiment is "b" or "c").GroupBy(r => r.Condition))
        {
            var w = group.SelectMany(r => r.Windows.Skip(r.Windows.Count * 2 / 3)).ToList();
            md.AppendLine($"| {group.Key} | {group.Average(r => r.Steps):F0} | {F(group.Average(r => r.Windows[^1].TrainLoss))} | {F(w.Average(x => x.Cosine), "F4")} | {F(w.Average(x => x.Regret))} | {F(w.Average(x => x.Gsnr), "F4")} | {F(group.Average(r => r.Evaluations[^1].TestAccuracy), "P1")} |");
        }
    }

    if (labelNoise)
    {
        // Stopping.
        var candidates = new[]
        {
            "gradient.gsnr < 0.01 for 3",
            "eb_criterion > 0 for 3",
            "gradient.cosine[euclidean] < 0.02 for 3",
            "regret.relative[fisher] > 0.97 for 3",
            "gradient.gsnr.smoothed < 0.01 for 3",
            "gradient.cosine.smoothed[euclidean] < 0.02 for 3",
            "gradient.cosine.smoothed[euclidean] < 0.01 for 3",
            "gradient.cosine.smoothed[euclidean] < 0 for 3",
            "regret.relative.smoothed[fisher] > 0.97 for 3",
            "regret.relative.smoothed[fisher] > 0.98 for 3",
            "regret.relative.smoothed[fisher] > 0.99 for 3",
        };
        double Score(string rule, IEnumerable<int> seeds) => seeds.Sum(seed => StopQuality(rule, seed));
        double StopQuality(string rule, int seed)
        {
            // One point for each of the issue's three conditions the rule meets on this seed.
            var clean = Stop(rule, Find(seed, 0));
            var random = Stop(rule, Find(seed, 1));
            var noisy = Stop(rule, Find(seed, 0.2));
            var validation = Stop(null, Find(seed, 0.2));
            double best = Find(seed, 0).Evaluations.Max(x => x.TestAccuracy);
            return (clean.Accuracy >= best - 0.01 ? 1 : 0) + (random.Stopped ? 1 : 0) + (Math.Abs(noisy.Accuracy - validation.Accuracy) <= 0.01 ? 1 : 0);
        }

        Run Find(int seed, double noise) => all.Single(r => r.Experiment == "a" && r.Seed == seed && r.Noise == noise);
        string chosen = candidates.OrderByDescending(c => Score(c, selectionSeeds)).First();

        md.AppendLine();
        md.AppendLine("### Stopping (label-noise runs)");
        md.AppendLine();
        md.AppendLine($"Candidate probe rules, scored on the selection seeds {string.Join(", ", selectionSeeds)} (a point per seed for each of: on clean labels, test accuracy at the stop within 1 point of the run's best; on random labels, the rule stops; with 20% noise, test accuracy at the stop within 1 point of validation early stopping's): " +
            string.Join("; ", candidates.Select(c => $"`{c}` {Score(c, selectionSeeds)}/{3 * selectionSeeds.Length}")) + $". Chosen: `{chosen}`. Reported below on the other seeds {string.Join(", ", reportSeeds)}.");
        md.AppendLine();
        md.AppendLine("| labels replaced | seed | best test accuracy (step) | no stop | validation early stopping: step, test accuracy | probe rule: step, test accuracy |");
        md.AppendLine("| --- | --- | --- | --- | --- | --- |");
        foreach (int seed in reportSeeds)
            foreach (double noise in new[] { 0.0, 0.2, 0.5, 1.0 })
            {
                var run = Find(seed, noise);
                var best = run.Evaluations.MaxBy(x => x.TestAccuracy)!;
                var byValidation = Stop(null, run);
                var byProbe = Stop(chosen, run);
                string Cell((bool Stopped, long Step, double Accuracy) s) => s.Stopped ? $"{s.Step}, {s.Accuracy.ToString("P1", inv)}" : $"no stop, {s.Accuracy.ToString("P1", inv)}";
                md.AppendLine($"| {noise:P0} | {seed} | {best.TestAccuracy.ToString("P1", inv)} ({best.Step}) | {run.Evaluations[^1].TestAccuracy.ToString("P1", inv)} | {Cell(byValidation)} | {Cell(byProbe)} |");
            }

        md.AppendLine();
        md.AppendLine($"Reported seeds: the chosen rule met {Score(chosen, reportSeeds)} of {3 * reportSeeds.Length} conditions.");
    }

    return md.ToString();
}

// Replays a rule over a run's windows (the library's own rule objects, as a session would evaluate them), or with a null
// rule validation-loss early stopping over the evaluations every ValidateEvery steps. Returns whether it stopped, the
// step, and the test accuracy there (at the end if not).
static (bool Stopped, long Step, double Accuracy) Stop(string? rule, Run run)
{
    const int ValidateEvery = 50;   // a validation pass every 50 steps, patience 5 of them (250 steps)
    if (rule is null)
    {
        var early = new EarlyStopping("val.loss", StoppingMode.Min) { Patience = 5 };
        foreach (var e in run.Evaluations.Where(e => (e.Step - 1) % ValidateEvery == 0))
        {
            early.Evaluate(e.ValLoss, e.Step);
            if (early.Stopped) return (true, e.Step, e.TestAccuracy);
        }

        return (false, run.Evaluations[^1].Step, run.Evaluations[^1].TestAccuracy);
    }

    var stopping = StoppingRule.Parse(rule);
    foreach (var w in run.Windows)
    {
        stopping.Evaluate(ValueOf(stopping, w), w.Step);
        if (stopping.Stopped) return (true, w.Step, w.TestAccuracy);
    }

    return (false, run.Evaluations[^1].Step, run.Evaluations[^1].TestAccuracy);
}

// Each clean window after the warm-up with the random run's window nearest in step (indices into the two lists).
IEnumerable<(int Clean, int Random)> Pairs(List<Window> clean, List<Window> random)
{
    for (int i = 0; i < clean.Count; i++)
    {
        if (clean[i].Step <= WarmUp || random.Count == 0) continue;
        long step = clean[i].Step;
        int nearest = Enumerable.Range(0, random.Count).MinBy(j => Math.Abs(random[j].Step - step));
        yield return (i, nearest);
    }
}

static double ValueOf(StoppingRule rule, Window w) => (rule.Monitor, rule.Geometry) switch
{
    (Indicators.EbCriterion, _) => w.Eb,
    (Indicators.Gsnr, _) => w.Gsnr,
    (Indicators.Cosine, Geometry.Euclidean) => w.Cosine,
    (Indicators.RelativeRegret, Geometry.Fisher) => w.Regret,
    (Indicators.EbCriterion + Indicators.SmoothedSuffix, _) => w.EbSmoothed,
    (Indicators.Gsnr + Indicators.SmoothedSuffix, _) => w.GsnrSmoothed,
    (Indicators.Cosine + Indicators.SmoothedSuffix, Geometry.Euclidean) => w.CosineSmoothed,
    (Indicators.RelativeRegret + Indicators.SmoothedSuffix, Geometry.Fisher) => w.RegretSmoothed,
    var other => throw new ArgumentException($"The evidence does not record {other}."),
};

static double Median(IEnumerable<double> values)
{
    var sorted = values.Where(v => !double.IsNaN(v)).Order().ToArray();
    return sorted.Length == 0 ? double.NaN : sorted[sorted.Length / 2];
}

sealed record Evaluation(long Step, double ValLoss, double ValAccuracy, double TestLoss, double TestAccuracy);

sealed record Window(long Step, double TrainLoss, double ValLoss, double ValAccuracy, double TestLoss, double TestAccuracy,
    double Cosine, double CosineError, double Regret, double RegretError, double Gsnr, double GsnrError, double Eb, double EbError,
    double CosineSmoothed, double CosineSmoothedError, double RegretSmoothed, double RegretSmoothedError, double GsnrSmoothed, double GsnrSmoothedError,
    double EbSmoothed, double Norm, double Noise, double NormFisher, double NoiseFisher);

sealed class Run(string condition, string experiment, int seed, double noise, int batch, double lr)
{
    public string Condition { get; } = condition;
    public string Experiment { get; } = experiment;
    public int Seed { get; } = seed;
    public double Noise { get; } = noise;
    public int Batch { get; } = batch;
    public double LearningRate { get; } = lr;
    public List<Window> Windows { get; } = [];
    public List<Evaluation> Evaluations { get; } = [];
    public long Steps { get; set; }
    public int Failures { get; set; }
}

// Replays stopping rules on the evidence matrix's records (MatrixRuns) with the library's own rule objects
// (StoppingRule.Parse, Evaluate on each value in step order), chooses one rule per family on the selection half and
// reports it on the other half. Writes matrix.md beside the records.
//
// What counts (the issue's acceptance), for a rule's stop at step s, the test accuracy at s being that of the last
// evaluation at or before s (no weights restored), and a run the rule never stops keeping its last accuracy:
//   clean runs (0% noise): pass when never stopped, or stopped with test accuracy within 1 point of the run's best;
//   random-label runs (100%): pass when stopped;
//   noisy runs (30%): pass when the accuracy is within 1 point of validation early stopping's
//                     (early_stopping(monitor=val.loss, patience=3), the same replay).
// Choosing: within a family, the member with the highest worst pass rate of the three kinds on the selection half,
// ties to the higher total. The report half is read once, for the chosen members.
using System.Globalization;
using System.Text;
using TrainingProbes;
using TrainingProbes.Stopping;

internal static class MatrixReport
{
    public const string Reference = "early_stopping(monitor=val.loss, patience=3)";

    /// <summary>examples/Evidence/results/matrix of the checkout the program runs from, else ./results/matrix.</summary>
    public static string DefaultFolder
    {
        get
        {
            for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
                if (File.Exists(Path.Combine(folder.FullName, "TrainingProbes.sln")))
                    return Path.Combine(folder.FullName, "examples", "Evidence", "results", "matrix");
            return Path.GetFullPath(Path.Combine("results", "matrix"));
        }
    }

    // Candidate families and their members (thresholds fixed before any run was seen).
    private static readonly (string Family, string[] Members)[] Candidates =
    [
        ("README rule: GSNR below, window values", [.. new[] { 0.005, 0.01, 0.02, 0.05 }.Select(t => $"gradient.gsnr < {t.ToString(CultureInfo.InvariantCulture)} for 3")]),
        ("GSNR below, smoothed", [.. new[] { 0.005, 0.01, 0.02, 0.05 }.Select(t => $"gradient.gsnr.smoothed < {t.ToString(CultureInfo.InvariantCulture)} for 3")]),
        ("cosine below, smoothed", [.. new[] { 0.01, 0.02, 0.05, 0.1 }.Select(t => $"gradient.cosine.smoothed[euclidean] < {t.ToString(CultureInfo.InvariantCulture)} for 3")]),
        ("quick start rule: Fisher relative regret above, smoothed", [.. new[] { 0.9, 0.95, 0.97, 0.99 }.Select(t => $"regret.relative.smoothed[fisher] > {t.ToString(CultureInfo.InvariantCulture)} for 3")]),
        ("per-example SNR below, smoothed", [.. new[] { 1e-4, 3e-4, 1e-3, 3e-3 }.Select(t => $"gradient.snr_per_example.smoothed[euclidean] < {t.ToString(CultureInfo.InvariantCulture)} for 3")]),
        ("per-example noise rises, window values", [.. from p in new[] { 25, 50, 100 } from n in new[] { 3, 5 } select $"gradient.noise_per_example[euclidean] rises {p}% above its minimum after 200 for {n}"]),
        ("per-example noise rises, smoothed", [.. new[] { 10, 25, 50 }.Select(p => $"gradient.noise_per_example.smoothed[euclidean] rises {p}% above its minimum after 200")]),
        ("validation plateau (trainer reports val.loss)", [.. new[] { 3, 5, 10 }.Select(p => $"early_stopping(monitor=val.loss, patience={p})")]),
        ("validation accuracy plateau (trainer reports val.accuracy)", [.. new[] { 5, 10, 20 }.Select(p => $"early_stopping(monitor=val.accuracy, mode=max, patience={p})")]),
        ("validation accuracy plateau, best weights restored", [.. new[] { 5, 10, 20 }.Select(p => $"early_stopping(monitor=val.accuracy, mode=max, patience={p}, restore_best_weights=true)")]),
        ("validation plateau, best weights restored", [.. new[] { 3, 5, 10, 20 }.Select(p => $"early_stopping(monitor=val.loss, patience={p}, restore_best_weights=true)")]),
    ];

    private sealed record Evaluation(long Step, double ValLoss, double ValAccuracy, double TestAccuracy);

    private sealed class RunRecord(string id, bool selection, string cell, string data, string architecture, string optimizer, double noise)
    {
        public string Id { get; } = id;
        public bool Selection { get; } = selection;
        public string Cell { get; } = cell;
        public string Data { get; } = data;
        public string Architecture { get; } = architecture;
        public string Optimizer { get; } = optimizer;
        public double Noise { get; } = noise;
        public List<(long Step, double[] Values)> Windows { get; } = [];
        public List<Evaluation> Evaluations { get; } = [];
        public double Best => Evaluations.Max(e => e.TestAccuracy);
        public double Last => Evaluations[^1].TestAccuracy;

        public double AccuracyAt(long? step) =>
            step is { } s ? Evaluations.LastOrDefault(e => e.Step <= s)?.TestAccuracy ?? Evaluations[0].TestAccuracy : Last;
    }

    private enum Kind { Clean, Noisy, Random }

    private static Kind KindOf(RunRecord run) => run.Noise == 0 ? Kind.Clean : run.Noise >= 1 ? Kind.Random : Kind.Noisy;

    public static int Run(string folder)
    {
        var runs = Load(folder);
        if (runs.Count == 0)
        {
            Console.Error.WriteLine($"No matrix records in {folder}: run `Evidence matrix <part>` first.");
            return 2;
        }

        var inv = CultureInfo.InvariantCulture;
        var reference = runs.ToDictionary(r => r.Id, r => r.AccuracyAt(StopStep(Reference, r).Kept));
        var md = new StringBuilder();
        var parts = runs.Select(r => $"{r.Data}-{r.Architecture}").Distinct().Order().ToList();
        md.AppendLine($"## Evidence matrix: {runs.Count} runs ({string.Join(", ", parts)})");
        md.AppendLine();
        md.AppendLine($"Selection half: {runs.Count(r => r.Selection)} runs in {runs.Where(r => r.Selection).Select(r => r.Cell).Distinct().Count()} cells; report half: {runs.Count(r => !r.Selection)} runs in {runs.Where(r => !r.Selection).Select(r => r.Cell).Distinct().Count()} cells (checkerboard over data set, architecture, optimizer and batch size).");
        md.AppendLine($"Reference for noisy runs: `{Reference}`, replayed on the same records. A pass: clean, never stopped more than 1 point below the run's best test accuracy; random labels, stopped; noisy, within 1 point of the reference.");
        var clean = runs.Where(r => KindOf(r) == Kind.Clean).ToList();
        md.AppendLine($"How hard the clean criterion is: {clean.Count(r => r.Last >= r.Best - 0.01)} of {clean.Count} clean runs end (step 3,000) within 1 point of their best test accuracy; the best is the maximum of {clean.Average(r => r.Evaluations.Count):F0} evaluations on 1,000 test examples, whose binomial standard deviation is {Median(clean.Select(r => Math.Sqrt(r.Best * (1 - r.Best) / 1000))) * 100:F1} points at the median best accuracy.");
        md.AppendLine();
        md.AppendLine("| family | chosen on the selection half | selection: clean / random / noisy | report: clean / random / noisy | report: median stop step (clean, random) |");
        md.AppendLine("| --- | --- | --- | --- | --- |");
        foreach (var (family, members) in Candidates)
        {
            var scored = members.Select(m => (Rule: m, Score: Score(m, runs.Where(r => r.Selection).ToList(), reference))).ToList();
            var chosen = scored.OrderByDescending(s => s.Score.Worst).ThenByDescending(s => s.Score.Total).First();
            var report = Score(chosen.Rule, runs.Where(r => !r.Selection).ToList(), reference);
            md.AppendLine($"| {family} | `{chosen.Rule}` | {chosen.Score} | {report} | {report.MedianStops} |");
        }

        md.AppendLine();
        md.AppendLine("Every member on both halves (for the record; the choice above saw the selection half only):");
        md.AppendLine();
        md.AppendLine("| rule | selection: clean / random / noisy | report: clean / random / noisy |");
        md.AppendLine("| --- | --- | --- |");
        foreach (var member in Candidates.SelectMany(c => c.Members))
            md.AppendLine($"| `{member}` | {Score(member, runs.Where(r => r.Selection).ToList(), reference)} | {Score(member, runs.Where(r => !r.Selection).ToList(), reference)} |");

        md.AppendLine();
        md.Append(Separation(runs));
        md.AppendLine();
        md.AppendLine("Test accuracy (median over runs; best during the run / last / at the reference's stop):");
        md.AppendLine();
        md.AppendLine("| part | noise | best | last | reference stop |");
        md.AppendLine("| --- | --- | --- | --- | --- |");
        foreach (var g in runs.GroupBy(r => (Part: $"{r.Data}-{r.Architecture}", r.Noise)).OrderBy(g => g.Key.Part).ThenBy(g => g.Key.Noise))
            md.AppendLine($"| {g.Key.Part} | {g.Key.Noise:P0} | {Median(g.Select(r => r.Best)):P1} | {Median(g.Select(r => r.Last)):P1} | {Median(g.Select(r => reference[r.Id])):P1} |");

        string path = Path.Combine(folder, "matrix.md");
        File.WriteAllText(path, md.ToString());
        Console.WriteLine(md);
        Console.WriteLine($"(written to {path})");
        return 0;
    }

    // Does an indicator order clean above random labels? Per cell and seed, the last smoothed value of the clean run
    // against the random-label run's: how often the clean run reads the "generalizing" side.
    private static string Separation(List<RunRecord> runs)
    {
        var md = new StringBuilder();
        md.AppendLine("Which side of a random-label run a clean run reads on (the last window's value, same cell and seed); the README's former reading is \"higher for clean\" for GSNR, cosine and per-example SNR, \"lower for clean\" for the relative regret and per-example noise:");
        md.AppendLine();
        md.AppendLine("| series | clean higher than random | clean 30% noise higher than random | pairs |");
        md.AppendLine("| --- | --- | --- | --- |");
        foreach (var column in new[] { "gsnr_smoothed", "cosine_smoothed", "regret_fisher_smoothed", "snr_per_example_smoothed", "noise_per_example_smoothed" })
        {
            int index = Array.FindIndex(MatrixRuns.Series, s => s.Column == column);
            int higher = 0, noisyHigher = 0, pairs = 0;
            foreach (var cell in runs.GroupBy(r => (r.Cell, Seed: r.Id[^1])))
            {
                double Last(double noise) => cell.FirstOrDefault(r => r.Noise == noise)?.Windows.LastOrDefault().Values?[index] ?? double.NaN;
                double clean = Last(0), noisy = Last(0.3), random = Last(1);
                if (double.IsNaN(clean) || double.IsNaN(random) || double.IsNaN(noisy)) continue;
                pairs++;
                if (clean > random) higher++;
                if (noisy > random) noisyHigher++;
            }

            md.AppendLine($"| {column} | {higher} of {pairs} | {noisyHigher} of {pairs} | {pairs} |");
        }

        return md.ToString();
    }

    private sealed record Tally(int Clean, int CleanRuns, int Random, int RandomRuns, int Noisy, int NoisyRuns, string MedianStops)
    {
        private static double Rate(int k, int n) => n == 0 ? 1 : (double)k / n;

        public double Worst => Math.Min(Rate(Clean, CleanRuns), Math.Min(Rate(Random, RandomRuns), Rate(Noisy, NoisyRuns)));

        public int Total => Clean + Random + Noisy;

        public override string ToString() => $"{Clean}/{CleanRuns} / {Random}/{RandomRuns} / {Noisy}/{NoisyRuns}";
    }

    private static Tally Score(string rule, List<RunRecord> runs, Dictionary<string, double> reference)
    {
        int clean = 0, random = 0, noisy = 0;
        var cleanStops = new List<double>();
        var randomStops = new List<double>();
        foreach (var run in runs)
        {
            var (stop, kept) = StopStep(rule, run);
            double accuracy = run.AccuracyAt(kept);
            switch (KindOf(run))
            {
                case Kind.Clean:
                    if ((stop is null && kept is null) || accuracy >= run.Best - 0.01) clean++;
                    if (stop is { } c) cleanStops.Add(c);
                    break;
                case Kind.Random:
                    if (stop is { } r) { random++; randomStops.Add(r); }
                    break;
                default:
                    if (Math.Abs(accuracy - reference[run.Id]) <= 0.01) noisy++;
                    break;
            }
        }

        string Stops(List<double> s) => s.Count == 0 ? "none" : Median(s).ToString("F0", CultureInfo.InvariantCulture);
        return new Tally(clean, runs.Count(r => KindOf(r) == Kind.Clean), random, runs.Count(r => KindOf(r) == Kind.Random),
            noisy, runs.Count(r => KindOf(r) == Kind.Noisy), $"{Stops(cleanStops)}, {Stops(randomStops)}");
    }

    // The first step the rule fires at when it sees the run's values of its monitor in step order (null: never), and
    // the step whose weights the run ends with: the stop, or the best evaluation's when the rule restores best weights.
    private static (long? Stop, long? Kept) StopStep(string text, RunRecord run)
    {
        var rule = StoppingRule.Parse(text);
        bool restores = rule is EarlyStopping { RestoreBestWeights: true };
        (long?, long?) Fired(long step) => (step, restores ? rule.SaveState().BestStep ?? step : step);
        if (rule.Monitor is "val.loss" or "val.accuracy")
        {
            foreach (var e in run.Evaluations)
                if (rule.Evaluate(rule.Monitor == "val.loss" ? e.ValLoss : e.ValAccuracy, e.Step).Fired) return Fired(e.Step);
            return (null, restores ? rule.SaveState().BestStep : null);
        }

        string column = MatrixRuns.Series.Single(s => s.Monitor == rule.Monitor && s.Geometry == rule.Geometry).Column;
        int index = Array.FindIndex(MatrixRuns.Series, s => s.Column == column);
        foreach (var (step, values) in run.Windows)
            if (rule.Evaluate(values[index], step).Fired) return Fired(step);
        return (null, null);
    }

    private static List<RunRecord> Load(string folder)
    {
        var runs = new Dictionary<string, RunRecord>();
        if (!Directory.Exists(folder)) return [];
        var inv = CultureInfo.InvariantCulture;
        foreach (var file in Directory.GetFiles(folder, "*.windows.csv").Order())
        {
            var lines = File.ReadAllLines(file);
            var header = lines[0].Split(',');
            int first = Array.IndexOf(header, "step") + 1;
            var columns = header[first..];
            var order = MatrixRuns.Series.Select(s => Array.IndexOf(columns, s.Column)).ToArray();
            foreach (var line in lines.Skip(1))
            {
                var f = line.Split(',');
                if (!runs.TryGetValue(f[0], out var run))
                    runs[f[0]] = run = new RunRecord(f[0], f[1] == "1", string.Join('/', f[0].Split('/')[..4]), f[2], f[3], f[4], double.Parse(f[6], inv));
                var values = order.Select(i => i < 0 ? double.NaN : double.Parse(f[first + i], inv)).ToArray();
                run.Windows.Add((long.Parse(f[first - 1], inv), values));
            }

            foreach (var line in File.ReadAllLines(file.Replace(".windows.csv", ".evaluations.csv")).Skip(1))
            {
                var f = line.Split(',');
                runs[f[0]].Evaluations.Add(new Evaluation(long.Parse(f[1], inv), double.Parse(f[2], inv), double.Parse(f[3], inv), double.Parse(f[4], inv)));
            }
        }

        return [.. runs.Values.Where(r => r.Evaluations.Count > 0)];
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Where(v => !double.IsNaN(v)).Order().ToArray();
        return sorted.Length == 0 ? double.NaN : sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

// Overhead harness: trains the same MNIST MLP with and without probes, interleaving the variants in rounds so
// that machine noise hits all of them alike, and prints the median time per step, its ratio to the plain loop,
// the overhead the session itself measured (probe.overhead_total) and its last interval.
//
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- defaults [rounds] [steps-per-round] [--threads N] [--data <mnist folder>]
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- intervals|budget|scrape|curvature [rounds] [steps-per-round] [--data <mnist folder>]
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- kernels [repetitions] [largest P]
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- bdn [BenchmarkDotNet arguments]
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- memory [P] [onepass|full|bfloat16|sketch]
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- steps [windows] [--data <mnist folder>]
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- scrapes [collections] [cached]   (bytes allocated per /metrics scrape, against a static page)
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- all      (the defaults, kernels, steps and memory figures, each suite in a process of its own)
//
// The kernels suite measures a window's statistics on [K, P] buffers and the default window end to end on one Linear
// layer, beside the read-once floor (one sum() over the K x P buffer) and the obvious implementation (K^2 dot products
// of flattened gradients, each read back), and prints medians and ratios.
//
// MNIST comes from the repository's data/mnist-10k unless --data or TRAININGPROBES_MNIST names another folder.
using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Examples;
using TrainingProbes.Prometheus;
using static TorchSharp.torch;
using static BenchmarkStatistics;

if (args.Length > 0 && args[0] == "bdn")
{
    // BenchmarkDotNet over the window kernels; further arguments go to it (for example --filter '*Window*').
    BenchmarkDotNet.Running.BenchmarkRunner.Run<TrainingProbes.Benchmarks.WindowKernelBenchmarks>(args: args[1..]);
    return;
}

if (args.Length > 0 && args[0] == "all")
{
    // Every figure of the default window's issue, each suite in a process of its own (the memory suite needs a fresh
    // one): the one line at its defaults against the bare loop, the window statistics against the floor and the naive
    // loop, the closing step against the median step, and the session's memory against its formula.
    var allClock = Stopwatch.StartNew();
    foreach (var suiteArguments in new[]
    {
        new[] { "defaults", "6", "1000" },
        ["defaults", "6", "1000", "--threads", Environment.ProcessorCount.ToString(System.Globalization.CultureInfo.InvariantCulture)],
        ["kernels", "7", "1000000"],
        ["steps", "20"],
        ["memory", "16777216", "onepass"],
        ["memory", "4194304", "full"],
    })
    {
        Console.WriteLine($"== {string.Join(' ', suiteArguments)} ({allClock.Elapsed.TotalSeconds:F0} s)");
        var start = new ProcessStartInfo(Environment.ProcessPath!) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") start.ArgumentList.Add(typeof(MemorySuite).Assembly.Location);
        foreach (var argument in suiteArguments) start.ArgumentList.Add(argument);
        if (suiteArguments[0] == "memory") start.Environment["MALLOC_MMAP_THRESHOLD_"] = "1048576";   // see MemorySuite
        using var child = Process.Start(start)!;
        child.WaitForExit();
        if (child.ExitCode != 0) Console.WriteLine($"   exited with {child.ExitCode}");
    }

    Console.WriteLine($"== done in {allClock.Elapsed.TotalMinutes:F1} minutes");
    return;
}

if (args.Length > 0 && args[0] == "scrapes")
{
    ScrapeSuite.Run(args.Length > 1 ? int.Parse(args[1]) : 60, args.Length > 2 ? int.Parse(args[2]) : 2000);
    return;
}

if (args.Length > 0 && args[0] == "steps")
{
    var stepArguments = args.ToList();
    string stepData = Mnist.DirectoryFromArguments(stepArguments);
    StepSuite.Run(stepArguments.Count > 1 ? int.Parse(stepArguments[1]) : 20, stepData);
    return;
}

if (args.Length > 0 && args[0] == "defaults")
{
    var defaultArguments = args.ToList();
    string defaultData = Mnist.DirectoryFromArguments(defaultArguments);
    int threadsAt = defaultArguments.IndexOf("--threads");
    int threads = 1;
    if (threadsAt >= 0)
    {
        threads = int.Parse(defaultArguments[threadsAt + 1]);
        defaultArguments.RemoveRange(threadsAt, 2);
    }

    DefaultsSuite.Run(defaultArguments.Count > 1 ? int.Parse(defaultArguments[1]) : 6, defaultArguments.Count > 2 ? int.Parse(defaultArguments[2]) : 1000, defaultData, threads);
    return;
}

if (args.Length > 0 && args[0] == "memory")
{
    MemorySuite.Run(args.Length > 1 ? long.Parse(args[1]) : 1L << 24, args.Length > 2 ? args[2].ToLowerInvariant() : "onepass");
    return;
}

if (args.Length > 0 && args[0] == "kernels")
{
    KernelSuite.Run(args.Length > 1 ? int.Parse(args[1]) : 5, args.Length > 2 ? long.Parse(args[2]) : long.MaxValue);
    return;
}

var arguments = args.ToList();
string dataDirectory = Mnist.DirectoryFromArguments(arguments);
string suite = arguments.Count > 0 ? arguments[0] : "intervals";
int rounds = arguments.Count > 1 ? int.Parse(arguments[1]) : 9;
int stepsPerRound = arguments.Count > 2 ? int.Parse(arguments[2]) : 400;
torch.set_num_threads(1);

var (images, labels) = Mnist.Load(dataDirectory);
Console.WriteLine($"suite {suite}: MNIST {images.shape[0]} digits; MLP 784-128-128-10, batch 64, SGD momentum; {rounds} rounds x {stepsPerRound} steps; torch threads 1");

static Tensor CrossEntropy(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

// Curvature: the fixed-point probe's Hessian estimates at every window, with and without the warm start of the power
// iteration; prints the median probe seconds per window, the median iterations and how often it converged.
if (suite == "curvature")
{
    foreach (bool warm in new[] { false, true })
    {
        var probe = new FixedPointProbe(new FixedPointOptions { Loss = CrossEntropy, WindowSize = 8, Every = 1, WarmStart = warm, FiniteRadius = false });
        var run = new Run(images, labels, new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null, Interval = 100, Probes = [probe] });
        run.Train(300);   // past the first, steep steps
        run.Train(100 * rounds);
        var windows = run.Session!.History.Skip(4).ToList();
        double MedianOf(IEnumerable<double> v) { var a = v.Order().ToArray(); return a[a.Length / 2]; }
        Console.WriteLine($"warm start {(warm ? "on " : "off")}: {windows.Count} windows, median fixed_point {MedianOf(windows.Select(s => s.ProbeSeconds["fixed_point"])):F3} s/window, " +
            $"median iterations {MedianOf(windows.Select(s => s.Get(Indicators.CurvatureIterations, Geometry.Euclidean))):F0}, " +
            $"converged {windows.Average(s => s.Get(Indicators.CurvatureConverged, Geometry.Euclidean)):P0}, " +
            $"median lambda_max {MedianOf(windows.Select(s => s.Get(Indicators.CurvatureLambdaMax, Geometry.Euclidean))):F3}, training {MedianOf(windows.Select(s => s.Get(Indicators.ProbeOverhead))):F2} probe/training time");
        run.Session.Dispose();
    }

    return;
}

FixedPointProbe FixedPoint() => new(new FixedPointOptions
{
    Loss = CrossEntropy, WindowSize = 4, Every = 5,
});

var variants = suite switch
{
    // Fixed schedules: what a window costs, with the interval held constant.
    "intervals" => new (string Name, ProbeOptions? Options)[]
    {
        ("no probes", null),
        ("K=8 N=100 fixed", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null }),
        ("K=8 N=100 fixed, euclidean only", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null, Geometries = Geometry.Euclidean }),
        ("K=8 N=20 fixed", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null, Interval = 20 }),
        ("K=16 N=16 fixed (every step)", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null, WindowSize = 16, Interval = 16 }),
        ("K=8 N=100 fixed, capture only", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null, BuiltInProbes = false }),
    },
    // The overhead budget: the session stretches or shortens its interval to cost the budgeted fraction.
    "budget" => new (string Name, ProbeOptions? Options)[]
    {
        ("no probes", null),
        ("budget 5%, no fixed-point windows", new ProbeOptions { Output = null }),
        ("budget 5% (default options)", new ProbeOptions { Loss = CrossEntropy, Output = null }),
        ("budget 5% + fixed-point probe", new ProbeOptions { Loss = CrossEntropy, Output = null, Probes = [FixedPoint()] }),
        ("budget 2% + fixed-point probe", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = 0.02, Probes = [FixedPoint()] }),
    },
    // Scrapes: the same options, with the /metrics endpoint (which serves every session) scraped or not.
    "scrape" => new (string Name, ProbeOptions? Options)[]
    {
        ("no probes", null),
        ("N=100 fixed + /metrics, not scraped", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null }),
        ("N=100 fixed + /metrics, ~20 scrapes/s", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null }),
        ("N=100 fixed + /metrics, ~200 scrapes/s", new ProbeOptions { Loss = CrossEntropy, Output = null, OverheadBudget = null }),
    },
    _ => throw new ArgumentException($"Unknown suite '{suite}': use intervals, budget or scrape."),
};

var perStep = variants.Select(_ => new List<double>()).ToArray();
using var endpoint = suite == "scrape" ? PrometheusScrapeEndpoint.Start(new() { Port = 0 }) : null;
var runs = variants.Select(v => new Run(images, labels, v.Options)).ToArray();
foreach (var run in runs) run.Train(50);   // warm-up

// In the scrape suite the last two variants are trained while a client in the same process fetches their /metrics
// page every 50 ms and every 5 ms (far denser than any Prometheus setup, which scrapes every few seconds).
var scrapers = new Dictionary<int, Scraper>();
if (suite == "scrape")
{
    scrapers[variants.Length - 2] = new Scraper(endpoint!.Address, pauseMilliseconds: 50);
    scrapers[variants.Length - 1] = new Scraper(endpoint!.Address, pauseMilliseconds: 5);
}
var clock = Stopwatch.StartNew();
var scrapedSeconds = new Dictionary<int, double>();
for (int round = 0; round < rounds; round++)
    for (int v = 0; v < variants.Length; v++)
    {
        var scraper = scrapers.GetValueOrDefault(v);
        if (scraper is not null) scraper.Running = true;
        double started = clock.Elapsed.TotalSeconds;
        perStep[v].Add(runs[v].Train(stepsPerRound) / stepsPerRound);
        scrapedSeconds[v] = scrapedSeconds.GetValueOrDefault(v) + clock.Elapsed.TotalSeconds - started;
        if (scraper is not null) scraper.Running = false;
    }
foreach (var (v, scraper) in scrapers)
{
    scraper.Stop();
    Console.WriteLine($"{variants[v].Name}: {scraper.Count} scrapes in {scrapedSeconds[v]:F1} s of training ({scraper.Count / scrapedSeconds[v]:F0}/s)");
}

// The ratio is taken round by round (each round trains every variant back to back, so slow drifts of the machine
// cancel), then summarized by its median and quartiles across rounds.
Console.WriteLine($"{"variant",-40} {"median ms/step",15} {"ratio",7} {"ratio p25-p75",15} {"achieved",9} {"interval",9} {"windows",8}  probe ms per window (median)");
for (int v = 0; v < variants.Length; v++)
{
    double median = Median(perStep[v]);
    var ratios = perStep[v].Zip(perStep[0], (a, b) => a / b).Order().ToList();
    string spread = $"{ratios[ratios.Count / 4]:F3}-{ratios[3 * ratios.Count / 4]:F3}";
    var session = runs[v].Session;
    var last = session?.Latest;
    string achieved = last is null ? "-" : $"{last.Get(Indicators.ProbeOverheadTotal):P2}";
    string interval = last is null ? "-" : $"{last.Get(Indicators.ProbeInterval):F0}";
    var parts = session?.History.SelectMany(h => h.ProbeSeconds).GroupBy(kv => kv.Key)
        .Select(g => $"{g.Key} {Median(g.Select(kv => kv.Value).ToList()) * 1e3:F2}") ?? [];
    Console.WriteLine($"{variants[v].Name,-40} {median * 1e3,15:F4} {Median(ratios),7:F3} {spread,15} {achieved,9} {interval,9} {session?.History.Count ?? 0,8}  {string.Join(", ", parts)}");
}

sealed class Scraper
{
    private readonly Thread _thread;
    private volatile bool _stopped;

    public Scraper(Uri address, int pauseMilliseconds)
    {
        _thread = new Thread(() =>
        {
            using var http = new HttpClient();
            while (!_stopped)
            {
                if (Running)
                {
                    http.GetStringAsync(address).GetAwaiter().GetResult();
                    Interlocked.Increment(ref _count);
                }
                Thread.Sleep(pauseMilliseconds);
            }
        }) { IsBackground = true };
        _thread.Start();
    }

    private int _count;

    public volatile bool Running;

    public int Count => _count;

    public void Stop()
    {
        _stopped = true;
        _thread.Join();
    }
}

sealed class Run
{
    private readonly Tensor _images, _labels;
    private readonly nn.Module<Tensor, Tensor> _model;
    private readonly optim.Optimizer _optimizer;
    private readonly ProbeSession? _session;

    public ProbeSession? Session => _session;
    private readonly nn.Module<Tensor, Tensor, Tensor> _loss = nn.CrossEntropyLoss();
    private readonly Generator _generator = new(17);

    public Run(Tensor images, Tensor labels, ProbeOptions? options)
    {
        _images = images;
        _labels = labels;
        torch.manual_seed(3);
        _model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10));
        _optimizer = optim.SGD(_model.parameters(), 0.05, momentum: 0.9);
        if (options is not null) _session = ProbeSession.Attach(_model, options, _optimizer);
    }

    /// <summary>Trains <paramref name="steps"/> steps and returns the seconds they took.</summary>
    public double Train(int steps)
    {
        long n = _images.shape[0];
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < steps; i++)
        {
            using var scope = torch.NewDisposeScope();
            var batch = torch.randint(0, n, [64], generator: _generator);
            _optimizer.zero_grad();
            var x = _images[batch];
            var y = _labels[batch];
            var loss = _loss.call(_model.call(x), y);
            loss.backward();
            _session?.Step(loss, x, y);
            _optimizer.step();
        }
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }
}

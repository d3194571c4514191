// Overhead harness: trains the same MNIST MLP with and without probes, interleaving the variants in rounds so
// that machine noise hits all of them alike, and prints the median time per step and its ratio to the baseline.
//
//   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- [rounds] [steps-per-round]
using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Benchmarks;
using TrainingProbes.Prometheus;
using static TorchSharp.torch;

int rounds = args.Length > 0 ? int.Parse(args[0]) : 7;
int stepsPerRound = args.Length > 1 ? int.Parse(args[1]) : 400;
torch.set_num_threads(1);

var (images, labels) = Mnist.Load(Mnist.DefaultDirectory);
Console.WriteLine($"MNIST {images.shape[0]} digits; MLP 784-128-128-10, batch 64, SGD momentum; {rounds} rounds x {stepsPerRound} steps; torch threads 1");

var variants = new (string Name, ProbeOptions? Options)[]
{
    ("no probes", null),
    ("K=8 N=100 (default)", new ProbeOptions { Output = null }),
    ("K=8 N=100 euclidean only", new ProbeOptions { Output = null, Geometries = Geometry.Euclidean }),
    ("K=8 N=20", new ProbeOptions { Output = null, Interval = 20 }),
    ("K=16 N=16 (every step captured)", new ProbeOptions { Output = null, WindowSize = 16, Interval = 16 }),
    ("default + /metrics, not scraped", new ProbeOptions { Output = null, Probes = [new PrometheusScrapeEndpoint(new() { Port = 0 })] }),
    ("default + /metrics, 200 scrapes/s", new ProbeOptions { Output = null, Probes = [new PrometheusScrapeEndpoint(new() { Port = 0 })] }),
};
int scrapedVariant = variants.Length - 1;

var perStep = variants.Select(_ => new List<double>()).ToArray();
var runs = variants.Select(v => new Run(images, labels, v.Options)).ToArray();
foreach (var run in runs) run.Train(50);   // warm-up

// The scraped variant is trained while a client fetches its /metrics page 200 times a second (a burst far denser
// than any Prometheus setup), to show what scrapes cost the training thread.
var scraper = new Scraper(((PrometheusScrapeEndpoint)variants[scrapedVariant].Options!.Probes[0]).Address!);
for (int round = 0; round < rounds; round++)
    for (int v = 0; v < variants.Length; v++)
    {
        if (v == scrapedVariant) scraper.Running = true;
        perStep[v].Add(runs[v].Train(stepsPerRound) / stepsPerRound);
        scraper.Running = false;
    }
scraper.Stop();
Console.WriteLine($"scrapes served to the scraped variant: {scraper.Count}");

double baseline = Median(perStep[0]);
Console.WriteLine($"{"variant",-34} {"median ms/step",15} {"ratio",8} {"probe ms/window",16} {"windows",8}");
for (int v = 0; v < variants.Length; v++)
{
    double median = Median(perStep[v]);
    var durations = runs[v].Session?.History.Select(h => h.ProbeSeconds.Values.Sum()).ToList() ?? [];
    string probeMs = durations.Count > 0 ? $"{Median(durations) * 1e3:F3}" : "-";
    var parts = runs[v].Session?.History.SelectMany(h => h.ProbeSeconds).GroupBy(kv => kv.Key)
        .Select(g => $"{g.Key} {Median(g.Select(kv => kv.Value).ToList()) * 1e3:F2}") ?? [];
    Console.WriteLine($"{variants[v].Name,-34} {median * 1e3,15:F4} {median / baseline,8:F3} {probeMs,16} {durations.Count,8}  {string.Join(", ", parts)}");
}

static double Median(List<double> values)
{
    var sorted = values.Order().ToArray();
    return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
}

sealed class Scraper
{
    private readonly Thread _thread;
    private volatile bool _stopped;

    public Scraper(Uri address)
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
                Thread.Sleep(5);
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
            var loss = _loss.call(_model.call(_images[batch]), _labels[batch]);
            loss.backward();
            _session?.Step(loss);
            _optimizer.step();
        }
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }
}

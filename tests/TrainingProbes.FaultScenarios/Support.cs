using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.FaultScenarios;

/// <summary>A small classifier with a layer that the forward pass can leave out (an unused parameter).</summary>
internal sealed class Net : nn.Module<Tensor, Tensor>
{
    public Linear First;
    public Linear Second;
    public Linear? Unused;

    public Net(int seed, bool unusedLayer = false) : base("net")
    {
        torch.manual_seed(seed);
        First = nn.Linear(Data.Features, 16);
        Second = nn.Linear(16, Data.Classes);
        if (unusedLayer) Unused = nn.Linear(16, 16);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => Second.call(nn.functional.relu(First.call(x)));
}

/// <summary>Minibatches that depend only on their step index, so that two runs see the same data.</summary>
internal static class Data
{
    public const int Features = 8, Classes = 3, BatchSize = 32;

    public static (Tensor X, Tensor Y) Batch(int step)
    {
        var generator = new Generator((ulong)(7919 + step));
        var x = torch.randn([BatchSize, Features], generator: generator);
        // A learnable rule plus noise, so that the gradients carry signal. Scalars kept alive: several scenarios
        // allocate on other threads (docs/KNOWN-ISSUES.md).
        var y = x[.., 0].add(x[.., 1], Half).add_(torch.randn([BatchSize], generator: generator), Noise).gt(Zero).to(ScalarType.Int64)
            .add_(x[.., 2].gt(One).to(ScalarType.Int64), One);
        return (x, y);
    }

    private static readonly Scalar Half = 0.5.ToScalar(), Noise = 0.3.ToScalar(), Zero = 0.ToScalar(), One = 1.ToScalar();

    public static Tensor Loss(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);
}

/// <summary>A training loop with hooks where a scenario injects its fault.</summary>
internal sealed class Trainer(Net model, ProbeSession? session, double learningRate = 0.05)
{
    public Net Model { get; } = model;
    public optim.Optimizer Optimizer { get; } = new GcSafeSgd(model.parameters(), learningRate);

    /// <summary>Called after backward, before the probe: may change the gradients or the model.</summary>
    public Action<int>? AfterBackward { get; init; }

    /// <summary>Replaces the loss given to the probe (not the one trained on).</summary>
    public Func<int, Tensor, Tensor>? ReportedLoss { get; init; }

    /// <summary>Whether the optimizer steps at this step (a trainer that skips non-finite gradients).</summary>
    public Func<int, bool>? StepOptimizer { get; init; }

    public int StepsRun { get; private set; }

    public void Run(int from, int to)
    {
        for (int step = from; step < to; step++)
        {
            using var scope = torch.NewDisposeScope();
            var (x, y) = Data.Batch(step);
            Optimizer.zero_grad();
            var loss = Data.Loss(Model.call(x), y);
            loss.backward();
            AfterBackward?.Invoke(step);
            var reported = ReportedLoss?.Invoke(step, loss) ?? loss;
            session?.Step(reported, x, y);
            if (StepOptimizer?.Invoke(step) ?? true) Optimizer.step();
            StepsRun++;
            if (session?.ShouldStop == true) break;
        }

        session?.Flush();
    }

    /// <summary>The parameters' values, to compare two runs bit for bit.</summary>
    public float[] Weights() => Model.parameters().SelectMany(p => p.detach().cpu().to(ScalarType.Float32).data<float>().ToArray()).ToArray();
}

/// <summary>Collects what the session logs, to check that a fault is reported.</summary>
internal sealed class LogCollector : ILoggerFactory, ILoggerProvider, ILogger
{
    public ConcurrentQueue<(LogLevel Level, string Message, Exception? Exception)> Entries { get; } = new();

    public IEnumerable<string> Warnings => Entries.Where(e => e.Level >= LogLevel.Warning)
        .Select(e => e.Message + (e.Exception is null ? "" : " | " + e.Exception.Message));

    public ILogger CreateLogger(string categoryName) => this;
    public void AddProvider(ILoggerProvider provider) { }
    public void Dispose() { }
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Entries.Enqueue((logLevel, formatter(state, exception), exception));
}

internal static class Options
{
    /// <summary>Small windows, often, fixed schedule, silent, logging into <paramref name="log"/>.</summary>
    public static ProbeOptions Small(LogCollector log, TrainingProbe[]? probes = null, StoppingRule[]? stopping = null,
        string? checkpoint = null, Func<string, bool>? filter = null, Func<Tensor, Tensor, Tensor>? loss = null, string runId = "fault", bool strict = false,
        WindowStorage storage = WindowStorage.Full, bool steps = false) => new()
    {
        WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null, LoggerFactory = log, RunId = runId,
        Strict = strict, Loss = loss ?? Data.Loss, Probes = probes ?? [], Stopping = stopping ?? [], CheckpointPath = checkpoint, ParameterFilter = filter,
        Storage = storage, SketchDimension = 1024, StepStatistics = steps,   // the sketch dimension only counts with Sketch storage; the smallest allowed, for speed
    };
}

/// <summary>Reads the session's gauges as an exporter would, through a <see cref="System.Diagnostics.Metrics.MeterListener"/>.</summary>
internal static class Gauges
{
    /// <summary>Every observable value of the TrainingProbes meter now: (instrument name, geometry attribute, value).</summary>
    public static List<(string Name, string? Geometry, double Value)> Read()
    {
        var values = new List<(string, string?, double)>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == TrainingProbesMeter.Name) l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
        {
            string? geometry = null;
            foreach (var tag in tags) if (tag.Key == "geometry") geometry = tag.Value?.ToString();
            lock (values) values.Add((instrument.Name, geometry, value));
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return values;
    }
}

/// <summary>
/// Threads that allocate short-lived garbage until disposed: collections happen at any moment on the threads that do
/// native work. Without <c>forceEvery</c> they allocate flat out; with it, each forces a generation-0 collection after
/// that many 1 KB allocations and then sleeps a little (collections as often, less of the two cores spent).
/// </summary>
internal sealed class GarbageThreads : IDisposable
{
    private readonly Thread[] _threads;
    private volatile bool _stop;
    private readonly int _startCollections = GC.CollectionCount(0);

    /// <param name="count">How many threads.</param>
    /// <param name="forceEvery">When positive, each thread calls GC.Collect(0) after this many 1 KB allocations, then sleeps.</param>
    /// <param name="pauseMilliseconds">How long each thread sleeps after a forced collection.</param>
    public GarbageThreads(int count, int forceEvery = 0, int pauseMilliseconds = 1)
    {
        _threads = Enumerable.Range(0, count).Select(_ => new Thread(() =>
        {
            long n = 0;
            while (!_stop)
            {
                GC.KeepAlive(new byte[1024]);
                if (forceEvery > 0 && ++n % forceEvery == 0)
                {
                    GC.Collect(0);
                    Thread.Sleep(pauseMilliseconds);
                }
            }
        }) { IsBackground = true, Name = "garbage" }).ToArray();
        foreach (var thread in _threads) thread.Start();
    }

    /// <summary>Generation-0 collections since the threads started.</summary>
    public int Collections => GC.CollectionCount(0) - _startCollections;

    public void Dispose()
    {
        _stop = true;
        foreach (var thread in _threads) thread.Join();
    }
}

/// <summary>
/// Clients that fetch a /metrics page in a loop until disposed, each pausing between fetches; a page without the step
/// gauge (there from the attach) or any exception is an error, and the first one is kept.
/// </summary>
internal sealed class ScrapeClients : IDisposable
{
    private readonly CancellationTokenSource _stop = new();   // not disposed: it has no timer, and Dispose may run twice
    private readonly Task[] _clients;
    private int _scrapes, _errors;
    private string? _firstError;

    public ScrapeClients(int port, int count, int pauseMilliseconds)
    {
        _clients = Enumerable.Range(0, count).Select(_ => Task.Run(async () =>
        {
            using var http = new HttpClient();
            while (!_stop.IsCancellationRequested)
            {
                try
                {
                    string text = await http.GetStringAsync($"http://127.0.0.1:{port}/metrics");
                    if (text.Contains("trainingprobes_training_step", StringComparison.Ordinal)) Interlocked.Increment(ref _scrapes);
                    else Fail("a page without the step gauge: " + text[..Math.Min(200, text.Length)]);
                }
                catch (Exception ex)
                {
                    Fail($"{ex.GetType().Name}: {ex.Message}");
                }

                await Task.Delay(pauseMilliseconds);
            }
        })).ToArray();
    }

    /// <summary>Pages served with the step gauge.</summary>
    public int Scrapes => Volatile.Read(ref _scrapes);

    /// <summary>Failed fetches and pages without the step gauge.</summary>
    public int Errors => Volatile.Read(ref _errors);

    /// <summary>The first error, or null.</summary>
    public string? FirstError => Volatile.Read(ref _firstError);

    private void Fail(string what)
    {
        Interlocked.Increment(ref _errors);
        Interlocked.CompareExchange(ref _firstError, what, null);
    }

    /// <summary>Stops the clients and waits for them (once: a scenario stops them before its checks, then its using block ends).</summary>
    public void Dispose()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        Task.WaitAll(_clients);
    }
}


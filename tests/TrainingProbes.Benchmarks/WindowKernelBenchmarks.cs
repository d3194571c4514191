using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using TorchSharp;
using TrainingProbes;
using static TorchSharp.torch;

/// <summary>
/// BenchmarkDotNet: one window of the session (K captured steps and the window's statistics: the step family, drift and
/// loss) in the euclidean geometry and in all three, beside the read-once floor (one <c>sum()</c> over a K x P float32
/// buffer, the baseline of the Ratio column) and the obvious implementation (K^2 <c>dot</c> products, each read back).
/// One torch thread, in process, a short job.
/// </summary>
[Config(typeof(Config))]
public class WindowKernelBenchmarks
{
    private sealed class Config : ManualConfig
    {
        public Config()
        {
            AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance).WithWarmupCount(2).WithIterationCount(5));
            Options |= ConfigOptions.DisableOptimizationsValidator;
        }
    }

    private Tensor? _buffer;
    private Tensor[] _rows = [];
    private nn.Module<Tensor, Tensor>? _euclideanModel, _allModel;
    private ProbeSession? _euclidean, _all;

    /// <summary>Watched parameters.</summary>
    [Params(100_000L, 1_000_000L, 10_000_000L)]
    public long P { get; set; }

    /// <summary>Gradients per window.</summary>
    [Params(8, 32)]
    public int K { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        torch.set_num_threads(1);
        torch.manual_seed(1);
        _buffer = torch.randn(K, P);
        _rows = Enumerable.Range(0, K).Select(i => _buffer[i]).ToArray();
        (_euclideanModel, _euclidean) = Session(Geometry.Euclidean);
        (_allModel, _all) = Session(Geometry.All);
    }

    private (nn.Module<Tensor, Tensor>, ProbeSession) Session(Geometry geometries)
    {
        var model = nn.Linear(1000, P / 1000, hasBias: false);
        using (torch.enable_grad()) model.call(torch.ones(1, 1000)).sum().backward();   // creates .grad
        var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = K, Interval = K, OverheadBudget = null, Output = null, Geometries = geometries, SmoothingWindows = 0,
        });
        return (model, session);
    }

    [Benchmark(Baseline = true, Description = "floor: sum() over K x P")]
    public float Floor() => _buffer!.sum().item<float>();

    [Benchmark(Description = "naive: K^2 dot products")]
    public double Naive()
    {
        double total = 0;
        for (int i = 0; i < K; i++)
            for (int j = 0; j < K; j++)
                total += torch.dot(_rows[i], _rows[j]).item<float>();
        return total;
    }

    [Benchmark(Description = "window, euclidean")]
    public int WindowEuclidean() => Window(_euclidean!);

    [Benchmark(Description = "window, all three geometries")]
    public int WindowAll() => Window(_all!);

    private int Window(ProbeSession session)
    {
        for (int i = 0; i < K; i++) session.Step();
        session.Flush();   // the window's statistics, wherever they run
        return session.Latest!.Window;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _euclidean?.Dispose();
        _all?.Dispose();
        foreach (var row in _rows) row.Dispose();
        _buffer?.Dispose();
        _euclideanModel?.Dispose();
        _allModel?.Dispose();
    }
}

using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Benchmarks;

/// <summary>
/// BenchmarkDotNet: a window's statistics (<see cref="WindowKernel"/> over a [K, P] float32 buffer: the Gram matrix of
/// each geometry, the GSNR sums with their influences, the Fisher fold) in the euclidean geometry and in all three,
/// beside the read-once floor (one <c>sum()</c> over the buffer, the baseline of the Ratio column) and the obvious
/// implementation (K^2 <c>dot</c> products, each read back). One torch thread, in process, a short job.
/// </summary>
[Config(typeof(Config))]
public unsafe class WindowKernelBenchmarks
{
    private sealed class Config : ManualConfig
    {
        public Config()
        {
            AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance).WithWarmupCount(2).WithIterationCount(5));
            Options |= ConfigOptions.DisableOptimizationsValidator;
        }
    }

    private Tensor? _buffer, _fisher, _theta;
    private Tensor[] _rows = [];
    private nint[] _pointers = [];
    private WindowKernel? _euclidean, _all;
    private double[] _sums = [];

    /// <summary>Watched parameters.</summary>
    [Params(100_000L, 1_000_000L, 10_000_000L)]
    public long P { get; set; }

    /// <summary>Gradients per window.</summary>
    [Params(8, 16)]
    public int K { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        torch.set_num_threads(1);
        torch.manual_seed(1);
        _buffer = torch.randn(K, P);
        _fisher = torch.rand(P, dtype: ScalarType.Float64);
        _theta = torch.randn(P);
        _rows = Enumerable.Range(0, K).Select(i => _buffer[i]).ToArray();
        float* start = WindowKernel.Address<float>(_buffer);
        _pointers = Enumerable.Range(0, K).Select(i => (nint)(start + i * P)).ToArray();
        _euclidean = new WindowKernel(new CoordinateSums.Layout(K, [Geometry.Euclidean]), 0);
        _all = new WindowKernel(new CoordinateSums.Layout(K, [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive]), 0);
        _sums = new double[new CoordinateSums.Layout(K, [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive]).Length];
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

    [Benchmark(Description = "window statistics, euclidean")]
    public double WindowEuclidean() => Statistics(_euclidean!);

    [Benchmark(Description = "window statistics, all three geometries")]
    public double WindowAll() => Statistics(_all!);

    private double Statistics(WindowKernel kernel)
    {
        var state = new WindowKernel.State
        {
            Fisher = WindowKernel.Address<double>(_fisher!), Decay = 0.9, Floor = 1e-8, Bias = 1, Theta = WindowKernel.Address<float>(_theta!),
            Eta = 0, StoredEpsilon = Math.Pow(2, -23),
        };
        fixed (nint* rows = _pointers) return kernel.Accumulate((float**)rows, P, state, _sums);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var row in _rows) row.Dispose();
        _buffer?.Dispose();
        _fisher?.Dispose();
        _theta?.Dispose();
    }
}

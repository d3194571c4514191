using System.Runtime.InteropServices;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Capture;
using static TorchSharp.torch;

/// <summary>
/// What a session adds to a process's resident memory: one Linear layer of P float32 weights (sqrt(P) x sqrt(P), SGD),
/// a few steps without a session, then a session with the built-in probes until three windows have closed. Modes:
/// <c>onepass</c>, the default window (the layer tapped: no K x P buffer); <c>full</c>, <c>bfloat16</c> and
/// <c>sketch</c>, a model whose forward calls the layer's <c>forward</c> (no hooks), so that each window takes K
/// micro-batch passes into a K x P buffer kept as that storage says. Resident memory is read after a full GC and glibc's malloc_trim, so that it counts what the process
/// holds, not what the allocator keeps of freed blocks; a session on a small model runs first, so that loading and
/// compiling the library's code is not counted. Set <c>MALLOC_MMAP_THRESHOLD_=1048576</c> (as the integration test does)
/// so that glibc maps large blocks and unmaps them when freed, rather than keeping some in its heaps. For the sketch mode it prints the formula
/// (<see cref="GradientSketch.SessionBytes"/>) and the ratio. Run one mode per process: another mode's freed memory
/// would blur the next measure.
///
///   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- memory [P] [onepass|full|bfloat16|sketch]
/// </summary>
internal static class MemorySuite
{
    /// <summary>A layer whose forward runs no hooks: the session takes K micro-batch passes into a K x P buffer.</summary>
    private sealed class Untapped : nn.Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.Linear _layer;

        public Untapped(long side) : base(nameof(Untapped))
        {
            _layer = nn.Linear(side, side, hasBias: false);
            RegisterComponents();
        }

        public override Tensor forward(Tensor input) => _layer.forward(input);
    }

    public static void Run(long requested, string mode)
    {
        const int k = 16, batch = 16;
        torch.set_num_threads(1);
        long side = (long)Math.Round(Math.Sqrt(requested));
        long parameters = side * side;
        bool onePass = mode == "onepass";
        var storage = onePass ? WindowStorage.Full : Enum.Parse<WindowStorage>(mode, ignoreCase: true);
        torch.manual_seed(1);
        nn.Module<Tensor, Tensor> model = onePass ? nn.Linear(side, side, hasBias: false) : new Untapped(side);
        var optimizer = optim.SGD(model.parameters(), 1e-4);
        var x = torch.randn(batch, side);
        var y = torch.randn(batch, side);
        void Step(ProbeSession? session) => TrainStep(model, optimizer, x, y, session);

        for (int i = 0; i < 3; i++) Step(null);
        WarmUp(storage, onePass);
        long before = Resident();
        var options = new ProbeOptions { WindowSize = k, Interval = k + 2, OverheadBudget = null, Output = null, Storage = storage, Loss = Loss };
        var started = DateTime.UtcNow;
        using var session = ProbeSession.Attach(model, options, optimizer);
        long attached = Resident() - before;
        // After each window from the second on: the median, as allocators give freed blocks back at their own pace.
        var afterWindows = new List<long>();
        for (int window = 0; window < 4; window++)
        {
            for (int i = 0; i < k + 2; i++) Step(session);
            session.Flush();
            if (window > 0) afterWindows.Add(Resident());
        }

        long after = afterWindows.Order().ElementAt(afterWindows.Count / 2);
        long added = after - before;
        if (session.History.Count < 3) throw new InvalidOperationException($"only {session.History.Count} windows closed");
        Console.WriteLine($"memory: P = {parameters:N0} float32 parameters ({4.0 * parameters / 1e6:F0} MB), K = {k}, {(onePass ? "one pass (no K x P buffer)" : $"K passes, storage {storage}")}, geometries {options.Geometries}, {session.History.Count} windows in {(DateTime.UtcNow - started).TotalSeconds:F0} s");
        Console.WriteLine($"  added resident memory at attach: {attached / 1e6:F1} MB; after the windows (median of 3): {added / 1e6:F1} MB = {(double)added / parameters:F2} bytes per parameter");
        long batchBytes = (x.NumberOfElements + y.NumberOfElements) * 4;
        if (storage == WindowStorage.Sketch)
        {
            int geometries = options.Geometries.HasFlag(Geometry.Adaptive) ? 2 : 1;
            long formula = GradientSketch.SessionBytes(parameters, k, options.SketchDimension, geometries, batchBytes);
            Console.WriteLine($"  formula: {formula / 1e6:F1} MB (4 bytes per parameter for theta, then K x d x 4 bytes per window and geometry, d = {options.SketchDimension})");
            Console.WriteLine($"  added / formula: {(double)added / formula:F3}");
        }
        else
        {
            // The window's theta (float32) and the Fisher average (float64): 12 bytes per parameter; with K passes, the K x P
            // buffer in the storage's dtype too: 4 K + 12 (2 K + 12 in bfloat16). The layer's input and output gradients of
            // one batch are a few kilobytes.
            int stored = storage == WindowStorage.BFloat16 ? 2 : 4;
            long perParameter = (onePass ? 0 : (long)k * stored) + 12;
            long formula = parameters * perParameter + batchBytes;
            Console.WriteLine($"  formula: {formula / 1e6:F1} MB ({(onePass ? "" : $"K b + ")}12 = {perParameter} bytes per parameter{(onePass ? "" : $", b = {stored} bytes per stored gradient value")}; the bound is 4 K + 16 = {4 * k + 16})");
            Console.WriteLine($"  added / formula: {(double)added / formula:F3}");
        }
    }

    /// <summary>
    /// A session on a small model, run and disposed first: loading and compiling the library's code (a fixed cost of
    /// some tens of MB, whatever the model) is then not counted as the session's memory.
    /// </summary>
    private static void WarmUp(WindowStorage storage, bool onePass)
    {
        nn.Module<Tensor, Tensor> model = onePass ? nn.Linear(64, 64) : new Untapped(64);
        var optimizer = optim.SGD(model.parameters(), 1e-3);
        var x = torch.randn(8, 64);
        var y = torch.randn(8, 64);
        using (var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 16, Interval = 18, OverheadBudget = null, Output = null, Storage = storage, Loss = Loss }, optimizer))
            for (int i = 0; i < 3 * 18; i++) TrainStep(model, optimizer, x, y, session);

        model.Dispose();
    }

    private static Tensor Loss(Tensor output, Tensor target) => nn.functional.mse_loss(output, target);

    /// <summary>One SGD step on (x, y), shown to <paramref name="session"/> when there is one.</summary>
    private static void TrainStep(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, Tensor x, Tensor y, ProbeSession? session)
    {
        using var scope = torch.NewDisposeScope();
        optimizer.zero_grad();
        var loss = Loss(model.call(x), y);
        loss.backward();
        session?.Step(loss, x, y);
        optimizer.step();
    }

    [DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);

    private static long Resident()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        if (OperatingSystem.IsLinux()) _ = MallocTrim(0);   // 1 when memory was released; either way the reading follows
        using var process = System.Diagnostics.Process.GetCurrentProcess();
        process.Refresh();
        return process.WorkingSet64;
    }
}

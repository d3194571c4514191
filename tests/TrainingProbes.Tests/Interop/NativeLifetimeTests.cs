using System.Reflection.Emit;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Interop;

/// <summary>
/// TorchSharp passes a <see cref="Scalar"/>'s native handle to native code and keeps no reference to the wrapper during
/// the call: a scalar made by an implicit conversion, here or inside TorchSharp, can be finalized by a collection on
/// another thread while the call reads it (the README's known issues). These tests read the compiled TrainingProbes
/// assemblies and TorchSharp's: no TrainingProbes call may reach native code with such a scalar.
/// </summary>
public sealed class NativeLifetimeTests
{
    private const string ImplicitScalar = "TorchSharp.Scalar::op_Implicit(";
    private const string ToScalar = "TorchSharp.ScalarExtensionMethods::ToScalar(";

    private static readonly string[] OurAssemblies =
    [
        typeof(ProbeSession).Assembly.Location,
        typeof(TrainingProbes.Prometheus.PrometheusScrapeEndpoint).Assembly.Location,
        typeof(TrainingProbes.Reporting.ProbeReport).Assembly.Location,
    ];

    /// <summary>
    /// TorchSharp's methods that make a scalar (implicitly or with ToScalar) and pass it on, directly or through other
    /// TorchSharp methods; each with the first call of the chain.
    /// </summary>
    private static readonly Lazy<Dictionary<string, string>> TorchSharpHazards = new(() =>
    {
        var calls = CompiledCalls.Read(typeof(torch).Assembly.Location).GroupBy(c => c.Caller).ToDictionary(g => g.Key, g => g.Select(c => c.Callee).ToList());
        var hazards = new Dictionary<string, string>();
        foreach (var (caller, callees) in calls)
            if (callees.FirstOrDefault(c => c.StartsWith(ImplicitScalar, StringComparison.Ordinal) || c.StartsWith(ToScalar, StringComparison.Ordinal)) is { } made)
                hazards[caller] = made;
        for (bool grew = true; grew;)
        {
            grew = false;
            foreach (var (caller, callees) in calls)
                if (!hazards.ContainsKey(caller) && callees.FirstOrDefault(hazards.ContainsKey) is { } via)
                {
                    hazards[caller] = $"{via} <- {hazards[via]}";
                    grew = true;
                }
        }

        return hazards;
    });

    private static List<string> ScalarHazardsIn(string assembly) => CompiledCalls.Read(assembly)
        .Where(c => c.Callee.StartsWith(ImplicitScalar, StringComparison.Ordinal) || TorchSharpHazards.Value.ContainsKey(c.Callee))
        .Select(c => $"{c.Caller} calls {c.Callee}" + (TorchSharpHazards.Value.TryGetValue(c.Callee, out var via) ? $" (which makes a scalar: {via})" : ""))
        .Distinct()
        .ToList();

    [Fact]
    public void No_TrainingProbes_call_hands_TorchSharp_a_scalar_that_can_be_finalized_during_the_call()
    {
        var found = OurAssemblies.SelectMany(ScalarHazardsIn).ToList();
        Assert.True(found.Count == 0,
            "Implicit scalars (a double or int where TorchSharp takes a Scalar, or a TorchSharp method that makes one, such as " +
            "add_(Tensor), square() or t * 0.5): use Interop.Scalars, a ScalarScope or a field instead.\n" + string.Join("\n", found));
    }

    [Fact]
    public void Scalar_scopes_are_held_in_locals()
    {
        // A scope held by a local is disposed by its using block, which keeps it (and its scalars) alive until then;
        // `t.mul_(new ScalarScope()[0.5])` would make a scope nothing holds.
        var loose = OurAssemblies.SelectMany(CompiledCalls.Read)
            .Where(c => c.Callee.StartsWith("TrainingProbes.Interop.ScalarScope::.ctor(", StringComparison.Ordinal))
            .Where(c => c.Next is not { } next || !(next == OpCodes.Stloc || next == OpCodes.Stloc_S || next == OpCodes.Stloc_0
                || next == OpCodes.Stloc_1 || next == OpCodes.Stloc_2 || next == OpCodes.Stloc_3))
            .Select(c => c.Caller)
            .ToList();
        Assert.True(OurAssemblies.SelectMany(CompiledCalls.Read).Any(c => c.Callee.StartsWith("TrainingProbes.Interop.ScalarScope::.ctor(", StringComparison.Ordinal)), "no ScalarScope found: the reading is wrong");
        Assert.True(loose.Count == 0, "A ScalarScope not held by a local (`using var scalars = new ScalarScope();`):\n" + string.Join("\n", loose));
    }

    [Fact]
    public void Explicit_scalars_are_held_by_a_field_or_a_scalar_scope()
    {
        var loose = OurAssemblies.SelectMany(CompiledCalls.Read)
            .Where(c => c.Callee.StartsWith(ToScalar, StringComparison.Ordinal))
            .Where(c => c.Next != OpCodes.Stfld && c.Next != OpCodes.Stsfld && !c.Caller.StartsWith("TrainingProbes.Interop.ScalarScope::", StringComparison.Ordinal))
            .Select(c => c.Caller)
            .ToList();
        Assert.True(loose.Count == 0, "A ToScalar() whose result is neither stored in a field nor made by a ScalarScope can be finalized during the call it is passed to:\n" + string.Join("\n", loose));
    }

    /// <summary>What the two tests above would miss if the reading of the compiled code were wrong.</summary>
    [Fact]
    public void The_reading_finds_the_scalars_TorchSharp_makes_out_of_sight()
    {
        var hazards = TorchSharpHazards.Value;
        Assert.Contains("TorchSharp.torch/Tensor::add_(TorchSharp.torch/Tensor)", hazards.Keys);   // add_(t, 1)
        Assert.Contains("TorchSharp.torch/Tensor::square()", hazards.Keys);                         // pow(2)
        Assert.Contains("TorchSharp.torch/Tensor::op_Multiply(TorchSharp.torch/Tensor,Double)", hazards.Keys);
        Assert.Contains(hazards.Keys, m => m.StartsWith("TorchSharp.Modules.SGD::<step>", StringComparison.Ordinal));
        Assert.Contains("TorchSharp.Modules.SGD::step(System.Func`1<TorchSharp.torch/Tensor>)", hazards.Keys);   // through its lambda (ldftn)
        Assert.Contains(hazards.Keys, m => m.StartsWith("TorchSharp.Modules.Adam::<step>", StringComparison.Ordinal));
        Assert.DoesNotContain("TorchSharp.torch/Tensor::add_(TorchSharp.torch/Tensor,TorchSharp.Scalar)", hazards.Keys);
        Assert.DoesNotContain("TorchSharp.torch/Tensor::mul(TorchSharp.torch/Tensor)", hazards.Keys);

        // And this assembly's own fixture, written the natural way, is caught.
        var fixture = ScalarHazardsIn(typeof(NativeLifetimeTests).Assembly.Location).Where(h => h.Contains(nameof(WrittenTheNaturalWay), StringComparison.Ordinal)).ToList();
        Assert.Equal(3, fixture.Count);
        Assert.Contains(fixture, h => h.Contains("::add_(TorchSharp.torch/Tensor)", StringComparison.Ordinal));
        Assert.Contains(fixture, h => h.Contains(ImplicitScalar + "Double)", StringComparison.Ordinal));
        Assert.Contains(fixture, h => h.Contains("::square()", StringComparison.Ordinal));
    }

    private static void WrittenTheNaturalWay(Tensor a, Tensor b)
    {
        a.add_(b);
        a.mul_(0.5);
        using var squared = b.square();
    }

    [Theory]
    [InlineData(0.0, 0.0, 0.0, false, false)]
    [InlineData(0.9, 0.0, 0.0, false, false)]
    [InlineData(0.9, 0.1, 1e-3, false, false)]
    [InlineData(0.5, 0.0, 1e-2, true, false)]
    [InlineData(0.9, 0.0, 0.0, false, true)]
    public void GcSafeSgd_takes_the_same_steps_as_TorchSharps_SGD(double momentum, double dampening, double weightDecay, bool nesterov, bool maximize)
    {
        var (reference, referenceModel) = Build(p => optim.SGD(p, 0.05, momentum, dampening, weightDecay, nesterov, maximize));
        var (safe, safeModel) = Build(p => new GcSafeSgd(p, 0.05, momentum, dampening, weightDecay, nesterov, maximize));
        TrainSideBySide(reference, referenceModel, safe, safeModel, "SGD");
    }

    [Fact]
    public void GcSafeSgd_follows_parameter_groups_and_a_learning_rate_scheduler_as_SGD_does()
    {
        IEnumerable<SGD.ParamGroup> Groups(nn.Module<Tensor, Tensor> model)
        {
            var parameters = model.parameters().ToList();
            return [new SGD.ParamGroup(parameters.Take(2), lr: 0.1, momentum: 0.5), new SGD.ParamGroup(parameters.Skip(2), lr: 0.02, momentum: 0.9, weight_decay: 1e-3)];
        }

        var (reference, referenceModel) = Build(_ => null!);
        reference = new SGD(Groups(referenceModel), 0.05);
        var (safe, safeModel) = Build(_ => null!);
        safe = new GcSafeSgd(Groups(safeModel), 0.05);
        var schedulers = new[] { optim.lr_scheduler.StepLR(reference, 3, 0.5), optim.lr_scheduler.StepLR(safe, 3, 0.5) };
        TrainSideBySide(reference, referenceModel, safe, safeModel, "SGD", afterStep: () => { foreach (var s in schedulers) s.step(); });
        Assert.Equal(reference.ParamGroups.Select(g => g.LearningRate), safe.ParamGroups.Select(g => g.LearningRate));
        Assert.True(safe.ParamGroups.First().LearningRate < 0.1, "the scheduler did not lower the learning rate");
    }

    [Theory]
    [InlineData(false, 0.0, false, false)]
    [InlineData(false, 1e-2, false, false)]
    [InlineData(false, 1e-2, true, false)]
    [InlineData(false, 0.0, false, true)]
    [InlineData(true, 0.0, false, false)]
    [InlineData(true, 5e-2, false, false)]
    [InlineData(true, 5e-2, true, true)]
    public void GcSafeAdam_and_GcSafeAdamW_take_the_same_steps_as_TorchSharps(bool decoupled, double weightDecay, bool amsgrad, bool maximize)
    {
        var (reference, referenceModel) = Build(p => decoupled
            ? optim.AdamW(p, 0.01, 0.8, 0.95, 1e-6, weightDecay, amsgrad, maximize)
            : optim.Adam(p, 0.01, 0.8, 0.95, 1e-6, weightDecay, amsgrad, maximize));
        var (safe, safeModel) = Build(p => decoupled
            ? new GcSafeAdamW(p, 0.01, 0.8, 0.95, 1e-6, weightDecay, amsgrad, maximize)
            : new GcSafeAdam(p, 0.01, 0.8, 0.95, 1e-6, weightDecay, amsgrad, maximize));
        TrainSideBySide(reference, referenceModel, safe, safeModel, decoupled ? "AdamW" : "Adam");
    }

    private static void TrainSideBySide(optim.Optimizer reference, nn.Module<Tensor, Tensor> referenceModel, optim.Optimizer safe, nn.Module<Tensor, Tensor> safeModel, string name, Action? afterStep = null)
    {
        var generator = new Generator(11);
        for (int step = 0; step < 12; step++)
        {
            using var scope = torch.NewDisposeScope();
            var x = torch.randn([8, 6], generator: generator);
            var y = torch.randint(0, 3, [8], generator: generator);
            foreach (var (optimizer, model) in new[] { (reference, referenceModel), (safe, safeModel) })
            {
                optimizer.zero_grad();
                nn.functional.cross_entropy(model.call(x), y).backward();
                optimizer.step();
            }

            afterStep?.Invoke();
            foreach (var (expected, actual) in referenceModel.parameters().Zip(safeModel.parameters()))
                Assert.True(Identical(expected, actual), $"step {step}: the parameters differ from torch.optim.{name}'s");
        }

        Assert.False(referenceModel.parameters().Zip(Build(_ => null!).Model.parameters()).All(p => Identical(p.First, p.Second)), "training did not move the parameters");
    }

    /// <summary>Bit for bit: the same values in the same order.</summary>
    private static bool Identical(Tensor a, Tensor b) =>
        a.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits).SequenceEqual(b.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits));

    private static (optim.Optimizer Optimizer, nn.Module<Tensor, Tensor> Model) Build(Func<IEnumerable<Parameter>, optim.Optimizer> optimizer)
    {
        torch.manual_seed(5);
        var model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3));
        return (optimizer(model.parameters()), model);
    }
}

/// <summary>
/// A temporary tensor has the same race as a scalar (a tensor passed as an argument outside a dispose scope crashed a
/// trial with SIGSEGV): TrainingProbes makes every tensor inside a dispose scope, which holds it until the scope ends.
/// TorchSharp counts, per thread, the tensors made outside any scope.
/// </summary>
public sealed class DisposeScopeCoverageTests
{
    [Fact]
    public void Steps_and_windows_make_no_tensor_outside_a_dispose_scope_on_either_thread()
    {
        torch.manual_seed(2);
        var model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3));
        var optimizer = new GcSafeSgd(model.parameters(), 0.1, momentum: 0.5);
        static Tensor Loss(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);
        var fixedPoint = new FixedPointProbe(new FixedPointOptions { Loss = Loss, WindowSize = 3, Every = 2, PowerIterations = 3, TraceSamples = 2 });
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            Loss = Loss, WindowSize = 3, Interval = 4, Output = null, OverheadBudget = null,
            Geometries = Geometry.Euclidean | Geometry.Fisher | Geometry.Adaptive, Probes = [fixedPoint],
        }, optimizer);
        var generator = new Generator(3);
        long OutsideOnWorker() => session.Worker.Read(() => DisposeScopeManager.Statistics.TensorStatistics.CreatedOutsideScopeCount);
        // The count does see a tensor made outside a scope, on this thread and on the worker.
        long control = DisposeScopeManager.Statistics.TensorStatistics.CreatedOutsideScopeCount;
        torch.zeros(1).Dispose();
        Assert.Equal(control + 1, DisposeScopeManager.Statistics.TensorStatistics.CreatedOutsideScopeCount);
        long workerControl = OutsideOnWorker();
        session.Worker.Read(() => { torch.zeros(1).Dispose(); return 0; });
        Assert.Equal(workerControl + 1, OutsideOnWorker());

        long trainingBefore = 0, trainingDuring = 0, workerBefore = OutsideOnWorker();
        for (int step = 0; step < 40; step++)
        {
            Tensor x, y, loss;
            using (torch.NewDisposeScope())   // the trainer's tensors; the probe is called after this scope has ended
            {
                x = torch.randn([10, 6], generator: generator).DetachFromDisposeScope();
                y = torch.randint(0, 3, [10], generator: generator).DetachFromDisposeScope();
                optimizer.zero_grad();
                loss = Loss(model.call(x), y).DetachFromDisposeScope();
                loss.backward();
            }

            // No scope is open: whatever the probe's calls make outside a scope of their own is counted.
            long before = DisposeScopeManager.Statistics.TensorStatistics.CreatedOutsideScopeCount;
            session.Step(loss, x, y);
            trainingDuring += DisposeScopeManager.Statistics.TensorStatistics.CreatedOutsideScopeCount - before;
            x.Dispose();
            y.Dispose();
            loss.Dispose();
            optimizer.step();
        }

        long flushBefore = DisposeScopeManager.Statistics.TensorStatistics.CreatedOutsideScopeCount;
        session.Flush();
        trainingDuring += DisposeScopeManager.Statistics.TensorStatistics.CreatedOutsideScopeCount - flushBefore;
        Assert.True(fixedPoint.Runs >= 3, $"{fixedPoint.Runs} fixed-point windows ran");
        Assert.Equal(trainingBefore, trainingDuring);
        Assert.Equal(workerBefore, OutsideOnWorker());
    }
}

using TrainingProbes.Session;
using TorchSharp;
using static TorchSharp.torch;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Session;

public sealed class SessionTests
{
    /// <summary>Trains on the default task (generator seeded <paramref name="seed"/>) with the session seeing every step, then flushes it.</summary>
    private static void Train(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, ProbeSession session, int steps, int seed = 3, Action? beforeEachStep = null)
    {
        Trainer.Train(model, optimizer, steps, seed, (loss, x, y) =>
        {
            beforeEachStep?.Invoke();
            session.Step(loss, x, y);
        });
        session.Flush();   // the last window's statistics may still be on the worker
    }

    [Fact]
    public void Windows_close_every_interval_and_history_is_bounded()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 3, Interval = 5, HistoryCapacity = 4, Output = null, OverheadBudget = null, Loss = CrossEntropy,
        }, optimizer);
        Train(model, optimizer, session, 42);

        // One-step windows at steps 0, 5, ..., 40 (closed when 1, 6, ..., 41 steps were counted): 9 windows, of which the
        // last 4 are kept.
        Assert.Equal(42, session.StepCount);
        session.Flush();
        var history = session.History;
        Assert.Equal(4, history.Count);
        Assert.Equal([5, 6, 7, 8], history.Select(s => s.Window));
        Assert.Equal([26L, 31L, 36L, 41L], history.Select(s => s.Step));
        session.Flush();
        Assert.Same(history[^1], session.Latest);
        Assert.Equal(0.05, session.Latest!.Get(Indicators.LearningRate), 12);
        session.Flush();
        Assert.Contains("capture", session.Latest.ProbeSeconds.Keys);
        Assert.Equal(0, session.FailureCount);
    }

    [Fact]
    public void Overhead_is_the_probes_time_over_the_training_time_between_windows_on_the_sessions_clock()
    {
        // A clock that moves only when told: 10 ms of training before each step, 3 ms of probe work in each window (a
        // probe advances the clock when the window closes). Windows every 5 steps, statistics inline: each interval
        // after the first has 5 x 10 ms of training and 3 ms of probes, so probe.overhead is 3 / 50 exactly.
        var clock = new ManualClock();
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 3, Interval = 5, Output = null, OverheadBudget = null, BackgroundStatistics = false, Loss = CrossEntropy,
            TimeProvider = clock, Probes = [new ClockProbe(clock, TimeSpan.FromMilliseconds(3))],
        }, optimizer);
        var overheads = new List<double>();
        session.WindowClosed += (_, snapshot) => overheads.Add(snapshot.Get(Indicators.ProbeOverhead));
        Train(model, optimizer, session, 31, beforeEachStep: () => clock.Advance(TimeSpan.FromMilliseconds(10)));
        Assert.Equal(7, overheads.Count);   // windows at steps 0, 5, ..., 30
        foreach (double overhead in overheads.Skip(1)) Assert.Equal(3.0 / 50.0, overhead, 12);
    }

    private sealed class ManualClock : TimeProvider
    {
        private long _ticks = 1_000_000;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => Interlocked.Read(ref _ticks);

        public void Advance(TimeSpan by) => Interlocked.Add(ref _ticks, by.Ticks);
    }

    private sealed class ClockProbe(ManualClock clock, TimeSpan work) : TrainingProbe
    {
        public override string Name => "clock";

        public override void OnWindowClosed(ProbeWindowContext window) => clock.Advance(work);
    }

    private sealed class ThrowingProbe : TrainingProbe
    {
        public override string Name => "throwing";
        public override void OnStep(ProbeStepContext step) => throw new InvalidOperationException("step");
        public override void OnWindowClosed(ProbeWindowContext window) => throw new InvalidOperationException("window");
    }

    [Fact]
    public void Training_with_probes_gives_bit_identical_parameters()
    {
        var (watched, watchedOptimizer) = SmallModel(21);
        var (plain, plainOptimizer) = SmallModel(21);
        using (var session = ProbeSession.Attach(watched,
            new ProbeOptions { WindowSize = 4, Interval = 5, Output = null, OverheadBudget = null, Probes = [new ThrowingProbe()], Strict = false, Loss = CrossEntropy }, watchedOptimizer))
        {
            Train(watched, watchedOptimizer, session, 40);
            Assert.True(session.FailureCount >= 40);
            session.Flush();
            Assert.Equal(8, session.History.Count);
        }

        Trainer.Train(plain, plainOptimizer, 40, seed: 3);

        foreach (var ((name, a), (_, b)) in watched.named_parameters().Zip(plain.named_parameters()))
            Assert.True(a.allclose(b, rtol: 0, atol: 0), $"parameter {name} differs after training with probes");
    }

    [Fact]
    public void Parameter_filter_selects_by_name_and_frozen_parameters_are_skipped()
    {
        var (model, optimizer) = SmallModel();
        var first = model.named_parameters().First();
        first.parameter.requires_grad = false;
        using var session = ProbeSession.Attach(model,
            new ProbeOptions { WindowSize = 2, Interval = 2, Output = null, OverheadBudget = null, ParameterFilter = name => name != "2.bias" });

        Assert.Equal(["0.bias", "2.weight"], session.ParameterNames);
    }

    [Fact]
    public void A_long_run_holds_a_constant_number_of_live_tensors()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 4, Interval = 6, Output = null, OverheadBudget = null, Loss = CrossEntropy }, optimizer);
        Train(model, optimizer, session, 30);
        session.Flush();
        // Live tensors on the training thread and on the statistics worker together: a tensor the training thread
        // queues for the window's transfer is disposed on the worker after it.
        long Live() => DisposeScopeManager.Statistics.ThreadTotalLiveCount + session.Worker.Read(() => DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        long before = Live();
        Train(model, optimizer, session, 300, seed: 4);
        session.Flush();
        long after = Live();

        Assert.Equal(before, after);
        session.Flush();
        Assert.Equal(55, session.History.Count);
    }

    [Fact]
    public void Steps_outside_a_window_allocate_nothing()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 2, Interval = 1000, Output = null, OverheadBudget = null }, optimizer);
        using var scope = torch.NewDisposeScope();
        using var loss = torch.tensor(1.0f);
        for (int i = 0; i < 10; i++) session.Step(loss);   // warm-up, window 0 closes at step 0
        session.Flush();
        Assert.Single(session.History);

        long allocated = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 500; i++) session.Step(loss);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - allocated);
    }

    [Fact]
    public void One_line_integration_creates_one_session_per_model_and_respects_attach()
    {
        var (model, optimizer) = SmallModel();
        var (other, _) = SmallModel(2);
        using var attached = ProbeSession.Attach(other, new ProbeOptions { WindowSize = 2, Interval = 2, Output = null, OverheadBudget = null });

        var implicitSession = model.Probe();
        try
        {
            Assert.Same(implicitSession, model.Probe());
            Assert.Same(implicitSession, ProbeSession.Get(model));
            Assert.Equal(2, implicitSession.StepCount);
            Assert.Same(attached, other.Probe());
            Assert.Throws<InvalidOperationException>(() => ProbeSession.Attach(other));
        }
        finally
        {
            implicitSession.Dispose();
        }

        Assert.Null(ProbeSession.Get(model));
    }

    [Fact]
    public void A_non_scalar_loss_is_rejected_with_a_clear_message()
    {
        var (model, _) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions { Output = null, OverheadBudget = null });
        using var loss = torch.ones(4);
        var error = Assert.Throws<ArgumentException>(() => session.Step(loss));
        Assert.Contains(".mean()", error.Message);
    }

    [Fact]
    public void Output_shows_each_value_with_its_standard_error()
    {
        var (model, optimizer) = SmallModel();
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 6, Interval = 8, Output = output, OverheadBudget = null, Loss = CrossEntropy,
            SmoothingWindows = 0,   // the window's own values (ConsoleSummaryTests has the smoothed ones)
        }, optimizer);
        Train(model, optimizer, session, 8);

        session.Flush();
        var line = output.ToString().Trim();
        double cosine = session.Latest!.Get(Indicators.Cosine, Geometry.Euclidean);
        double error = session.Latest.Get(Indicators.Cosine + Indicators.StandardErrorSuffix, Geometry.Euclidean);
        Assert.Contains($"euc cos {cosine.ToString("G3", System.Globalization.CultureInfo.InvariantCulture)}±{error.ToString("G2", System.Globalization.CultureInfo.InvariantCulture)}", line);
        Assert.Matches(@" gsnr [\d.e-]+±[\d.e-]+ ", line);
    }

    [Fact]
    public void Output_gets_a_legend_then_one_line_per_window()
    {
        var (model, optimizer) = SmallModel();
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 2, Interval = 4, Output = output, OverheadBudget = null, Loss = CrossEntropy,
            TimeProvider = new SteppingClock(ConsoleView.MinimumGap),   // every window shown
        }, optimizer);
        Train(model, optimizer, session, 8);
        session.Flush();

        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        Assert.StartsWith("[probes] gsnr, cos, regret (relative) and kappa", lines[0]);
        lines = lines[1..];
        // K = 2: GSNR needs K >= 4, so it is left out rather than printed as NaN; the cosine carries a jackknife error
        // only from K = 3 on, so none here either.
        // The first window has no drift (it needs the previous window's theta); the step family is off.
        Assert.Matches(@"^\[probes\] step +\d+ loss [\d.]+ \| euc cos [\d.e-]+ regret .*$", lines[0]);
        Assert.Matches(@"^\[probes\] step +\d+ loss [\d.]+ drift [\d.e-]+ \| euc cos [\d.e-]+ regret .*$", lines[1]);
        Assert.All(lines, line => Assert.DoesNotContain("step cos", line));
    }
}

public sealed class OptionsFromEnvironmentTests
{
    [Fact]
    public void Variables_override_defaults()
    {
        var values = new Dictionary<string, string>
        {
            ["TRAININGPROBES_WINDOW_SIZE"] = "4",
            ["TRAININGPROBES_INTERVAL"] = "40",
            ["TRAININGPROBES_GEOMETRIES"] = "euclidean, Fisher",
            ["TRAININGPROBES_RUN_ID"] = "run-7",
            ["TRAININGPROBES_OUTPUT"] = "none",
        };
        var options = ProbeOptions.FromEnvironment(name => values.GetValueOrDefault(name));
        Assert.Equal(4, options.WindowSize);
        Assert.Equal(40, options.Interval);
        Assert.Equal(Geometry.Euclidean | Geometry.Fisher, options.Geometries);
        Assert.Equal("run-7", options.RunId);
        Assert.Null(options.Output);
    }

    [Theory]
    [InlineData("TRAININGPROBES_WINDOW_SIZE", "eight", "TRAININGPROBES_WINDOW_SIZE")]
    [InlineData("TRAININGPROBES_WINDOW_SIZE", "1", "WindowSize")]
    [InlineData("TRAININGPROBES_GEOMETRIES", "euclid", "TRAININGPROBES_GEOMETRIES")]
    [InlineData("TRAININGPROBES_OUTPUT", "file", "TRAININGPROBES_OUTPUT")]
    [InlineData("TRAININGPROBES_PROMETHEUS", "metrics", "TRAININGPROBES_PROMETHEUS")]
    [InlineData("TRAININGPROBES_PROMETHEUS", "example.org:9464", "TRAININGPROBES_PROMETHEUS")]
    public void Unusable_values_name_the_variable_or_option(string variable, string value, string named)
    {
        var error = Assert.ThrowsAny<ArgumentException>(() => ProbeOptions.FromEnvironment(name => name == variable ? value : null));
        Assert.Contains(named, error.Message);
    }
}

public sealed class StepCostTests
{
    private sealed class WindowOnlyProbe : TrainingProbe
    {
        public override string Name => "window_only";
        public override void OnWindowClosed(ProbeWindowContext window) => window.Report("window_only.value", 1.0);
    }

    private sealed class EveryStepProbe : TrainingProbe
    {
        public int Calls { get; private set; }
        public override string Name => "every_step";
        public override void OnStep(ProbeStepContext step) => Calls++;
    }

    [Fact]
    public void A_user_probe_without_OnStep_keeps_steps_outside_windows_free_and_one_with_it_sees_every_step()
    {
        torch.manual_seed(2);
        var model = nn.Linear(3, 2);
        var everyStep = new EveryStepProbe();
        using var session = ProbeSession.Attach(model,
            new ProbeOptions { WindowSize = 2, Interval = 1000, Output = null, OverheadBudget = null, Probes = [new WindowOnlyProbe()] });
        var other = nn.Linear(3, 2);
        using var observed = ProbeSession.Attach(other,
            new ProbeOptions { WindowSize = 2, Interval = 1000, Output = null, OverheadBudget = null, Probes = [everyStep] });
        using var scope = torch.NewDisposeScope();
        using var loss = torch.tensor(1.0f);
        for (int i = 0; i < 10; i++) session.Step(loss);
        // The first window (steps 0-1) may still be on the worker: its publication, at the first step after its job
        // ends, allocates (the snapshot), and on a loaded machine that can fall inside the steps measured below.
        session.Flush();

        long allocated = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 500; i++) session.Step(loss);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - allocated);
        session.Flush();
        Assert.Equal(1.0, session.Latest!.Get("window_only.value"));

        for (int i = 0; i < 50; i++) observed.Step(loss);
        Assert.Equal(50, everyStep.Calls);
    }
}

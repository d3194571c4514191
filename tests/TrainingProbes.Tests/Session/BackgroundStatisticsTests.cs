using TorchSharp;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Session;

/// <summary>
/// <see cref="ProbeOptions.BackgroundStatistics"/>: a window's statistics run on the session's worker while the
/// training thread goes on; they are the same numbers as computed inline, published in order on the training thread,
/// and the next window never starts before the previous one has been read.
/// </summary>
public sealed class BackgroundStatisticsTests
{
    private static List<ProbeSnapshot> Run(bool background, int steps)
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 7, OverheadBudget = null, Output = null, Loss = CrossEntropy, LayerMetrics = 2, BackgroundStatistics = background,
        }, optimizer);
        var generator = new Generator(3);
        Train(model, optimizer, steps, generator, (loss, x, y) => session.Step(loss, x, y));
        session.Flush();
        return [.. session.History];
    }

    [Fact]
    public void Background_windows_publish_the_same_values_as_inline_ones_in_order()
    {
        var inline = Run(background: false, steps: 60);
        var background = Run(background: true, steps: 60);
        Assert.Equal(9, inline.Count);
        Assert.Equal(inline.Select(s => (s.Window, s.Step)), background.Select(s => (s.Window, s.Step)));
        foreach (var (expected, actual) in inline.Zip(background))
        {
            // Everything but the timings (overhead, and the budget's interval, which here is fixed anyway).
            var want = expected.Values.Where(v => !v.Name.StartsWith("probe.", StringComparison.Ordinal)).ToList();
            var got = actual.Values.Where(v => !v.Name.StartsWith("probe.", StringComparison.Ordinal)).ToList();
            Assert.True(want.Count > 40, $"only {want.Count} values");
            Assert.Equal(want.Select(v => (v.Name, v.Geometry, v.Layer)), got.Select(v => (v.Name, v.Geometry, v.Layer)));
            Assert.Equal(want.Select(v => v.Value), got.Select(v => v.Value));   // bit for bit: the same arithmetic on another thread
        }
    }

    /// <summary>A probe whose deferred work waits for the test's signal, the way slow statistics would.</summary>
    private sealed class GatedProbe : TrainingProbe
    {
        public ManualResetEventSlim Gate { get; } = new(false);
        public int Started;
        public int Finished;
        public bool Throw;

        public override string Name => "gated";

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            int index = window.Window;
            window.Defer(() =>
            {
                Interlocked.Increment(ref Started);
                if (!Gate.Wait(TimeSpan.FromSeconds(30))) throw new TimeoutException("the test never opened the gate");
                Interlocked.Increment(ref Finished);
                if (Throw) throw new InvalidOperationException("deferred failure");
                window.Report("gated.window", index);
            });
        }
    }

    [Fact]
    public void The_training_thread_goes_on_while_the_statistics_run_and_waits_only_before_the_next_window()
    {
        var (model, optimizer) = SmallModel();
        var gated = new GatedProbe();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 3, Interval = 10, OverheadBudget = null, Output = null, Loss = CrossEntropy, Probes = [gated],
        }, optimizer);
        var generator = new Generator(3);
        Train(model, optimizer, 3, generator, (loss, x, y) => session.Step(loss, x, y));   // window 0 closes at step 2

        // Seven more steps (3 to 9) while the window's job is blocked: none of them waits for it, nothing is published.
        Train(model, optimizer, 7, generator, (loss, x, y) => session.Step(loss, x, y));
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref gated.Started) == 1, TimeSpan.FromSeconds(10)), "the window's job never started");
        Assert.Equal(0, Volatile.Read(ref gated.Finished));
        Assert.Null(session.Latest);

        // Step 10 would open window 1 over the buffers the job still reads: it waits, then publishes window 0 first.
        using var opener = new Timer(_ => gated.Gate.Set(), null, 200, Timeout.Infinite);
        Step(model, optimizer, generator, (loss, x, y) => session.Step(loss, x, y));   // step 10
        Assert.Equal(1, Volatile.Read(ref gated.Finished));
        Assert.NotNull(session.Latest);
        Assert.Equal(0, session.Latest!.Window);
        Assert.Equal(0.0, session.Latest.Get("gated.window"));
        Assert.True(session.Latest.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _));
    }

    [Fact]
    public void A_failing_background_job_is_counted_at_publication_and_training_goes_on()
    {
        var (model, optimizer) = SmallModel();
        var gated = new GatedProbe { Throw = true };
        gated.Gate.Set();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 3, Interval = 5, OverheadBudget = null, Output = null, Loss = CrossEntropy, Probes = [gated], Strict = false,
        }, optimizer);
        var generator = new Generator(3);
        Train(model, optimizer, 20, generator, (loss, x, y) => session.Step(loss, x, y));
        session.Flush();

        Assert.Equal(4, session.History.Count);
        Assert.Equal(4, session.FailureCount);
        Assert.All(session.History, s => Assert.False(s.TryGetValue("gated.window", Geometry.None, out _)));
        Assert.All(session.History, s => Assert.True(s.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _)));   // the other probes' values are there
    }

    [Fact]
    public void A_stop_rule_fires_once_the_window_is_published_within_a_few_steps_of_its_close()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 2, Interval = 5, OverheadBudget = null, Output = null, Stopping = [StoppingRule.Parse("step.gradient.cosine[euclidean] < 2 for 3")],
            StepStatistics = true,
        }, optimizer);
        var generator = new Generator(4);
        int steps = 0;
        for (; steps < 100; steps++)
        {
            Step(model, optimizer, generator, (loss, x, y) => session.Step(loss, x, y));
            if (session.ShouldStop) break;
        }

        // The third window closes at step 11; its snapshot is published at a later step call, at the latest when the
        // fourth window opens (step 15).
        Assert.True(session.ShouldStop);
        Assert.InRange(steps, 12, 15);
        Assert.Equal(11, session.Latest!.Step - 1);
    }

    /// <summary>Reports a float64 tensor it keeps, then overwrites it on the next steps, as a probe of its own state may.</summary>
    private sealed class ReusedTensorProbe : TrainingProbe
    {
        private readonly Tensor _value = torch.zeros(1, dtype: ScalarType.Float64).DetachFromDisposeScope();

        public override string Name => "reused";

        public override void OnStep(ProbeStepContext step) => _value.fill_(-1.0);

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            _value.fill_((double)window.Window);
            window.Report("reused.window", _value);
        }
    }

    [Fact]
    public void A_reported_tensor_is_read_as_it_was_when_reported_even_if_the_probe_changes_it_before_the_worker_reads_it()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 3, Interval = 4, OverheadBudget = null, Output = null, Loss = CrossEntropy, Probes = [new ReusedTensorProbe()],
        }, optimizer);
        var generator = new Generator(3);
        Train(model, optimizer, 24, generator, (loss, x, y) => session.Step(loss, x, y));
        session.Flush();
        Assert.Equal(6, session.History.Count);
        Assert.All(session.History, s => Assert.Equal(s.Window, s.Get("reused.window")));
    }

    [Fact]
    public void A_session_whose_rules_keep_weights_publishes_each_window_at_its_own_step()
    {
        // The weights a checkpoint or best-weights rule keeps must be the window's: such a session runs inline.
        var (model, optimizer) = SmallModel();
        var early = new EarlyStopping(StepNames.Step(Indicators.GradientNorm), StoppingMode.Min) { Geometry = Geometry.Euclidean, RestoreBestWeights = true, Patience = 100 };
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 3, Interval = 5, OverheadBudget = null, Output = null, Stopping = [early], StepStatistics = true,
        }, optimizer);
        var generator = new Generator(3);
        for (int i = 0; i < 13; i++)
        {
            Step(model, optimizer, generator, (loss, x, y) => session.Step(loss, x, y));
            int closed = (i + 1 + 2) / 5;   // windows close at steps 2, 7, 12
            Assert.Equal(closed, session.History.Count);
        }

        Assert.NotNull(session.BestWeights(early));
    }
}

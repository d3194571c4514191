using TorchSharp;
using TrainingProbes.Session;
using TrainingProbes.Stopping;
using TrainingProbes.Tests.Telemetry;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Session;

/// <summary>
/// What a session does with the misuses and edge cases an independent fault harness found (issue 25): no value of an
/// earlier window shown as current, a non-finite loss seen at its step in every float dtype, a second call for one
/// optimizer step refused, two threads refused with a message, errors that name what to fix.
/// </summary>
public sealed class ReliabilityTests
{
    [Fact]
    public void Windows_that_lose_their_batch_list_a_failure_and_their_gradient_values_leave_the_gauges()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 5, OverheadBudget = null, Output = null, Loss = CrossEntropy, RunId = "stale-gauges", Strict = false,
        }, optimizer);
        var generator = new Generator(3);
        Train(model, optimizer, 20, generator, (loss, x, y) => session.Step(loss, x, y));
        session.Flush();
        Assert.Contains(session.CurrentValues, v => v.Name == Indicators.Cosine);

        // An evaluation phase, say, that passes only the loss: the window waits 100 steps for a batch, then closes without.
        Train(model, optimizer, 130, generator, (loss, _, _) => session.Step(loss));
        session.Flush();

        var last = session.History[^1];
        Assert.Contains(last.Failures, f => f.Probe == "gradient" && f.Reason == "missing_batch");
        Assert.False(last.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _));
        Assert.DoesNotContain(session.CurrentValues, v => v.Name.StartsWith("gradient.cosine", StringComparison.Ordinal));
        Assert.DoesNotContain(MeterReader.Collect(), m => m.RunId == "stale-gauges" && m.Instrument == "trainingprobes.gradient.cosine");
        Assert.Contains(session.CurrentValues, v => v.Name == Indicators.Loss);   // what the window has is current
    }

    [Theory]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void A_non_finite_loss_between_windows_fires_its_rule_at_that_step_in_every_float_dtype(ScalarType dtype)
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 50, OverheadBudget = null, Output = null, Stopping = [StoppingRule.Parse("training.loss is not finite")],
        }, optimizer);
        for (int step = 0; step < 20; step++)
        {
            using var loss = torch.tensor(step == 13 ? float.NaN : 1.0f).to(dtype);
            session.Step(loss);
            Assert.Equal(step >= 13, session.ShouldStop);
        }
    }

    [Fact]
    public void A_non_finite_loss_at_a_window_step_fires_at_that_step_not_when_the_window_is_published()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 5, OverheadBudget = null, Output = null, Loss = CrossEntropy,
            Stopping = [StoppingRule.Parse("training.loss is not finite")],
        }, optimizer);
        var generator = new Generator(3);
        Train(model, optimizer, 10, generator, (loss, x, y) => session.Step(loss, x, y));
        // Step 10 closes a window (Interval 5): its statistics run on the worker, but the NaN is seen now.
        Step(model, optimizer, generator, (_, x, y) =>
        {
            using var nan = torch.tensor(float.NaN);
            session.Step(nan, x, y);
        });
        Assert.True(session.ShouldStop, "a NaN loss at a window's step waited for the window's statistics");
    }

    [Fact]
    public void A_second_call_with_the_same_loss_is_refused_counted_and_changes_nothing()
    {
        IReadOnlyList<ProbeSnapshot> Run(bool twice, out ProbeSession session)
        {
            var (model, optimizer) = SmallModel();
            session = ProbeSession.Attach(model, new ProbeOptions
            {
                WindowSize = 4, Interval = 5, OverheadBudget = null, Output = null, Loss = CrossEntropy, BackgroundStatistics = false, Strict = false,
            }, optimizer);
            var generator = new Generator(3);
            var s = session;
            for (int step = 0; step < 30; step++)
                Step(model, optimizer, generator, (loss, x, y) =>
                {
                    s.Step(loss, x, y);
                    if (twice) s.Step(loss, x, y);
                });
            session.Flush();
            return session.History;
        }

        var once = Run(twice: false, out var single);
        var doubled = Run(twice: true, out var probedTwice);
        using (single)
        using (probedTwice)
        {
            Assert.Equal(30, probedTwice.StepCount);
            Assert.Equal(once.Select(s => s.Step), doubled.Select(s => s.Step));
            for (int w = 0; w < once.Count; w++)
                Assert.Equal(once[w].Get(Indicators.Cosine, Geometry.Euclidean), doubled[w].Get(Indicators.Cosine, Geometry.Euclidean));
            Assert.Equal(30, probedTwice.FailureCount);
            Assert.All(doubled.SelectMany(s => s.Failures), f => Assert.Equal(("session", "probed_twice"), (f.Probe, f.Reason)));
        }
    }

    [Fact]
    public void Two_threads_stepping_one_session_get_a_message_that_says_so_and_no_internal_exception()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 2, Interval = 2, OverheadBudget = null, Output = null,
        }, optimizer);
        int accepted = 0, refused = 0;
        var unexpected = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
        using var go = new Barrier(2);
        void Loop()
        {
            go.SignalAndWait();
            for (int i = 0; i < 3000; i++)
            {
                using var loss = torch.tensor(1.0f);
                try
                {
                    session.Step(loss);
                    Interlocked.Increment(ref accepted);
                }
                catch (InvalidOperationException ex) when (ex.Message.Contains("another thread was inside Step", StringComparison.Ordinal))
                {
                    Interlocked.Increment(ref refused);
                }
                catch (Exception ex)
                {
                    unexpected.Enqueue(ex);
                }
            }
        }

        var threads = new[] { new Thread(Loop), new Thread(Loop) };
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();

        Assert.Empty(unexpected);
        Assert.Equal(6000, accepted + refused);
        Assert.Equal(accepted, session.StepCount);   // no step lost, none counted twice
        Assert.Equal(0, session.FailureCount);
    }

    [Fact]
    public void A_disposed_loss_is_refused_with_what_to_do()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions { Output = null }, optimizer);
        var loss = torch.tensor(1.0f);
        loss.Dispose();
        var error = Assert.Throws<ArgumentException>(() => session.Step(loss));
        Assert.Contains("already disposed", error.Message);
        Assert.Contains("inside the scope of the step", error.Message);
    }

    [Fact]
    public void A_parameter_filter_that_throws_is_named_with_the_parameter_it_threw_on()
    {
        var (model, optimizer) = SmallModel();
        var error = Assert.Throws<ProbeConfigurationException>(() => ProbeSession.Attach(model, new ProbeOptions
        {
            Output = null, ParameterFilter = name => int.Parse(name) > 0,
        }, optimizer));
        Assert.Contains("ProbeOptions.ParameterFilter", error.Message);
        Assert.Contains("'0.weight'", error.Message);
        Assert.IsType<FormatException>(error.InnerException);
    }

    [Theory]
    [InlineData("TRAININGPROBES_STORAGE", "sketch", "TRAININGPROBES_GEOMETRIES", "fisher")]
    [InlineData("TRAININGPROBES_STOP", "gradient.cosine[fisher] > 0.5 for 3", "TRAININGPROBES_GEOMETRIES", "euclidean")]
    [InlineData("TRAININGPROBES_LAYER_METRICS", "2", "TRAININGPROBES_STORAGE", "sketch")]
    public void Options_from_the_environment_that_conflict_name_their_variables(string first, string firstValue, string second, string secondValue)
    {
        var values = new Dictionary<string, string> { [first] = firstValue, [second] = secondValue, ["TRAININGPROBES_OUTPUT"] = "none" };
        var options = ProbeOptions.FromEnvironment(name => values.GetValueOrDefault(name));
        var (model, optimizer) = SmallModel();
        var error = Assert.ThrowsAny<ArgumentException>(() => ProbeSession.Attach(model, options, optimizer));
        Assert.Contains($"{first}='{firstValue}'", error.Message);
        Assert.Contains("change the variables", error.Message);
    }

    [Fact]
    public void The_first_panel_has_no_empty_overhead_before_the_next_window()
    {
        var options = new ProbeOptions { Output = null, RunId = "panel" };
        var snapshot = new ProbeSnapshot("panel", 11, 0, DateTimeOffset.UtcNow,
            [new IndicatorValue(Indicators.ProbeInterval, Geometry.None, "session", 200), new IndicatorValue(Indicators.ProbeOverheadTotal, Geometry.None, "session", double.NaN)]);
        var view = new ConsoleView(options, new StringWriter(), terminal: true, width: 100);
        string text = ConsoleView.RenderToString(view.Render(snapshot, [snapshot], stopped: false), 100);
        Assert.Contains("next window in 200 steps", text);
        Assert.DoesNotContain(", next window", text);
    }

    [Fact]
    public void A_parameter_replaced_in_a_step_window_fails_once_with_parameters_changed_not_with_each_capture()
    {
        var (model, optimizer) = SmallModel();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null, Loss = CrossEntropy, StepStatistics = true, Strict = false,
        }, optimizer);
        var generator = new Generator(3);
        Train(model, optimizer, 22, generator, (loss, x, y) => session.Step(loss, x, y));
        ((TorchSharp.Modules.Linear)((TorchSharp.Modules.Sequential)model)[0]).weight = new TorchSharp.Modules.Parameter(torch.randn([8, 5]));
        optimizer = new GcSafeSgd(model.parameters(), 0.05);   // the old one holds the replaced parameter
        Train(model, optimizer, 18, generator, (loss, x, y) => session.Step(loss, x, y));   // steps 22 to 39
        session.Flush();

        var failures = session.History.SelectMany(s => s.Failures).ToList();
        Assert.Contains(failures, f => f.Reason == "parameters_changed");
        Assert.DoesNotContain(failures, f => f.Probe == "capture");
    }
}

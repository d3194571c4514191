using TorchSharp;
using TrainingProbes.Checkpoints;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Session;

public sealed class StoppingSessionTests
{
    private static nn.Module<Tensor, Tensor> Model(int seed = 5)
    {
        torch.manual_seed(seed);
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2));
    }

    private static void TrainStep(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, ProbeSession session, Generator generator, out bool stop)
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn([16, 4], generator: generator);
        var y = torch.randint(0, 2, [16], generator: generator);
        optimizer.zero_grad();
        var loss = nn.functional.cross_entropy(model.call(x), y);
        loss.backward();
        stop = session.Step(loss, x, y).ShouldStop;
        if (!stop) optimizer.step();
    }

    private static Dictionary<string, Tensor> Copy(nn.Module model) =>
        model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().DetachFromDisposeScope());

    [Fact]
    public void Early_stopping_on_a_reported_value_stops_and_restores_the_weights_of_the_best_evaluation()
    {
        var model = Model();
        var optimizer = new GcSafeSgd(model.parameters(), 0.2);
        var rule = new EarlyStopping("val.loss") { Patience = 2, RestoreBestWeights = true };
        using var session = ProbeSession.Attach(model, new ProbeOptions { Output = null, OverheadBudget = null, Stopping = [rule] }, optimizer);
        var fired = new List<StoppingEventArgs>();
        session.RuleFired += (_, e) => fired.Add(e);

        // A scripted validation loss, reported every 10 steps; the best (0.5) comes at the third report.
        double[] validation = [1.0, 0.7, 0.5, 0.6, 0.55, 0.8, 0.9];
        var generator = new Generator(3);
        var atReport = new List<Dictionary<string, Tensor>>();
        int reports = 0;
        for (int step = 0; step < 200; step++)
        {
            TrainStep(model, optimizer, session, generator, out bool stop);
            if (stop) break;
            if (step % 10 == 9)
            {
                atReport.Add(Copy(model));
                session.Report("val.loss", validation[reports++]);
                if (session.ShouldStop) break;
            }
        }

        // 0.6 and 0.55 do not beat 0.5: patience 2 fires at the fifth report.
        Assert.True(session.ShouldStop);
        Assert.True(session.StopToken.IsCancellationRequested);
        Assert.Equal(5, reports);
        var firing = Assert.Single(fired);
        Assert.Equal(RuleAction.Stop, firing.Action);
        Assert.Equal(0.55, firing.Value);
        Assert.True(firing.RestoredBestWeights);
        Assert.Contains("val.loss", firing.Reason);
        Assert.Equal(30, session.BestWeights(rule)!.Step);   // steps seen when the best value was reported

        // The weights now are the ones at the third report, exactly; they differ from the ones at the last report.
        var now = model.state_dict();
        foreach (var (name, tensor) in atReport[2]) Assert.True(now[name].allclose(tensor, rtol: 0, atol: 0), $"{name} is not the best evaluation's");
        Assert.Contains(atReport[4], kv => !now[kv.Key].allclose(kv.Value, rtol: 0, atol: 0));
    }

    [Fact]
    public void A_text_rule_on_an_indicator_stops_and_a_warning_rule_only_warns()
    {
        var model = Model();
        var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        var stopRule = StoppingRule.Parse("step.gradient.cosine[euclidean] < 2 for 3");
        var warnRule = StoppingRule.Parse("training.loss > -1 -> warn");
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 2, Interval = 5, Output = output, OverheadBudget = null, Stopping = [stopRule, warnRule], StepStatistics = true,
            BackgroundStatistics = false,   // published at the window's last step: the stop is seen at that step exactly
        }, optimizer);
        var events = new List<StoppingEventArgs>();
        session.RuleFired += (_, e) => events.Add(e);

        var generator = new Generator(4);
        int steps = 0;
        for (; steps < 100; steps++)
        {
            TrainStep(model, optimizer, session, generator, out bool stop);
            if (stop) break;
        }

        // Windows close at steps 1, 6, 11 (zero-based): the third window makes the cosine rule hold three times.
        Assert.Equal(11, steps);
        Assert.True(session.ShouldStop);
        Assert.Equal([RuleAction.Warn, RuleAction.Stop], events.Select(e => e.Action).Distinct().ToArray());
        // The session decided on its own copy of the rule: the options' rule is as it was given.
        var fired = events.Single(e => e.Action == RuleAction.Stop).Rule;
        Assert.Equal(stopRule.Name, fired.Name);
        Assert.Same(session.Rules[0], fired);
        Assert.True(fired.Stopped);
        Assert.False(stopRule.Stopped);
        Assert.Contains("[probes] stop at step 12:", output.ToString());
        Assert.Contains("[probes] warning at step 2:", output.ToString());
    }

    [Fact]
    public void Two_sessions_sharing_options_count_and_decide_on_their_own_copies_of_a_rule()
    {
        // One options object, one stateful rule, two models: each session must see only its own reports.
        var rule = new EarlyStopping("val.loss") { Patience = 2 };
        var options = new ProbeOptions { WindowSize = 2, Interval = 5, Output = null, OverheadBudget = null, Stopping = [rule] };
        torch.manual_seed(1);
        using var first = ProbeSession.Attach(nn.Sequential(nn.Linear(4, 2)), options);
        using var second = ProbeSession.Attach(nn.Sequential(nn.Linear(4, 2)), options);

        foreach (double loss in new[] { 1.0, 0.9, 0.95, 0.97 }) first.Report("val.loss", loss);   // worse twice: stops
        second.Report("val.loss", 2.0);
        second.Report("val.loss", 1.5);

        var a = (EarlyStopping)first.Rules[0];
        var b = (EarlyStopping)second.Rules[0];
        Assert.NotSame(a, b);
        Assert.True(first.ShouldStop);
        Assert.False(second.ShouldStop);
        Assert.Equal(0.9, a.BestValue);
        Assert.Equal(1.5, b.BestValue);
        Assert.Equal(4, a.Evaluations);
        Assert.Equal(2, b.Evaluations);
        Assert.Null(rule.BestValue);   // the options' rule is as it was given
        Assert.Equal(0, rule.Evaluations);
    }

    [Fact]
    public void A_checkpoint_rule_writes_the_best_weights_to_a_file_that_loads_back()
    {
        string folder = Directory.CreateTempSubdirectory("trainingprobes-checkpoint-").FullName;
        try
        {
            string path = Path.Combine(folder, "best.pt");
            var model = Model();
            var optimizer = new GcSafeSgd(model.parameters(), 0.1);
            var rule = new EarlyStopping("val.accuracy") { Action = RuleAction.Checkpoint };
            using var session = ProbeSession.Attach(model, new ProbeOptions { Output = null, OverheadBudget = null, Stopping = [rule], CheckpointPath = path }, optimizer);
            var generator = new Generator(6);
            Dictionary<string, Tensor>? best = null;
            foreach (double accuracy in new[] { 0.5, 0.7, 0.6 })
            {
                for (int i = 0; i < 5; i++) TrainStep(model, optimizer, session, generator, out _);
                if (accuracy == 0.7) best = Copy(model);
                session.Report("val.accuracy", accuracy);
            }

            Assert.False(session.ShouldStop);
            var restored = Model(seed: 99);
            CheckpointFile.Load(restored, path);
            foreach (var (name, tensor) in restored.state_dict()) Assert.True(tensor.allclose(best![name], rtol: 0, atol: 0), name);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_resumed_run_continues_the_same_decision()
    {
        double[] values = [0.9, 0.8, 0.85, 0.82, 0.83, 0.84];
        int StopsAt(Func<ProbeSession, int, ProbeSession> resume)
        {
            var model = Model();
            var session = ProbeSession.Attach(model, new ProbeOptions { Output = null, Stopping = [new EarlyStopping("val.loss") { Patience = 3 }] });
            try
            {
                for (int i = 0; i < values.Length; i++)
                {
                    session = resume(session, i);
                    session.Report("val.loss", values[i]);
                    if (session.ShouldStop) return i;
                }
                return -1;
            }
            finally
            {
                session.Dispose();
            }
        }

        int uninterrupted = StopsAt((session, _) => session);
        int resumed = StopsAt((session, i) =>
        {
            if (i != 3) return session;
            string state = session.SaveStoppingState();
            var model = session.Model;
            session.Dispose();
            var next = ProbeSession.Attach(model, new ProbeOptions { Output = null, Stopping = [new EarlyStopping("val.loss") { Patience = 3 }] });
            next.RestoreStoppingState(state);
            return next;
        });

        Assert.Equal(4, uninterrupted);
        Assert.Equal(uninterrupted, resumed);
    }

    [Fact]
    public void Gradient_windows_are_exported_as_safetensors_with_one_K_by_shape_tensor_per_parameter()
    {
        string folder = Directory.CreateTempSubdirectory("trainingprobes-export-").FullName;
        try
        {
            var model = Model();
            var optimizer = new GcSafeSgd(model.parameters(), 0.1);
            // A folder that does not exist yet, two levels deep: the probe creates it, as every exporter does.
            string target = Path.Combine(folder, "runs", "first");
            var export = new GradientExportProbe(target, every: 2);
            using var session = ProbeSession.Attach(model, new ProbeOptions
            {
                WindowSize = 3, Interval = 4, Output = null, OverheadBudget = null, Probes = [export],
                Loss = (output, target) => nn.functional.cross_entropy(output, target),
            }, optimizer);
            Assert.True(Directory.Exists(target));
            var generator = new Generator(8);
            for (int i = 0; i < 16; i++) TrainStep(model, optimizer, session, generator, out _);

            Assert.Equal(["window-000000.safetensors", "window-000002.safetensors"], export.Files.Select(f => Path.GetFileName(f)!).ToArray());
            Assert.All(export.Files, f => Assert.Equal(target, Path.GetDirectoryName(f)));
            var bytes = File.ReadAllBytes(export.Files[1]);
            long headerLength = BitConverter.ToInt64(bytes, 0);
            using var header = System.Text.Json.JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
            var weight = header.RootElement.GetProperty("0.weight");
            Assert.Equal([3, 8, 4], weight.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray());
            Assert.Equal("F32", weight.GetProperty("dtype").GetString());
            Assert.Equal("2", header.RootElement.GetProperty("__metadata__").GetProperty("window").GetString());
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Gradient_export_into_a_path_that_is_a_file_fails_at_attach_naming_the_path()
    {
        string file = Path.GetTempFileName();
        try
        {
            var model = Model();
            var error = Assert.Throws<ProbeConfigurationException>(() =>
                ProbeSession.Attach(model, new ProbeOptions { Output = null, Probes = [new GradientExportProbe(file)] }));
            Assert.Contains(file, error.Message);
            Assert.Contains("is a file", error.Message);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void Stopping_rules_from_the_environment_report_parse_errors_with_the_variable_and_position()
    {
        var options = ProbeOptions.FromEnvironment(name => name == "TRAININGPROBES_STOP" ? "training.loss is not finite; regret.relative[fisher] > 0.9 for 5 -> warn" : null);
        Assert.Equal(2, options.Stopping.Count);
        Assert.Equal(RuleAction.Warn, options.Stopping[1].Action);

        var error = Assert.Throws<ArgumentException>(() => ProbeOptions.FromEnvironment(name => name == "TRAININGPROBES_STOP" ? "regret.relative > for 5" : null));
        Assert.Contains("TRAININGPROBES_STOP", error.Message);
        Assert.Contains("column", error.Message);
        Assert.Contains("number", error.Message);
    }
}

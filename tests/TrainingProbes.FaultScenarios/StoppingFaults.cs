using TorchSharp;
using TrainingProbes.Stopping;
using static TorchSharp.torch;

namespace TrainingProbes.FaultScenarios;

/// <summary>Faults around the stopping rules: losses between windows, unknown names, checkpoints, resuming.</summary>
internal static class StoppingFaults
{
    [Scenario("12.5: a NaN loss on a step between two windows, with the rule 'training.loss is not finite'")]
    private static void NanLossBetweenWindows()
    {
        var log = new LogCollector();
        var model = new Net(1);
        using var session = ProbeSession.Attach(model, Options.Small(log, stopping: [StoppingRule.Parse("training.loss is not finite")]));
        var trainer = new Trainer(model, session)
        {
            // Windows are steps 0-3, 10-13, ...: step 55 is between two of them.
            ReportedLoss = (step, loss) => step == 55 ? torch.tensor(float.NaN) : loss,
        };
        trainer.Run(0, 100);
        Check.That(session.ShouldStop, "a NaN loss between windows stops the run");
        Check.That(trainer.StepsRun == 56, $"the run stops at the step of the NaN loss (step 55); it ran {trainer.StepsRun} steps");
    }

    [Scenario("12.6: rules on names that are never published (a typo; a per-geometry value without its geometry; a reported name never reported)")]
    private static void RuleOnUnknownName()
    {
        // A per-geometry value without its geometry can never fire: refused at attach.
        try
        {
            using var _ = ProbeSession.Attach(new Net(1), Options.Small(new LogCollector(), stopping: [StoppingRule.Parse("regret.relative > 0.8 for 2 -> warn")]));
            throw new ScenarioFailedException("a rule on regret.relative without a geometry is accepted");
        }
        catch (ArgumentException ex)
        {
            Check.That(ex.Message.Contains("regret.relative[", StringComparison.Ordinal), "the refusal shows the name with a geometry: " + ex.Message);
        }

        // A typo: warned at attach, with the name it probably means; a name nothing publishes: reported after 10 windows.
        var log = new LogCollector();
        var model = new Net(1);
        var typo = StoppingRule.Parse("regret.relatve[fisher] > 0.8 for 2 -> warn");
        var neverReported = StoppingRule.Parse("val.acuracy < 0.5 -> warn");
        using (var session = ProbeSession.Attach(model, Options.Small(log, stopping: [typo, neverReported])))
        {
            new Trainer(model, session).Run(0, 120);
            var warnings = log.Warnings.ToList();
            Check.That(warnings.Any(w => w.Contains("regret.relatve", StringComparison.Ordinal) && w.Contains("regret.relative", StringComparison.Ordinal)),
                "a warning names the unknown monitor and the name it probably means; warnings: " + string.Join(" / ", warnings.Take(3)));
            Check.That(warnings.Any(w => w.Contains("val.acuracy", StringComparison.Ordinal)), "a warning names the monitor nothing published or reported in 10 windows");
        }

        // Strict: the typo throws at attach.
        var options = Options.Small(new LogCollector(), stopping: [StoppingRule.Parse("regret.relatve[fisher] > 0.8 for 2 -> warn")], strict: true);
        try
        {
            using var strict = ProbeSession.Attach(new Net(1), options);
            throw new ScenarioFailedException("with Strict = true a rule on a misspelt name is accepted");
        }
        catch (ArgumentException ex)
        {
            Check.That(ex.Message.Contains("regret.relatve", StringComparison.Ordinal), "the strict refusal names the monitor: " + ex.Message);
        }
    }

    [Scenario("12.7: the checkpoint path becomes a folder after the first checkpoint was written")]
    private static void CheckpointWriteFails()
    {
        var log = new LogCollector();
        var model = new Net(1);
        string folder = Directory.CreateTempSubdirectory("trainingprobes-fault-").FullName;
        try
        {
            string path = Path.Combine(folder, "best.pt");
            var keep = new EarlyStopping(Indicators.Loss) { Action = RuleAction.Checkpoint, Patience = 1000, Name = "keep" };
            var always = StoppingRule.Parse("training.loss > 0 -> warn");
            using var session = ProbeSession.Attach(model, Options.Small(log, stopping: [keep, always], checkpoint: path));
            int closed = 0;
            session.WindowClosed += (_, _) => closed++;
            var trainer = new Trainer(model, session, learningRate: 0.2)
            {
                AfterBackward = step =>
                {
                    if (step != 15) return;
                    Check.That(File.Exists(path), "the first window wrote a checkpoint");
                    File.Delete(path);
                    Directory.CreateDirectory(path);
                },
            };
            trainer.Run(0, 100);
            Check.That(trainer.StepsRun == 100, $"training ran {trainer.StepsRun} of 100 steps");
            Check.That(closed == 10, $"WindowClosed was raised for {closed} of 10 windows");
            var evaluated = session.Rules[1];   // the session's copy of `always`
            Check.That(evaluated.Name == always.Name && evaluated.Evaluations == 10, $"the rule after the checkpoint rule was evaluated in {evaluated.Evaluations} of 10 windows");
            Check.That(session.FailureCount > 0 && log.Warnings.Any(w => w.Contains("best.pt", StringComparison.Ordinal)),
                "the failed checkpoint write is counted and logged with its path");
            Check.That(session.History.Any(s => s.Failures.Any(f => f.Probe == "checkpoint")), "the snapshot of a window whose checkpoint failed says so");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Scenario("12.8: a run resumed with RestoreStoppingState in a new session (whose step counter starts at 0)")]
    private static void ResumeWithStoppingStateOnly()
    {
        var log = new LogCollector();
        StoppingRule Rule() => new EarlyStopping(Indicators.Cosine) { Geometry = Geometry.Euclidean, Patience = 3, Action = RuleAction.Warn, Name = "cos" };
        var first = new Net(1);
        string json;
        using (var before = ProbeSession.Attach(first, Options.Small(log, stopping: [Rule()])))
        {
            new Trainer(first, before).Run(0, 50);
            json = before.SaveStoppingState();
        }

        var second = new Net(1);
        using var resumed = ProbeSession.Attach(second, Options.Small(log, stopping: [Rule()]));
        try
        {
            resumed.RestoreStoppingState(json);
        }
        catch (ArgumentException ex)
        {
            // Refusing is acceptable only if the refusal says how to resume.
            Check.That(ex.Message.Contains("SaveState and RestoreState", StringComparison.Ordinal),
                "RestoreStoppingState refuses a state from a later step without saying how to resume: " + ex.Message);
            return;
        }

        new Trainer(second, resumed).Run(50, 100);
        Check.That(resumed.FailureCount == 0, "the resumed rules evaluate without failing: " + string.Join(" / ", log.Warnings.Take(2)));
    }

    [Scenario("12.8: restoring a stopping state whose second rule's state is invalid changes nothing")]
    private static void RestoreIsAllOrNothing()
    {
        var log = new LogCollector();
        var model = new Net(1);
        var a = new EarlyStopping(Indicators.Loss) { Patience = 5, Action = RuleAction.Warn, Name = "a" };
        var b = new EarlyStopping(Indicators.Loss) { Patience = 5, Action = RuleAction.Warn, Name = "b" };
        using var session = ProbeSession.Attach(model, Options.Small(log, stopping: [a, b]));
        new Trainer(model, session).Run(0, 30);
        string before = session.SaveStoppingState();
        // The same state with rule a's best value changed and rule b's wait made impossible (negative).
        var rules = System.Text.Json.Nodes.JsonNode.Parse(before)!.AsArray();
        rules[0]!["best_value"] = 12345.0;
        rules[1]!["wait"] = -7;
        try
        {
            session.RestoreStoppingState(rules.ToJsonString());
        }
        catch (Exception ex) when (ex is ArgumentException or FormatException)
        {
        }

        Check.That(session.SaveStoppingState() == before, "a restore that fails leaves every rule as it was; rule a's best value is now " + ((EarlyStopping)session.Rules[0]).BestValue);
    }
}

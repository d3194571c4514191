using TrainingProbes.Stopping;

namespace TrainingProbes.Tests.Stopping;

/// <summary>
/// <see cref="StoppingRule.SaveState"/> / <see cref="StoppingRule.RestoreState"/> through JSON: a run resumed at any
/// evaluation decides exactly as the uninterrupted run.
/// </summary>
public sealed class RuleStateTests
{
    private const double Nan = double.NaN;

    public static TheoryData<string, double[]> Scripts => new()
    {
        { "early_stopping(monitor=val.loss, patience=3, min_delta=0.01)", [1.0, 0.9, 0.95, 0.89, 0.895, 0.7, 0.71, 0.72, 0.73, 0.5] },
        { "early_stopping(monitor=val.loss, baseline=0.5, warmup_steps=300)", [Nan, 0.1, 0.6, 0.55, 0.4, 0.45, 0.46, 0.47] },
        { "early_stopping(monitor=val.acc, patience=2, check_finite=false) -> warn", [0.5, Nan, 0.4, 0.6, 0.6, 0.6, 0.6, 0.7] },
        { "early_stopping(monitor=regret.relative[fisher], stopping_threshold=0.1, divergence_threshold=1.5)", [1.0, 0.8, 0.9, 0.05, 0.3] },
        { "regret.relative[fisher] > 0.8 for 3", [0.9, 0.85, 0.7, 0.9, 0.95, 0.99, 0.1] },
        { "val.acc >= 0.9 for 2 -> checkpoint", [0.8, 0.9, 0.92, 0.91, 0.5, 0.95, 0.97, 0.96] },
        { "training.loss is not finite for 2 -> warn", [1.0, Nan, 2.0, Nan, Nan, Nan, 3.0, Nan, Nan] },
    };

    [Theory]
    [MemberData(nameof(Scripts))]
    public void Resuming_at_any_evaluation_gives_the_decisions_of_an_uninterrupted_run(string text, double[] values)
    {
        var uninterrupted = StoppingRule.Parse(text);
        var expected = RuleScript.Run(uninterrupted, values);
        Assert.Contains(expected, d => d.Fired); // the script exercises the firing path

        for (int split = 0; split <= values.Length; split++)
        {
            var first = StoppingRule.Parse(text);
            var before = RuleScript.Run(first, values.Take(split));
            string json = StoppingState.ToJson([first.SaveState()]);

            var resumed = StoppingRule.Parse(text);
            resumed.RestoreState(Assert.Single(StoppingState.FromJson(json)));
            var after = RuleScript.Run(resumed, values.Skip(split), firstIndex: split);

            Assert.Equal(expected, before.Concat(after).ToList());
            Assert.Equal(uninterrupted.SaveState(), resumed.SaveState());
        }
    }

    [Fact]
    public void States_round_trip_through_json()
    {
        var early = StoppingRule.Parse("early_stopping(monitor=val.loss, patience=1)");
        var threshold = StoppingRule.Parse("regret.relative[adaptive] < 0.2 for 2 -> checkpoint");
        var fresh = StoppingRule.Parse("training.loss is not finite");
        RuleScript.Run(early, [1.0, 0.5, 0.7]);
        RuleScript.Run(threshold, [0.3, 0.1, 0.15]);
        var states = new[] { early.SaveState(), threshold.SaveState(), fresh.SaveState() };

        string json = StoppingState.ToJson(states);
        var read = StoppingState.FromJson(json);

        Assert.Equal(states, read);
        Assert.Equal(StoppingState.ToJson(read), json);
        Assert.Contains("\"geometry\": \"adaptive\"", json);
        Assert.Contains("\"kind\": \"early_stopping\"", json);

        Assert.True(read[0].Stopped);
        Assert.Equal((0.5, 200L, 1, 3L, 300L), (read[0].BestValue!.Value, read[0].BestStep!.Value, read[0].Wait, read[0].Evaluations, read[0].LastStep!.Value));
        Assert.Equal(early.Name, read[0].Name);
        Assert.Equal((2, 200L, 0.15, 300L), (read[1].Consecutive, read[1].ConsecutiveSince!.Value, read[1].BestValue!.Value, read[1].BestStep!.Value));
        Assert.Null(read[2].LastStep);
    }

    [Fact]
    public void A_restored_stop_rule_stays_latched_with_its_reason()
    {
        var rule = StoppingRule.Parse("early_stopping(monitor=val.loss, patience=1)");
        var fired = RuleScript.Run(rule, [1.0, 2.0])[1];
        var resumed = StoppingRule.Parse(rule.Name);
        resumed.RestoreState(StoppingState.FromJson(StoppingState.ToJson([rule.SaveState()]))[0]);
        var later = resumed.Evaluate(0.1, 1000);
        Assert.True(resumed.Stopped);
        Assert.Equal((true, false, fired.Reason), (later.Fired, later.Improved, later.Reason));
    }

    public static TheoryData<string, string, string> Mismatches => new()
    {
        { "early_stopping(monitor=val.loss)", "val.loss > 1", "'threshold' state" },
        { "val.loss > 1", "early_stopping(monitor=val.loss)", "'early_stopping' state" },
        { "early_stopping(monitor=val.loss)", "early_stopping(monitor=train.loss)", "monitors train.loss" },
        { "regret.relative[fisher] > 0.8", "regret.relative[euclidean] > 0.8", "monitors regret.relative[euclidean]" },
    };

    [Theory]
    [MemberData(nameof(Mismatches))]
    public void A_state_from_another_rule_is_refused(string target, string source, string message)
    {
        var state = StoppingRule.Parse(source).SaveState();
        var rule = StoppingRule.Parse(target);
        var ex = Assert.Throws<ArgumentException>(() => rule.RestoreState(state));
        Assert.Contains(message, ex.Message);
        Assert.Contains(rule.Name, ex.Message);
    }

    [Fact]
    public void Impossible_states_are_refused()
    {
        var rule = StoppingRule.Parse("early_stopping(monitor=val.loss)");
        var state = rule.SaveState();
        Assert.Contains("negative", Assert.Throws<ArgumentException>(() => rule.RestoreState(state with { Wait = -1 })).Message);
        Assert.Contains("finite", Assert.Throws<ArgumentException>(() => rule.RestoreState(state with { BestValue = double.NaN, BestStep = 1 })).Message);
        Assert.Contains("without its step", Assert.Throws<ArgumentException>(() => rule.RestoreState(state with { BestValue = 1 })).Message);
        Assert.Contains("stop reason", Assert.Throws<ArgumentException>(() => rule.RestoreState(state with { Stopped = true })).Message);
        Assert.Contains("consecutive", Assert.Throws<ArgumentException>(() => rule.RestoreState(state with { Consecutive = 2, ConsecutiveSince = 5 })).Message);

        var threshold = StoppingRule.Parse("x > 1 for 3");
        Assert.Contains("wait", Assert.Throws<ArgumentException>(() => threshold.RestoreState(threshold.SaveState() with { Wait = 2 })).Message);
        Assert.Contains("first step", Assert.Throws<ArgumentException>(() => threshold.RestoreState(threshold.SaveState() with { Consecutive = 2 })).Message);
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("{\"kind\": \"threshold\"}")]
    [InlineData("[{\"kind\": \"threshold\"}]")]
    [InlineData("[null]")]
    [InlineData("null")]
    public void Malformed_json_is_a_format_error(string json)
    {
        var ex = Assert.Throws<FormatException>(() => StoppingState.FromJson(json));
        Assert.Contains("rule state", ex.Message);
    }
}

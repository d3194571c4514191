using TrainingProbes.Stopping;

namespace TrainingProbes.Tests.Stopping;

/// <summary>
/// <see cref="RiseRule"/>, a rule relative to the run itself: its text form, the running minimum it compares with
/// (counted from <see cref="RiseRule.After"/>, the minimum taken before the value), non-finite and non-positive
/// values, consecutive counting, and resuming from a saved state.
/// </summary>
public sealed class RiseRuleTests
{
    [Fact]
    public void The_text_form_parses_to_its_settings_and_prints_back()
    {
        var rule = Assert.IsType<RiseRule>(StoppingRule.Parse("gradient.noise_per_example.smoothed[fisher] rises 25% above its minimum after 200 for 2 -> warn"));
        Assert.Equal(("gradient.noise_per_example.smoothed", Geometry.Fisher, 0.25, 200L, 2, RuleAction.Warn),
            (rule.Monitor, rule.Geometry, rule.Rise, rule.After, rule.For, rule.Action));
        Assert.Equal("gradient.noise_per_example.smoothed[fisher] rises 25% above its minimum after 200 for 2 -> warn", rule.ToString());
        Assert.Equal("training.loss rises 10% above its minimum", StoppingRule.Parse("training.loss rises 10% above its minimum").ToString());
    }

    [Theory]
    [InlineData("x rises 25 above its minimum", "above", "'%' (the form is: <metric> rises 25% above its minimum [after <step>] [for <n>])")]
    [InlineData("x rises 0% above its minimum", "0", "a percentage above 0")]
    [InlineData("x rises 25% below its minimum", "below", "'above' (the form is: <metric> rises 25% above its minimum [after <step>] [for <n>])")]
    [InlineData("x rises 25% above its minimum after -3", "-3", "a step (an integer, 0 or more) after 'after'")]
    public void A_malformed_rise_names_what_was_expected(string text, string at, string expected)
    {
        var error = Assert.Throws<RuleParseException>(() => StoppingRule.Parse(text));
        Assert.Equal((text.IndexOf(at, StringComparison.Ordinal), expected), (error.Position, error.Expected));
    }

    [Fact]
    public void It_fires_when_the_value_stays_more_than_the_rise_above_the_minimum_before_it()
    {
        var rule = (RiseRule)StoppingRule.Parse("x rises 25% above its minimum after 200 for 2");
        var decisions = new (double Value, long Step)[]
        {
            (1.0, 100),    // before step 200: not counted, no minimum
            (10, 200),     // the first minimum
            (12.5, 300),   // exactly 25% above: not more
            (8, 400),      // a new minimum
            (10.5, 500),   // 31% above 8: 1 of 2
            (double.NaN, 550),   // holds nothing, moves nothing: the count resets
            (10.5, 600),   // 1 of 2 again
            (11, 700),     // 2 of 2: fires
        }.Select(v => rule.Evaluate(v.Value, v.Step)).ToList();

        Assert.Equal([false, false, false, false, false, false, false, true], decisions.Select(d => d.Fired));
        Assert.Equal((8.0, 400L), (rule.Minimum!.Value, rule.MinimumStep!.Value));
        Assert.Equal(600, rule.ConsecutiveSince);
        Assert.Contains("is more than 25% above its minimum 8 (step 400) for 2 evaluations (since step 600)", decisions[^1].Reason);
        Assert.Contains("before step 200; not counted", decisions[0].Reason);
        Assert.Equal(7, rule.Evaluations);
        Assert.True(rule.Stopped);
    }

    [Fact]
    public void A_minimum_at_or_below_zero_has_no_relative_rise()
    {
        var rule = (RiseRule)StoppingRule.Parse("x rises 50% above its minimum");
        Assert.False(rule.Evaluate(0, 1).Fired);
        Assert.False(rule.Evaluate(5, 2).Fired);       // 0 is the minimum: no rise is relative to it
        Assert.False(rule.Evaluate(-1, 3).Fired);
        Assert.False(rule.Evaluate(100, 4).Fired);
        Assert.Equal(-1, rule.Minimum);
    }

    [Fact]
    public void A_restored_rule_continues_as_the_uninterrupted_one()
    {
        const string text = "x rises 20% above its minimum after 2 for 3 -> checkpoint";
        double[] values = [5, 4, 3, 3.5, 3.7, 3.8, 3.1, 3.9, 4.0, 4.1, 2.0, 3.0];
        var whole = StoppingRule.Parse(text);
        var expected = values.Select((v, i) => whole.Evaluate(v, i)).ToList();

        var first = StoppingRule.Parse(text);
        for (int i = 0; i < 6; i++) first.Evaluate(values[i], i);
        var json = StoppingState.ToJson([first.SaveState()]);
        var second = StoppingRule.Parse(text);
        second.RestoreState(StoppingState.FromJson(json)[0]);
        var resumed = values.Skip(6).Select((v, i) => second.Evaluate(v, i + 6)).ToList();

        Assert.Equal(expected.Skip(6), resumed);
        Assert.Contains(expected, d => d.Fired);   // the sequence exercises a firing
        Assert.Throws<ArgumentException>(() => StoppingRule.Parse("x > 1").RestoreState(first.SaveState()));
    }
}

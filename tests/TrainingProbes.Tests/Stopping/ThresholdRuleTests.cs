using TrainingProbes.Stopping;

namespace TrainingProbes.Tests.Stopping;

/// <summary>
/// <see cref="ThresholdRule"/>: consecutive counting, reset, comparison edges, non-finite values, and what the
/// non-stop actions report. Patterns: 'B' fired and improved, 'F' fired, 'I' improved, '.' neither.
/// </summary>
public sealed class ThresholdRuleTests
{
    private const double Nan = double.NaN;
    private const double Inf = double.PositiveInfinity;

    public static TheoryData<string, string, double[], string> Sequences => new()
    {
        // for N: consecutive evaluations, reset when the condition does not hold
        { "fires when the condition held for N evaluations", "x > 0.8 for 3", [0.9, 0.9, 0.9], "..B" },
        { "a miss resets the count", "x > 0.8 for 3", [0.9, 0.9, 0.7, 0.9, 0.9, 0.9], ".....B" },
        { "for 1 fires at the first evaluation that holds", "x < 0.5", [0.7, 0.4], ".B" },
        { "a stop rule is latched", "x > 0.8 for 2", [0.9, 0.95, 0.1, 0.1], ".BFF" },

        // comparison edges
        { "> excludes equality", "x > 0.8", [0.8], "." },
        { ">= includes equality", "x >= 0.8", [0.8], "B" },
        { "< excludes equality", "x < 0.8", [0.8], "." },
        { "<= includes equality", "x <= 0.8", [0.8], "B" },

        // non-finite values satisfy no comparison, and reset the count
        { "NaN does not satisfy >", "x > 0.8", [Nan], "." },
        { "+inf does not satisfy >", "x > 0.8", [Inf], "." },
        { "-inf does not satisfy <", "x < 0.8", [-Inf], "." },
        { "NaN resets the count", "x > 0.8 for 2", [0.9, Nan, 0.9, 0.9], "...B" },
        { "is not finite fires on NaN", "x is not finite", [1.0, Nan], ".F" },
        { "is not finite fires on -inf", "x is not finite", [-Inf], "F" },
        { "is not finite for 2 needs two in a row", "x is not finite for 2", [Nan, 1.0, Inf, Nan], "...F" },
        { "is finite for 2", "x is finite for 2", [1.0, Nan, 2.0, 3.0], "...F" },

        // warn fires once per run of consecutive evaluations
        { "warn fires when the count reaches N, again after a reset", "x > 0.8 for 2 -> warn", [0.9, 0.9, 0.9, 0.1, 0.9, 0.9], ".B...F" },
        // checkpoint: improved when the condition has held for N and the value is better than every earlier one that did
        { "checkpoint improves on larger values for >", "x > 0.9 -> checkpoint", [0.8, 0.92, 0.91, 0.95, 0.95], ".B.I." },
        { "checkpoint improves on smaller values for <=", "x <= 0.5 for 2 -> checkpoint", [0.4, 0.3, 0.35, 0.2, 0.6, 0.25, 0.1], ".B.I..B" },
    };

    [Theory]
    [MemberData(nameof(Sequences))]
    public void Scripted_sequences_follow_the_documented_semantics(string behaviour, string rule, double[] values, string expected)
    {
        Assert.True(expected.Length == values.Length, $"test data of '{behaviour}': one pattern character per value");
        Assert.Equal(expected, RuleScript.Pattern(StoppingRule.Parse(rule), values));
    }

    [Fact]
    public void The_count_and_its_first_step_are_tracked()
    {
        var rule = (ThresholdRule)StoppingRule.Parse("x > 0.8 for 5");
        RuleScript.Run(rule, [0.9, 0.7, 0.9, 0.9]);
        Assert.Equal(2, rule.Consecutive);
        Assert.Equal(RuleScript.StepOf(2), rule.ConsecutiveSince);
        rule.Evaluate(0.1, 1000);
        Assert.Equal(0, rule.Consecutive);
        Assert.Null(rule.ConsecutiveSince);
    }

    [Fact]
    public void Reasons_give_the_value_the_condition_the_count_and_the_first_step()
    {
        var rule = new ThresholdRule
        {
            Monitor = Indicators.RelativeRegret,
            Geometry = Geometry.Fisher,
            Comparison = ThresholdComparison.GreaterThan,
            Threshold = 0.8,
            For = 5,
        };
        var decisions = Enumerable.Range(0, 5).Select(i => rule.Evaluate(0.84, 1200 + 100 * i)).ToList();
        Assert.Equal("regret.relative[fisher] = 0.84 > 0.8 for 2 of 5 evaluations (since step 1200).", decisions[1].Reason);
        Assert.True(decisions[4].Fired);
        Assert.Equal("regret.relative[fisher] = 0.84 > 0.8 for 5 evaluations (since step 1200).", decisions[4].Reason);

        var other = (ThresholdRule)StoppingRule.Parse("val.loss > 0.8 -> warn");
        Assert.Equal("val.loss = 0.7 is not > 0.8.", other.Evaluate(0.7, 1).Reason);
        Assert.Equal("val.loss = NaN is not finite, so not > 0.8.", other.Evaluate(double.NaN, 2).Reason);
        other.Evaluate(0.9, 3);
        Assert.Equal("val.loss = 0.95 > 0.8 for 2 evaluations (since step 3); already reported.", other.Evaluate(0.95, 4).Reason);
        Assert.Equal("val.loss = 0.8000001 is not > 0.8000002.", ((ThresholdRule)StoppingRule.Parse("val.loss > 0.8000002")).Evaluate(0.8000001, 1).Reason);

        var finite = StoppingRule.Parse("training.loss is not finite");
        Assert.Equal("training.loss = 0.5 is finite.", finite.Evaluate(0.5, 1).Reason);
        Assert.Equal("training.loss = Infinity is not finite for 1 evaluation (since step 2).", finite.Evaluate(double.PositiveInfinity, 2).Reason);
    }

    [Fact]
    public void Holds_tests_one_value()
    {
        var rule = new ThresholdRule { Monitor = "x", Comparison = ThresholdComparison.LessThanOrEqual, Threshold = -1 };
        Assert.True(rule.Holds(-1));
        Assert.False(rule.Holds(-0.999));
        Assert.False(rule.Holds(double.NegativeInfinity));
        Assert.True(new ThresholdRule { Monitor = "x", Comparison = ThresholdComparison.IsFinite }.Holds(1e308));
    }

    [Fact]
    public void A_rule_reads_its_value_from_a_snapshot_in_its_geometry()
    {
        var snapshot = new ProbeSnapshot("run", 500, 3, DateTimeOffset.UnixEpoch,
        [
            new IndicatorValue(Indicators.RelativeRegret, Geometry.Euclidean, "gradients", 0.5),
            new IndicatorValue(Indicators.RelativeRegret, Geometry.Fisher, "gradients", 0.9),
        ]);
        var rule = StoppingRule.Parse("regret.relative[fisher] > 0.8");
        Assert.True(rule.TryEvaluate(snapshot, out var decision));
        Assert.Equal((true, 0.9, 500L), (decision.Fired, decision.Value, decision.Step));

        var missing = StoppingRule.Parse("regret.relative[adaptive] > 0.8");
        Assert.False(missing.TryEvaluate(snapshot, out _));
        Assert.Equal(0, missing.Evaluations);
    }
}

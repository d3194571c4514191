using TrainingProbes.Stopping;

namespace TrainingProbes.Tests.Stopping;

/// <summary><see cref="StoppingRule.Parse"/>: canonical forms, the values it reads, and its errors.</summary>
public sealed class RuleParserTests
{
    public static TheoryData<string, string> RoundTrips => new()
    {
        { "regret.relative[fisher] > 0.8 for 5 -> warn", "regret.relative[fisher] > 0.8 for 5 -> warn" },
        { "  regret.relative[ FISHER ]>0.8   FOR 5->Warn ", "regret.relative[fisher] > 0.8 for 5 -> warn" },
        { "training.loss is not finite", "training.loss is not finite" },
        { "eb_criterion is finite for 3 -> checkpoint", "eb_criterion is finite for 3 -> checkpoint" },
        { "val.acc >= 9.5e-1 -> checkpoint", "val.acc >= 0.95 -> checkpoint" },
        { "x.y <= -1_000.5d for 1 -> stop", "x.y <= -1000.5" },
        { "gradient.cosine < .5", "gradient.cosine < 0.5" },
        { "loss > +1E3", "loss > 1000" },
        { "loss > 1e-12", "loss > 1E-12" },
        { "gradient.noise[adaptive] >= 12d", "gradient.noise[adaptive] >= 12" },
        { "early_stopping(monitor=val.loss, mode=min, patience=5, min_delta=0.001)", "early_stopping(monitor=val.loss, mode=min, patience=5, min_delta=0.001)" },
        { "early_stopping(patience=5, monitor=val.loss)", "early_stopping(monitor=val.loss, mode=min, patience=5)" },
        { "EARLY_STOPPING( monitor = val.acc )", "early_stopping(monitor=val.acc, mode=max, patience=3)" },
        { "early_stopping(monitor=my.score, mode=MAX, baseline=none) -> stop", "early_stopping(monitor=my.score, mode=max, patience=3)" },
        {
            "early_stopping(monitor=regret.relative[adaptive], baseline=0.9, stopping_threshold=0.1, divergence_threshold=1.5, check_finite=false, warmup_steps=1_000, restore_best_weights=true, mode=auto, patience=0) -> warn",
            "early_stopping(monitor=regret.relative[adaptive], mode=min, patience=0, baseline=0.9, stopping_threshold=0.1, divergence_threshold=1.5, check_finite=false, warmup_steps=1000, restore_best_weights=true) -> warn"
        },
    };

    [Theory]
    [MemberData(nameof(RoundTrips))]
    public void Parsed_rules_are_named_by_their_canonical_form_which_parses_back_to_itself(string text, string canonical)
    {
        var rule = StoppingRule.Parse(text);
        Assert.Equal(canonical, rule.Name);
        Assert.Equal(canonical, rule.ToString());
        var again = StoppingRule.Parse(rule.Name);
        Assert.Equal(rule.GetType(), again.GetType());
        Assert.Equal(canonical, again.Name);
    }

    [Fact]
    public void Threshold_rules_read_every_part()
    {
        var rule = Assert.IsType<ThresholdRule>(StoppingRule.Parse("regret.relative[fisher] >= -2.5e-3 for 7 -> checkpoint"));
        Assert.Equal(Indicators.RelativeRegret, rule.Monitor);
        Assert.Equal(Geometry.Fisher, rule.Geometry);
        Assert.Equal(ThresholdComparison.GreaterThanOrEqual, rule.Comparison);
        Assert.Equal(-2.5e-3, rule.Threshold);
        Assert.Equal(7, rule.For);
        Assert.Equal(RuleAction.Checkpoint, rule.Action);

        var finite = Assert.IsType<ThresholdRule>(StoppingRule.Parse("training.loss is not finite"));
        Assert.Equal((ThresholdComparison.IsNotFinite, 1, RuleAction.Stop, Geometry.None), (finite.Comparison, finite.For, finite.Action, finite.Geometry));
    }

    [Fact]
    public void Early_stopping_reads_every_parameter()
    {
        var rule = Assert.IsType<EarlyStopping>(StoppingRule.Parse(
            "early_stopping(monitor=gradient.cosine[euclidean], mode=min, patience=5, min_delta=0.001, baseline=0.25, " +
            "stopping_threshold=-0.5, divergence_threshold=0.75, check_finite=false, warmup_steps=2000, restore_best_weights=true) -> checkpoint"));
        Assert.Equal(Indicators.Cosine, rule.Monitor);
        Assert.Equal(Geometry.Euclidean, rule.Geometry);
        Assert.Equal(StoppingMode.Min, rule.Mode); // explicit mode overrides the inferred max
        Assert.Equal(5, rule.Patience);
        Assert.Equal(0.001, rule.MinDelta);
        Assert.Equal(0.25, rule.Baseline);
        Assert.Equal(-0.5, rule.StoppingThreshold);
        Assert.Equal(0.75, rule.DivergenceThreshold);
        Assert.False(rule.CheckFinite);
        Assert.Equal(2000, rule.WarmupSteps);
        Assert.True(rule.RestoreBestWeights);
        Assert.Equal(RuleAction.Checkpoint, rule.Action);

        var defaults = Assert.IsType<EarlyStopping>(StoppingRule.Parse("early_stopping(monitor=val.loss)"));
        Assert.Equal((StoppingMode.Auto, 3, 0.0, true, 0L, false, RuleAction.Stop),
            (defaults.Mode, defaults.Patience, defaults.MinDelta, defaults.CheckFinite, defaults.WarmupSteps, defaults.RestoreBestWeights, defaults.Action));
        Assert.Null(defaults.Baseline);
    }

    [Fact]
    public void The_message_shows_the_rule_the_column_and_a_caret()
    {
        var ex = Assert.Throws<RuleParseException>(() => StoppingRule.Parse("regret.relative > for 5"));
        Assert.IsAssignableFrom<FormatException>(ex);
        string[] lines = ex.Message.Split(Environment.NewLine);
        Assert.Equal("Rule 'regret.relative > for 5': at column 18, expected a number, found 'for'.", lines[0]);
        Assert.Equal("  regret.relative > for 5", lines[1]);
        Assert.Equal("  " + new string(' ', 18) + "^", lines[2]);
        Assert.Equal((18, "a number", "for", "regret.relative > for 5"), (ex.Position, ex.Expected, ex.Found, ex.Rule));
    }

    private const string ParameterNames =
        "a parameter name (monitor, mode, patience, min_delta, baseline, stopping_threshold, divergence_threshold, check_finite, warmup_steps, restore_best_weights)";

    /// <summary>Malformed rules: the text, the token (by the text at its column, null for the end), and what was expected.</summary>
    public static TheoryData<string, string?, string> Malformed => new()
    {
        { "regret.relative > for 5", "for", "a number" },
        { "", null, "a metric name or early_stopping(...)" },
        { "   ", null, "a metric name or early_stopping(...)" },
        { "regret.relative[fischer] > 0.8", "fischer", "a geometry: euclidean, fisher or adaptive" },
        { "regret.relative[none] > 0.8", "none", "a geometry: euclidean, fisher or adaptive" },
        { "regret.relative[fisher > 0.8", ">", "']'" },
        { "loss == 0.5", "== 0.5", "a comparison (>, >=, <, <=) or 'is'" },
        { "loss", null, "a comparison (>, >=, <, <=) or 'is'" },
        { "loss ! 5", "!", "a comparison (>, >=, <, <=) or 'is'" },
        { "Val.Loss > 1", "Val.Loss", "a metric name in dotted snake_case (for example val.loss)" },
        { "> 1", ">", "a metric name in dotted snake_case (for example val.loss)" },
        { "loss > 1e", "1e", "a number" },
        { "loss > 1.5f", "1.5f", "a number" },
        { "loss > 1__", "1__", "a number" },
        { "loss > 1e999", "1e999", "a number (within the range of a double)" },
        { "loss > 0.5 for 0", "0", "a positive integer after 'for'" },
        { "loss > 0.5 for 2.5", "2.5", "a positive integer after 'for'" },
        { "loss > 0.5 for -3", "-3", "a positive integer after 'for'" },
        { "loss > 0.5 for", null, "a positive integer after 'for'" },
        { "loss > 0.5 5", "5", "'for', '->' or the end of the rule" },
        { "loss > 0.5 for 5 6", "6", "'->' or the end of the rule" },
        { "loss > 0.5 -> halt", "halt", "an action: stop, warn or checkpoint" },
        { "loss > 0.5 for 5 -> ", null, "an action: stop, warn or checkpoint" },
        { "loss > 0.5 -> warn now", "now", "the end of the rule" },
        { "loss is finit", "finit", "'not' or 'finite'" },
        { "loss is not", null, "'finite'" },
        { "early_stopping(monitor=val.loss, patience=-1)", "-1", "a non-negative integer for patience" },
        { "early_stopping(monitor=val.loss, patience=2.5)", "2.5", "a non-negative integer for patience" },
        { "early_stopping(monitor=val.loss, patiense=3)", "patiense", ParameterNames },
        { "early_stopping()", ")", ParameterNames },
        { "early_stopping(monitor=val.loss,)", ")", ParameterNames },
        { "early_stopping(monitor=val.loss, patience=3, patience=4)", "patience=4", "a parameter not given before ('patience' is given twice)" },
        { "early_stopping(monitor=my.value)", "my.value)", "a name of known direction, or mode=min or mode=max (the direction of 'my.value' is not known)" },
        { "early_stopping(mode=min)", ")", "monitor=<name>, which early_stopping requires" },
        { "early_stopping(monitor=val.loss, min_delta=-0.1)", "-0.1", "a number >= 0 for min_delta" },
        { "early_stopping(monitor=val.loss, baseline=high)", "high", "a number or none for baseline" },
        { "early_stopping(monitor=val.loss, mode=minimize)", "minimize", "a mode: auto, min or max" },
        { "early_stopping(monitor=val.loss, check_finite=yes)", "yes", "true or false for check_finite" },
        { "early_stopping(monitor=val.loss, warmup_steps=-5)", "-5", "a non-negative integer for warmup_steps" },
        { "early_stopping(monitor=val.loss check_finite=true)", "check_finite", "',' or ')'" },
        { "early_stopping(monitor val.loss)", "val.loss", "'=' after monitor" },
        { "early_stopping(monitor=val.loss[sphere])", "sphere", "a geometry: euclidean, fisher or adaptive" },
        { "early_stopping(monitor=val.loss", null, "',' or ')'" },
        { "early_stopping(monitor=val.loss) stop", "stop", "'->' or the end of the rule" },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void Errors_name_the_column_the_expected_token_and_what_was_found(string text, string? at, string expected)
    {
        var ex = Assert.Throws<RuleParseException>(() => StoppingRule.Parse(text));
        int column = at is null ? text.Length : text.LastIndexOf(at, StringComparison.Ordinal);
        Assert.True(column >= 0, "test data: the offending text must occur in the rule");
        string? found = at is null ? null : ex.Rule.Substring(ex.Position, Math.Min(at.Length, ex.Rule.Length - ex.Position));
        Assert.Equal((column, expected), (ex.Position, ex.Expected));
        Assert.Equal(at, found);
        if (at is not null)
            Assert.StartsWith(ex.Found!, at, StringComparison.Ordinal);
        else
            Assert.Null(ex.Found);
        Assert.Contains($"at column {column}, expected {expected}, found {(at is null ? "the end of the rule" : $"'{ex.Found}'")}.", ex.Message);
        Assert.EndsWith(new string(' ', column) + "^", ex.Message);
    }

    [Fact]
    public void Null_is_not_a_rule()
    {
        Assert.Throws<ArgumentNullException>(() => StoppingRule.Parse(null!));
    }
}

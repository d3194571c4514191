using TrainingProbes.Stopping;

namespace TrainingProbes.Tests.Stopping;

/// <summary>
/// Scripted sequences of a monitored value, one evaluation every 100 steps, against the documented semantics of
/// <see cref="EarlyStopping"/>. Patterns: 'B' fired and improved, 'F' fired, 'I' improved, '.' neither.
/// </summary>
public sealed class EarlyStoppingTests
{
    private const double Nan = double.NaN;
    private const double Inf = double.PositiveInfinity;

    private static EarlyStopping Min(int patience = 3, double minDelta = 0, RuleAction action = RuleAction.Stop) =>
        new() { Mode = StoppingMode.Min, Monitor = "val.loss", Patience = patience, MinDelta = minDelta, Action = action };

    private static EarlyStopping Max(int patience = 3, double minDelta = 0) =>
        new() { Mode = StoppingMode.Max, Monitor = "val.score", Patience = patience, MinDelta = minDelta };

    public static TheoryData<string, Func<EarlyStopping>, double[], string> Sequences => new()
    {
        // patience counting
        { "patience 3 fires at the third evaluation without improvement", () => Min(3), [1.0, 0.9, 0.95, 0.96, 0.97], "II..F" },
        { "an improvement resets the wait", () => Min(3), [1.0, 1.1, 1.2, 0.5, 0.6, 0.7, 0.8], "I..I..F" },
        { "patience 0 fires at the first evaluation that does not improve", () => Min(0), [1.0, 0.9, 0.8, 0.85], "IIIF" },
        { "patience 1 fires at once", () => Min(1), [1.0, 2.0], "IF" },
        { "max mode waits for increases", () => Max(3), [0.5, 0.6, 0.6, 0.55, 0.59], "II..F" },
        { "auto mode maximizes an accuracy", () => new EarlyStopping { Monitor = "val.acc", Patience = 2 }, [0.5, 0.4, 0.45], "I.F" },
        { "auto mode minimizes a regret", () => new EarlyStopping { Monitor = "regret.relative", Geometry = Geometry.Fisher, Patience = 1 }, [0.5, 0.6], "IF" },

        // ties
        { "a tie is not an improvement (min)", () => Min(2), [1.0, 1.0, 1.0], "I.F" },
        { "a tie is not an improvement (max)", () => Max(2), [1.0, 1.0, 1.0], "I.F" },
        { "patience 0 fires at a tie", () => Min(0), [1.0, 1.0], "IF" },

        // min_delta
        { "min: improving by exactly min_delta is not an improvement", () => Min(1, 0.25), [1.0, 0.75], "IF" },
        { "min: improving by slightly more than min_delta is", () => Min(1, 0.25), [1.0, 0.75 - 1e-9], "II" },
        { "max: improving by exactly min_delta is not an improvement", () => Max(1, 0.25), [1.0, 1.25], "IF" },
        { "max: improving by slightly more than min_delta is", () => Max(1, 0.25), [1.0, 1.25 + 1e-9], "II" },
        { "small steps below min_delta do not move the best", () => Min(3, 0.25), [1.0, 0.9, 0.8, 0.76], "I..F" },
        { "the reference stays the best, not the last value", () => Min(3, 0.25), [1.0, 0.9, 0.8, 0.7], "I..I" },

        // non-finite values
        { "NaN fires at once with CheckFinite", () => Min(3), [1.0, Nan], "IF" },
        { "+inf fires at once with CheckFinite", () => Min(3), [1.0, Inf], "IF" },
        { "-inf fires at once with CheckFinite, though lower", () => Min(3), [1.0, -Inf], "IF" },
        { "NaN at the first evaluation fires", () => Min(3), [Nan], "F" },
        { "without CheckFinite NaN counts as no improvement", () => new EarlyStopping { Mode = StoppingMode.Min, Monitor = "val.loss", CheckFinite = false }, [1.0, Nan, 0.5], "I.I" },
        { "without CheckFinite -inf is never an improvement", () => new EarlyStopping { Mode = StoppingMode.Min, Monitor = "val.loss", CheckFinite = false }, [1.0, -Inf, -Inf, -Inf], "I..F" },
        { "without CheckFinite +inf (max) is never an improvement", () => new EarlyStopping { Mode = StoppingMode.Max, Monitor = "val.acc", CheckFinite = false, Patience = 1 }, [0.5, Inf], "IF" },
        { "without CheckFinite NaN first: no best yet", () => new EarlyStopping { Mode = StoppingMode.Min, Monitor = "val.loss", CheckFinite = false, Patience = 2 }, [Nan, 1.0, Nan, Nan], ".I.F" },
        { "without CheckFinite +inf crosses the divergence threshold", () => new EarlyStopping { Mode = StoppingMode.Min, Monitor = "val.loss", CheckFinite = false, DivergenceThreshold = 10 }, [1.0, Inf], "IF" },

        // baseline
        { "a baseline never beaten fires after patience evaluations", () => new EarlyStopping { Monitor = "val.loss", Baseline = 0.5 }, [0.6, 0.55, 0.7], "..F" },
        { "a baseline beaten starts the best", () => new EarlyStopping { Monitor = "val.loss", Baseline = 0.5 }, [0.6, 0.4, 0.45, 0.46, 0.47], ".I..F" },
        { "a value equal to the baseline does not beat it", () => new EarlyStopping { Monitor = "val.loss", Baseline = 0.5, Patience = 1 }, [0.5], "F" },
        { "the baseline must be beaten by more than min_delta", () => new EarlyStopping { Monitor = "val.loss", Baseline = 1.0, MinDelta = 0.25, Patience = 2 }, [0.75, 0.74], ".I" },
        { "a max baseline", () => new EarlyStopping { Monitor = "val.acc", Baseline = 0.9 }, [0.85, 0.9, 0.95], "..I" },

        // stopping threshold: strictly better fires (Lightning), equality does not
        { "min: equal to the stopping threshold does not fire", () => new EarlyStopping { Monitor = "val.loss", StoppingThreshold = 0.1 }, [0.5, 0.1], "II" },
        { "min: below the stopping threshold fires and improves", () => new EarlyStopping { Monitor = "val.loss", StoppingThreshold = 0.1 }, [0.5, 0.0999], "IB" },
        { "min: below the threshold but not by min_delta fires without improving", () => new EarlyStopping { Monitor = "val.loss", StoppingThreshold = 0.4, MinDelta = 0.25 }, [0.5, 0.39], "IF" },
        { "max: equal, then above the stopping threshold", () => new EarlyStopping { Monitor = "val.acc", StoppingThreshold = 0.9 }, [0.5, 0.9, 0.91], "IIB" },
        { "the stopping threshold fires at the first evaluation", () => new EarlyStopping { Monitor = "val.loss", StoppingThreshold = 0.1 }, [0.05], "B" },

        // divergence threshold: strictly worse fires, equality does not
        { "min: equal to the divergence threshold does not fire", () => new EarlyStopping { Monitor = "val.loss", DivergenceThreshold = 10 }, [1.0, 10.0], "I." },
        { "min: above the divergence threshold fires", () => new EarlyStopping { Monitor = "val.loss", DivergenceThreshold = 10 }, [1.0, 10.001], "IF" },
        { "the divergence threshold fires at the first evaluation", () => new EarlyStopping { Monitor = "val.loss", DivergenceThreshold = 10 }, [11.0], "F" },
        { "max: equal, then below the divergence threshold", () => new EarlyStopping { Monitor = "val.acc", DivergenceThreshold = 0.1 }, [0.5, 0.1, 0.09], "I.F" },

        // warm-up: ignored entirely, NaN included
        { "evaluations before WarmupSteps are ignored", () => new EarlyStopping { Monitor = "val.loss", Patience = 0, WarmupSteps = 300 }, [Nan, 0.1, 1.0, 1.1], "..IF" },
        { "warm-up delays the patience count", () => new EarlyStopping { Monitor = "val.loss", Patience = 2, WarmupSteps = 201 }, [5.0, 6.0, 7.0, 8.0, 9.0], "..I.F" },
    };

    [Theory]
    [MemberData(nameof(Sequences))]
    public void Scripted_sequences_follow_the_documented_semantics(string behaviour, Func<EarlyStopping> rule, double[] values, string expected)
    {
        Assert.True(expected.Length == values.Length, $"test data of '{behaviour}': one pattern character per value");
        Assert.Equal(expected, RuleScript.Pattern(rule(), values));
    }

    [Fact]
    public void Warm_up_leaves_no_trace_in_the_state()
    {
        var rule = new EarlyStopping { Monitor = "val.loss", Patience = 0, WarmupSteps = 300 };
        var decisions = RuleScript.Run(rule, [double.NaN, 0.1]);
        Assert.All(decisions, d => Assert.Contains("warm-up lasts until step 300", d.Reason));
        Assert.Equal(0, rule.Evaluations);
        Assert.Null(rule.LastStep);
        Assert.Null(rule.BestValue);

        RuleScript.Run(rule, [1.0], firstIndex: 2);
        Assert.Equal(1.0, rule.BestValue);
        Assert.Equal(300, rule.BestStep);
        Assert.Equal(1, rule.Evaluations);
    }

    [Fact]
    public void Best_value_step_and_wait_follow_the_sequence()
    {
        var rule = Min(5, 0.001);
        RuleScript.Run(rule, [0.5, 0.42, 0.43, 0.4205]);
        Assert.Equal(0.42, rule.BestValue);
        Assert.Equal(RuleScript.StepOf(1), rule.BestStep);
        Assert.Equal(2, rule.Wait);
        Assert.Equal(4, rule.Evaluations);
        Assert.Equal(RuleScript.StepOf(3), rule.LastStep);
    }

    [Fact]
    public void Reasons_name_the_best_value_its_step_min_delta_and_the_count()
    {
        var rule = Min(3, 0.001);
        rule.Evaluate(0.5, 800);
        var best = rule.Evaluate(0.412, 900);
        var first = rule.Evaluate(0.42, 1000);
        var second = rule.Evaluate(0.4115, 1100);
        var fired = rule.Evaluate(0.5, 1200);

        Assert.Equal("val.loss = 0.412 improved on its best 0.5 (step 800) by more than min_delta 0.001.", best.Reason);
        Assert.Equal("val.loss did not improve on its best 0.412 (step 900) by more than min_delta 0.001 for 1 evaluation (patience 3).", first.Reason);
        Assert.Equal("val.loss did not improve on its best 0.412 (step 900) by more than min_delta 0.001 for 2 evaluations (patience 3).", second.Reason);
        Assert.True(fired.Fired);
        Assert.Equal("val.loss did not improve on its best 0.412 (step 900) by more than min_delta 0.001 for 3 evaluations.", fired.Reason);
        Assert.Equal((0.5, 1200L), (fired.Value, fired.Step));
    }

    [Fact]
    public void Reasons_of_each_kind_of_firing_say_what_happened()
    {
        var nan = new EarlyStopping { Monitor = "val.loss", StoppingThreshold = 0.1, DivergenceThreshold = 10 };
        nan.Evaluate(0.5, 100);
        // Lightning's order: the finiteness check comes before both thresholds.
        Assert.Equal("val.loss = NaN is not finite (best so far 0.5 at step 100).", nan.Evaluate(double.NaN, 200).Reason);

        var target = new EarlyStopping { Monitor = "regret.relative", Geometry = Geometry.Fisher, StoppingThreshold = 0.1 };
        Assert.Equal("regret.relative[fisher] = 0.05 < stopping_threshold 0.1: the target is reached.", target.Evaluate(0.05, 100).Reason);

        var diverged = new EarlyStopping { Monitor = "val.acc", DivergenceThreshold = 0.2 };
        diverged.Evaluate(0.6, 100);
        Assert.Equal("val.acc = 0.1 < divergence_threshold 0.2: the run diverges (best so far 0.6 at step 100).", diverged.Evaluate(0.1, 200).Reason);

        var baseline = new EarlyStopping { Monitor = "val.loss", Baseline = 0.5, Patience = 2 };
        baseline.Evaluate(0.6, 100);
        Assert.Equal("val.loss did not beat its baseline 0.5 for 2 evaluations.", baseline.Evaluate(0.7, 200).Reason);
        Assert.Null(baseline.BestValue);

        // Values that differ beyond six digits are shown with all of theirs.
        var close = new EarlyStopping { Monitor = "val.loss", DivergenceThreshold = 10 };
        Assert.Equal("val.loss = 10.0000001 > divergence_threshold 10: the run diverges (no best value yet).", close.Evaluate(10.0000001, 100).Reason);
    }

    [Fact]
    public void A_fired_stop_rule_is_latched_with_its_first_reason()
    {
        var rule = Min(1);
        var decisions = RuleScript.Run(rule, [1.0, 2.0, 0.1, double.NaN]);
        Assert.Equal("IFFF", RuleScript.Pattern(decisions));
        Assert.True(rule.Stopped);
        Assert.All(decisions.Skip(2), d => Assert.Equal(decisions[1].Reason, d.Reason));
        Assert.Equal((0.1, RuleScript.StepOf(2)), (decisions[2].Value, decisions[2].Step));
        Assert.Equal(1.0, rule.BestValue);
        Assert.Equal(4, rule.Evaluations);
    }

    [Theory]
    [InlineData(RuleAction.Warn)]
    [InlineData(RuleAction.Checkpoint)]
    public void Warn_and_checkpoint_rules_are_not_latched_and_restart_the_wait(RuleAction action)
    {
        var rule = Min(2, action: action);
        Assert.Equal("I.F.FI.F", RuleScript.Pattern(rule, [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.7]));
        Assert.False(rule.Stopped);
        Assert.Equal(0, rule.Wait);
        Assert.Equal("IFI", RuleScript.Pattern(Min(2, action: action), [1.0, double.NaN, 0.5]));
    }

    [Theory]
    [InlineData("training.loss", StoppingMode.Min)]
    [InlineData("loss", StoppingMode.Min)]
    [InlineData("val.loss", StoppingMode.Min)]
    [InlineData("val_loss", StoppingMode.Min)]
    [InlineData("val.error", StoppingMode.Min)]
    [InlineData("regret", StoppingMode.Min)]
    [InlineData("regret.relative", StoppingMode.Min)]
    [InlineData("regret.upper", StoppingMode.Min)]
    [InlineData("fixed_point.regret.finite", StoppingMode.Min)]
    [InlineData("eb_criterion", StoppingMode.Min)]
    [InlineData("gradient.noise", StoppingMode.Min)]
    [InlineData("gradient.disparity", StoppingMode.Min)]
    [InlineData("test.norm", StoppingMode.Min)]
    [InlineData("test.inner_product", StoppingMode.Min)]
    [InlineData("flatness.contrastive", StoppingMode.Min)]
    [InlineData("fixed_point.flatness.contrastive_eps", StoppingMode.Min)]
    [InlineData("fixed_point.sharpness", StoppingMode.Min)]
    [InlineData("curvature.lambda_max", StoppingMode.Min)]
    [InlineData("curvature.lambda_max_magnitude", StoppingMode.Min)]
    [InlineData("curvature.trace", StoppingMode.Min)]
    [InlineData("curvature.contrastive", StoppingMode.Min)]
    [InlineData("accuracy", StoppingMode.Max)]
    [InlineData("val.acc", StoppingMode.Max)]
    [InlineData("val.accuracy", StoppingMode.Max)]
    [InlineData("val_acc", StoppingMode.Max)]
    [InlineData("train.acc_top5", StoppingMode.Max)]
    [InlineData("val.f1", StoppingMode.Max)]
    [InlineData("gradient.cosine", StoppingMode.Max)]
    [InlineData("fixed_point.gradient.cosine", StoppingMode.Max)]
    [InlineData("gradient.gsnr", StoppingMode.Max)]
    [InlineData("gradient.coherence", StoppingMode.Max)]
    [InlineData("flatness.jensen_ratio", StoppingMode.Max)]
    public void Auto_mode_infers_the_direction_from_the_name(string monitor, StoppingMode expected)
    {
        Assert.True(EarlyStopping.TryInferMode(monitor, out var mode));
        Assert.Equal(expected, mode);
        var rule = new EarlyStopping { Monitor = monitor };
        Assert.Equal(StoppingMode.Auto, rule.Mode);
        Assert.Equal(expected, rule.EffectiveMode);
    }

    [Theory]
    [InlineData("my.value")]
    [InlineData("gradient.norm")]
    [InlineData("parameter.drift")]
    [InlineData("curvature.trace_half_width")]
    [InlineData("training.learning_rate")]
    [InlineData("accuracy.loss")] // both lists: ambiguous
    public void Auto_mode_rejects_an_unknown_name_at_construction(string monitor)
    {
        Assert.False(EarlyStopping.TryInferMode(monitor, out _));
        var ex = Assert.Throws<ArgumentException>(() => new EarlyStopping { Monitor = monitor });
        Assert.Equal("Monitor", ex.ParamName);
        Assert.Contains($"'{monitor}'", ex.Message);
        Assert.Contains("Set Mode = StoppingMode.Min or StoppingMode.Max", ex.Message);
        Assert.Throws<ArgumentException>(() => new EarlyStopping(monitor));

        Assert.Equal(StoppingMode.Max, new EarlyStopping { Mode = StoppingMode.Max, Monitor = monitor }.EffectiveMode);
        Assert.Equal(StoppingMode.Min, new EarlyStopping(monitor, StoppingMode.Min).EffectiveMode);
    }

    [Fact]
    public void Mode_set_after_an_unknown_monitor_is_too_late_as_documented()
    {
        Assert.Throws<ArgumentException>(() => new EarlyStopping { Monitor = "my.value", Mode = StoppingMode.Min });
        // An explicit mode overrides the inferred one whatever the order.
        Assert.Equal(StoppingMode.Max, new EarlyStopping { Monitor = "val.loss", Mode = StoppingMode.Max }.EffectiveMode);
    }

    [Fact]
    public void Evaluations_out_of_step_order_are_refused()
    {
        var rule = Min();
        rule.Evaluate(1.0, 200);
        rule.Evaluate(0.9, 200);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => rule.Evaluate(0.8, 100));
        Assert.Contains("step order", ex.Message);
        Assert.Contains("RestoreState", ex.Message);
    }

    public static TheoryData<string, Action> InvalidOptions => new()
    {
        { "MinDelta", () => _ = new EarlyStopping { Monitor = "val.loss", MinDelta = -0.1 } },
        { "MinDelta", () => _ = new EarlyStopping { Monitor = "val.loss", MinDelta = double.NaN } },
        { "Patience", () => _ = new EarlyStopping { Monitor = "val.loss", Patience = -1 } },
        { "WarmupSteps", () => _ = new EarlyStopping { Monitor = "val.loss", WarmupSteps = -1 } },
        { "Baseline", () => _ = new EarlyStopping { Monitor = "val.loss", Baseline = double.NaN } },
        { "StoppingThreshold", () => _ = new EarlyStopping { Monitor = "val.loss", StoppingThreshold = double.PositiveInfinity } },
        { "DivergenceThreshold", () => _ = new EarlyStopping { Monitor = "val.loss", DivergenceThreshold = double.NegativeInfinity } },
        { "Mode", () => _ = new EarlyStopping { Mode = (StoppingMode)7, Monitor = "val.loss" } },
        { "Geometry", () => _ = new EarlyStopping { Monitor = "val.loss", Geometry = Geometry.All } },
        { "Action", () => _ = new EarlyStopping { Monitor = "val.loss", Action = (RuleAction)9 } },
        { "Name", () => _ = new EarlyStopping { Monitor = "val.loss", Name = " " } },
        { "Monitor", () => _ = new EarlyStopping { Mode = StoppingMode.Min, Monitor = "Val.Loss" } },
        { "Monitor", () => _ = new EarlyStopping { Mode = StoppingMode.Min, Monitor = "val-loss" } },
        { "Monitor", () => _ = new EarlyStopping { Mode = StoppingMode.Min, Monitor = "" } },
        { "For", () => _ = new ThresholdRule { Monitor = "val.loss", For = 0 } },
        { "Threshold", () => _ = new ThresholdRule { Monitor = "val.loss", Threshold = double.NaN } },
        { "Comparison", () => _ = new ThresholdRule { Monitor = "val.loss", Comparison = (ThresholdComparison)42 } },
    };

    [Theory]
    [MemberData(nameof(InvalidOptions))]
    public void Options_are_checked_when_set_and_the_message_names_them(string option, Action create)
    {
        var ex = Assert.ThrowsAny<ArgumentException>(create);
        Assert.Equal(option, ex.ParamName);
        Assert.Contains(option, ex.Message);
    }

    [Fact]
    public void A_geometry_suffix_on_monitor_points_to_the_geometry_property()
    {
        var ex = Assert.Throws<ArgumentException>(() => new ThresholdRule { Monitor = "regret.relative[fisher]" });
        Assert.Contains("Geometry = Geometry.Fisher", ex.Message);
        Assert.Contains("Monitor = \"regret.relative\"", ex.Message);
    }

    [Fact]
    public void Defaults_are_those_documented()
    {
        var rule = new EarlyStopping { Monitor = "val.loss" };
        Assert.Equal((StoppingMode.Auto, 0.0, 3, true, 0L, false), (rule.Mode, rule.MinDelta, rule.Patience, rule.CheckFinite, rule.WarmupSteps, rule.RestoreBestWeights));
        Assert.Null(rule.Baseline);
        Assert.Null(rule.StoppingThreshold);
        Assert.Null(rule.DivergenceThreshold);
        Assert.Equal(RuleAction.Stop, rule.Action);
        Assert.Equal(Geometry.None, rule.Geometry);
        Assert.Equal("early_stopping(monitor=val.loss, mode=min, patience=3)", rule.Name);
    }
}

using TrainingProbes.Stopping;

namespace TrainingProbes.Tests.Stopping;

/// <summary>Rules that could never fire are refused at attach; likely typos are found by edit distance.</summary>
public sealed class MonitorCheckTests
{
    private static ProbeOptions With(StoppingRule rule, Geometry? geometries = null) =>
        geometries is { } g ? new ProbeOptions { Stopping = [rule], Geometries = g } : new ProbeOptions { Stopping = [rule] };

    [Theory]
    [InlineData("regret.relative > 0.8", "once per geometry")]                    // per geometry, none given
    [InlineData("training.loss[fisher] > 3", "has no geometry")]                  // geometry-free, one given
    [InlineData("fixed_point.gradient.cosine[fisher] < 0", "FixedPointProbe")]   // no fixed-point probe
    public void A_rule_that_can_never_fire_is_refused_with_the_reason(string text, string reason)
    {
        var ex = Assert.Throws<ArgumentException>(() => With(StoppingRule.Parse(text)).ValidateTogether());
        Assert.Contains(reason, ex.Message);
        Assert.Equal("Stopping", ex.ParamName);
    }

    [Fact]
    public void A_geometry_the_session_does_not_compute_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            With(StoppingRule.Parse("gradient.cosine[adaptive] < 0"), Geometry.Euclidean | Geometry.Fisher).ValidateTogether());
        Assert.Contains("computes only euclidean, fisher", ex.Message);
    }

    [Theory]
    [InlineData("gradient.cosine[fisher] < 0")]
    [InlineData("step.gradient.gsnr < 0.01")]
    [InlineData("gradient.cosine.smoothed.stderr[euclidean] > 0.2")]
    [InlineData("val.loss > 2")]   // a reported value: any name
    public void Rules_that_can_fire_are_accepted(string text) => With(StoppingRule.Parse(text)).ValidateTogether();

    [Theory]
    [InlineData("regret.relatve", "regret.relative")]
    [InlineData("gradient.cosin", "gradient.cosine")]
    [InlineData("step.gradient.gsrn", "step.gradient.gsnr")]
    [InlineData("training.los", "training.loss")]
    public void A_name_a_few_letters_from_a_published_one_is_a_likely_typo(string monitor, string meant) =>
        Assert.Equal(meant, MonitorCheck.LikelyMeant(monitor));

    [Theory]
    [InlineData("val.loss")]
    [InlineData("val.accuracy")]
    [InlineData("gradient.cosine")]   // known: not a typo
    public void Other_names_are_not_typos(string monitor) => Assert.Null(MonitorCheck.LikelyMeant(monitor));

    [Fact]
    public void Environment_errors_name_their_variable_even_when_the_option_refuses_the_value()
    {
        var values = new Dictionary<string, string> { ["TRAININGPROBES_WINDOW_SIZE"] = "30000" };
        var ex = Assert.Throws<ArgumentException>(() => ProbeOptions.FromEnvironment(name => values.GetValueOrDefault(name)));
        Assert.StartsWith("TRAININGPROBES_WINDOW_SIZE is '30000'", ex.Message);
        Assert.Contains("4096", ex.Message);
    }
}

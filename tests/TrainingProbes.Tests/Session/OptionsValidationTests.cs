namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>Wrong settings fail early, with a message that names the setting.</summary>
public sealed class OptionsValidationTests
{
    [Fact]
    public void WindowSizeOfOneIsRejected()
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { WindowSize = 1 });
        Assert.Equal(nameof(ProbeOptions.WindowSize), ex.ParamName);
        Assert.Contains("WindowSize", ex.Message);
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(1.5)]
    [InlineData(-0.1)]
    [InlineData(double.NaN)]
    public void FisherDecayOutsideZeroToOneIsRejected(double decay)
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { FisherDecay = decay });
        Assert.Equal(nameof(ProbeOptions.FisherDecay), ex.ParamName);
        Assert.Contains("FisherDecay", ex.Message);
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(0.0)]
    [InlineData(double.NaN)]
    public void RegretQuantileOutsideTheOpenIntervalIsRejected(double quantile)
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new ProbeOptions { RegretQuantile = quantile });
        Assert.Equal(nameof(ProbeOptions.RegretQuantile), ex.ParamName);
        Assert.Contains("RegretQuantile", ex.Message);
    }

    [Fact]
    public void IntervalBelowWindowSizeIsRejectedAtAttach()
    {
        // Each value is fine alone, and together without the step family (one-step windows).
        var options = new ProbeOptions { WindowSize = 8, Interval = 4, Output = null, OverheadBudget = null, StepStatistics = true };
        using var model = new LinearRegressionModel(3, [1.0, 2.0, 3.0]);

        var ex = Assert.ThrowsAny<ArgumentException>(() => ProbeSession.Attach(model, options));
        Assert.Contains("Interval", ex.Message);

        // The failed attach left nothing behind: a valid session can be attached to the same model.
        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 4, Interval = 4, Output = null, OverheadBudget = null });
        Assert.Equal(3, session.ParameterNames.Count);
    }

    [Fact]
    public void ParameterFilterSelectingNothingIsRejectedAtAttach()
    {
        var options = new ProbeOptions { WindowSize = 2, Interval = 2, Output = null, OverheadBudget = null, ParameterFilter = _ => false };
        using var model = new LinearRegressionModel(3, [1.0, 2.0, 3.0]);

        var ex = Assert.ThrowsAny<ArgumentException>(() => ProbeSession.Attach(model, options));
        Assert.Contains("ParameterFilter", ex.Message);

        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 2, Interval = 2, Output = null, OverheadBudget = null });
        Assert.Equal(3, session.ParameterNames.Count);
    }

    [Fact]
    public void ParameterFilterSelectingOnlyAFrozenParameterIsRejectedAtAttach()
    {
        var options = new ProbeOptions
        {
            WindowSize = 2, Interval = 2, Output = null, OverheadBudget = null, ParameterFilter = name => name == LinearRegressionModel.FrozenName,
        };
        using var model = new LinearRegressionModel(3, [1.0, 2.0, 3.0]);

        var ex = Assert.ThrowsAny<ArgumentException>(() => ProbeSession.Attach(model, options));
        Assert.Contains("ParameterFilter", ex.Message);
    }
}

using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>User probes: a failing one does not stop training; a custom one reports next to the built-in values.</summary>
public sealed class UserProbeTests
{
    private const int Inputs = 5;
    private const int Batch = 4;
    private const double LearningRate = 0.05;

    private sealed class ThrowingProbe : TrainingProbe
    {
        public int Calls { get; private set; }

        public override string Name => "throwing";

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            Calls++;
            throw new InvalidOperationException("a user probe failed");
        }
    }

    /// <summary>Reports the sum of the window's first micro-batch gradient over all watched parameters.</summary>
    private sealed class FirstGradientSumProbe : TrainingProbe
    {
        public const string ValueName = "custom.first_grad_sum";

        public override string Name => "custom";

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            var total = torch.zeros(1, dtype: ScalarType.Float64);
            foreach (var name in window.ParameterNames)
                total = total + window.Gradients(name)[0].sum();
            window.Report(ValueName, total);
        }
    }

    [Fact]
    public void ThrowingProbeDoesNotStopTraining()
    {
        var throwing = new ThrowingProbe();
        var options = new ProbeOptions { WindowSize = 3, Interval = 4, Output = null, OverheadBudget = null, Probes = [throwing], Strict = false, StepStatistics = true };
        const int windows = 3;
        int steps = windows * options.Interval;
        var data = new RegressionData(Inputs, Batch, steps, seed: 77);

        using var model = new LinearRegressionModel(Inputs, data.UnusedValues);
        var (weight, bias) = RegressionTraining.InitialParameters(model);
        var optimizer = new GcSafeSgd(model.parameters(), LearningRate);
        using var session = ProbeSession.Attach(model, options, optimizer);

        RegressionTraining.Train(model, session, optimizer, data, steps);   // must not throw

        Assert.Equal(steps, session.StepCount);
        Assert.Equal(windows, throwing.Calls);
        Assert.True(session.FailureCount >= windows, $"FailureCount is {session.FailureCount}, expected at least {windows}.");

        var expected = RegressionReplay.Run(data, weight, bias, LearningRate, steps, options);
        session.Flush();
        var history = session.History;
        Assert.Equal(windows, history.Count);
        for (int w = 0; w < windows; w++)
            LinearRegressionIndicatorTests.AssertWindow(expected[w], history[w], options.WindowSize, $"window {w} with a failing probe");
        Assert.DoesNotContain(history[^1].Values, v => v.Probe == throwing.Name);
    }

    [Fact]
    public void CustomProbeReportsFromTheWindowGradients()
    {
        var custom = new FirstGradientSumProbe();
        var options = new ProbeOptions
        {
            WindowSize = 3, Interval = 5, Output = null, OverheadBudget = null, Probes = [custom], StepStatistics = true,
            Loss = (output, target) => (output - target).pow(RegressionTraining.Two).mean(),
        };
        const int windows = 2;
        int steps = windows * options.Interval;
        var data = new RegressionData(Inputs, Batch, steps, seed: 78);

        using var model = new LinearRegressionModel(Inputs, data.UnusedValues);
        var (weight, bias) = RegressionTraining.InitialParameters(model);
        var optimizer = new GcSafeSgd(model.parameters(), LearningRate);
        using var session = ProbeSession.Attach(model, options, optimizer);

        RegressionTraining.Train(model, session, optimizer, data, steps, passBatch: true);

        Assert.Equal(0, session.FailureCount);
        var expected = RegressionReplay.Run(data, weight, bias, LearningRate, steps, options);
        session.Flush();
        var history = session.History;
        Assert.Equal(windows, history.Count);
        for (int w = 0; w < windows; w++)
        {
            var reported = Assert.Single(history[w].Values, v => v.Name == FirstGradientSumProbe.ValueName);
            Assert.Equal(custom.Name, reported.Probe);
            Assert.Equal(Geometry.None, reported.Geometry);
            Close.Assert(expected[w].FirstMicroBatchSum, reported.Value, 1e-9, $"window {w}: {FirstGradientSumProbe.ValueName}");
            Close.Assert(expected[w].FirstMicroBatchSum, history[w].Get(FirstGradientSumProbe.ValueName), 1e-9, $"window {w}: Get");

            // The built-in values are still there, reported by the built-in probes, not by the custom one.
            Assert.Contains(history[w].Values, v => v.Name == StepNames.Step(Indicators.Cosine) && v.Probe != custom.Name);
        }
    }
}

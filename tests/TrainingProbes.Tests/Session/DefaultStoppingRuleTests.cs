using Microsoft.Extensions.Logging;
using TorchSharp;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Session;

/// <summary>
/// The default rule chosen on the evidence matrix: a validation-loss plateau of 5 reports, acting only when the trainer
/// reports <c>val.loss</c>, a fresh copy per session, and a stop line that carries the probes' smoothed values.
/// </summary>
public sealed class DefaultStoppingRuleTests
{
    private static readonly Classification Batches = new(Features: 6, Classes: 3, Batch: 32);

    private static (nn.Module<Tensor, Tensor> Model, optim.Optimizer Optimizer) Model() => SmallModel(seed: 11, inputs: 6, hidden: 16);

    [Fact]
    public void Options_carry_one_validation_plateau_rule_and_the_environment_keeps_it_unless_told_none()
    {
        var rule = Assert.IsType<EarlyStopping>(Assert.Single(new ProbeOptions().Stopping));
        Assert.Equal("val.loss", rule.Monitor);
        Assert.Equal(5, rule.Patience);
        Assert.Equal(StoppingMode.Min, rule.EffectiveMode);
        Assert.False(rule.RestoreBestWeights);

        Assert.Equal("val.loss", Assert.Single(ProbeOptions.FromEnvironment(_ => null).Stopping).Monitor);
        Assert.Empty(ProbeOptions.FromEnvironment(name => name == "TRAININGPROBES_STOP" ? "none" : null).Stopping);
        var given = Assert.Single(ProbeOptions.FromEnvironment(name => name == "TRAININGPROBES_STOP" ? "training.loss is not finite" : null).Stopping);
        Assert.Equal("training.loss", given.Monitor);
    }

    [Fact]
    public void A_trainer_that_reports_no_validation_loss_is_never_stopped_nor_warned()
    {
        var (model, optimizer) = Model();
        var logger = new ListLogger();
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions { Output = output, OverheadBudget = null, Interval = 5, LoggerFactory = new ListLoggerFactory(logger), Loss = (output, target) => nn.functional.cross_entropy(output, target) }, optimizer);
        Train(model, optimizer, 120, new Generator(2), (loss, x, y) => session.Step(loss, x, y), Batches);
        session.Report("val.accuracy", 0.5);   // another reported value is no business of the default rule
        session.Flush();

        Assert.False(session.ShouldStop);
        Assert.True(session.Latest!.Window >= 10);
        Assert.DoesNotContain(logger.Messages, m => m.Contains("val.loss", StringComparison.Ordinal));
        Assert.DoesNotContain("val.loss", output.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Two_sessions_of_one_options_object_each_count_their_own_reports()
    {
        var options = new ProbeOptions { Output = null, OverheadBudget = null, Interval = 5 };
        var (first, firstOptimizer) = Model();
        var (second, secondOptimizer) = Model();
        using var a = ProbeSession.Attach(first, options, firstOptimizer);
        using var b = ProbeSession.Attach(second, options, secondOptimizer);
        Assert.NotSame(a.Rules[0], b.Rules[0]);
        Assert.NotSame(options.Stopping[0], a.Rules[0]);

        // Session a sees a plateau: 1.0, then five reports that do not improve (patience 5 fires on the fifth).
        // Session b improves at each report. Sharing one rule object would have mixed the two sequences.
        double[] plateau = [1.0, 1.1, 1.2, 1.0, 1.05, 1.3];
        for (int i = 0; i < plateau.Length; i++)
        {
            Train(first, firstOptimizer, 2, new Generator((ulong)i), (loss, x, y) => a.Step(loss, x, y), Batches);
            Train(second, secondOptimizer, 2, new Generator((ulong)i), (loss, x, y) => b.Step(loss, x, y), Batches);
            a.Report("val.loss", plateau[i]);
            b.Report("val.loss", 1.0 - 0.1 * i);
            Assert.Equal(i == plateau.Length - 1, a.ShouldStop);
            Assert.False(b.ShouldStop);
        }
    }

    [Fact]
    public void The_stop_line_reads_the_probes_smoothed_values_and_their_spread_at_the_stop()
    {
        var (model, optimizer) = Model();
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions { Output = output, OverheadBudget = null, Interval = 5, Loss = (output, target) => nn.functional.cross_entropy(output, target) }, optimizer);
        var fired = new List<string>();
        session.RuleFired += (_, e) => fired.Add(e.Probes);
        var generator = new Generator(4);
        for (int report = 0; report < 6 && !session.ShouldStop; report++)
        {
            Train(model, optimizer, 25, generator, (loss, x, y) => session.Step(loss, x, y), Batches);
            session.Flush();   // the window's statistics are published before the report, so the line can read them
            session.Report("val.loss", 2.0 + report);   // never improves after the first: fires at the sixth report
        }

        Assert.True(session.ShouldStop);
        var latest = session.Latest!;
        Assert.Contains(fired, line => line.Contains("gradient.cosine[euclidean] ", StringComparison.Ordinal));
        string line = output.ToString().Split('\n').Single(l => l.Contains("[probes] stop at step", StringComparison.Ordinal));
        Assert.Contains($"the probes at step {latest.Step}", line, StringComparison.Ordinal);
        foreach (var (name, geometry, label) in new[]
        {
            (Indicators.Cosine, Geometry.Euclidean, "gradient.cosine[euclidean]"),
            (Indicators.ExampleSnr, Geometry.Euclidean, "gradient.snr_per_example[euclidean]"),
        })
        {
            Assert.True(latest.TryGetValue(name + Indicators.SmoothedSuffix, geometry, out double value));
            Assert.True(latest.TryGetValue(name + Indicators.SpreadSuffix, geometry, out double spread));
            string expected = $"{label} {value.ToString("G3", System.Globalization.CultureInfo.InvariantCulture)}±{spread.ToString("G2", System.Globalization.CultureInfo.InvariantCulture)}";
            Assert.Contains(expected, line, StringComparison.Ordinal);
        }
    }

    private sealed class ListLoggerFactory(ILogger logger) : ILoggerFactory
    {
        public void AddProvider(ILoggerProvider provider) { }

        public ILogger CreateLogger(string categoryName) => logger;

        public void Dispose() { }
    }

    private sealed class ListLogger : ILogger
    {
        public List<string> Messages { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Messages.Add(formatter(state, exception));
    }
}

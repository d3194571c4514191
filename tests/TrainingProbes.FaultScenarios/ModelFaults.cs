using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.FaultScenarios;

/// <summary>Faults that come from the model: parameters frozen, unused, replaced or moved after attach.</summary>
internal static class ModelFaults
{
    private static bool Has(ProbeSnapshot? snapshot, string name) =>
        snapshot is not null && snapshot.Values.Any(v => v.Name == name && double.IsFinite(v.Value));

    [Scenario("12.1: a parameter is frozen mid-run while the fixed-point probe takes autograd.grad of every watched parameter")]
    private static void FrozenParameterMidRun()
    {
        var log = new LogCollector();
        var model = new Net(1);
        var probe = new FixedPointProbe(new FixedPointOptions { Loss = Data.Loss, WindowSize = 4, Every = 1, Curvature = false });
        using var session = ProbeSession.Attach(model, Options.Small(log, probes: [probe]));
        var trainer = new Trainer(model, session)
        {
            AfterBackward = step => { if (step == 25) model.First.weight!.requires_grad_(false); },
        };
        trainer.Run(0, 80);
        Check.That(trainer.StepsRun == 80, $"training ran {trainer.StepsRun} of 80 steps");
        var after = session.History.Where(s => s.Step > 30).ToList();
        Check.That(after.Count >= 4, $"{after.Count} windows published after the freeze");
        Check.That(after.All(s => Has(s, FixedPointProbe.Prefix + Indicators.Cosine)),
            "the fixed-point probe publishes its cosine for the parameters that still train after one is frozen; failures: " + string.Join(" / ", log.Warnings.Take(2)));
    }

    [Scenario("12.2: a parameter the loss does not use (its Hessian block is an expanded stride-0 zero) with the curvature estimates on")]
    private static void UnusedParameterCurvature()
    {
        var log = new LogCollector();
        var model = new Net(1, unusedLayer: true);
        var probe = new FixedPointProbe(new FixedPointOptions { Loss = Data.Loss, WindowSize = 4, Every = 1, Curvature = true, PowerIterations = 10, TraceSamples = 4 });
        using var session = ProbeSession.Attach(model, Options.Small(log, probes: [probe]));
        new Trainer(model, session).Run(0, 40);
        Check.That(session.FailureCount == 0, $"{session.FailureCount} failures: " + string.Join(" / ", log.Warnings.Take(2)));
        // The curvature values are published under their own names (curvature.*), without the probe's fixed_point. prefix.
        Check.That(Has(session.Latest, Indicators.CurvatureLambdaMax), "curvature.lambda_max is published");
        Check.That(Has(session.Latest, Indicators.CurvatureTrace), "curvature.trace is published");
        Check.That(Has(session.Latest, Indicators.CurvatureContrastive), "curvature.contrastive is published");
    }

    [Scenario("12.9: a layer's weight is replaced by a new Parameter after attach (the trainer builds a new optimizer)")]
    private static void ParameterReplacedAfterAttach()
    {
        var log = new LogCollector();
        var model = new Net(1);
        using var session = ProbeSession.Attach(model, Options.Small(log));
        new Trainer(model, session).Run(0, 25);
        model.First.weight = new Parameter(torch.randn([16, Data.Features]) * 0.1);
        new Trainer(model, session).Run(25, 80);
        CheckNothingStale(session, log, after: 30);
    }

    [Scenario("12.9: a layer's weight is replaced in the middle of a window (after its second step)")]
    private static void ParameterReplacedMidWindow()
    {
        var log = new LogCollector();
        var model = new Net(1);
        using var session = ProbeSession.Attach(model, Options.Small(log, steps: true));
        new Trainer(model, session).Run(0, 22);   // window 2 is steps 20 to 23 (with the step family; a default window is one step)
        model.First.weight = new Parameter(torch.randn([16, Data.Features]) * 0.1);
        new Trainer(model, session).Run(22, 80);
        Check.That(session.History.Single(s => s.Window == 2).Values.Count == 0, "the window the replacement cut through publishes no values");
        CheckNothingStale(session, log, after: 20);
    }

    [Scenario("12.9: the model is converted to float64 after attach")]
    private static void ModelConvertedAfterAttach()
    {
        var log = new LogCollector();
        var model = new Net(1);
        using var session = ProbeSession.Attach(model, Options.Small(log));
        new Trainer(model, session).Run(0, 25);
        model.to(ScalarType.Float64);
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        for (int step = 25; step < 80; step++)
        {
            using var scope = torch.NewDisposeScope();
            var (x, y) = Data.Batch(step);
            x = x.to(ScalarType.Float64);
            optimizer.zero_grad();
            var loss = Data.Loss(model.call(x), y);
            loss.backward();
            session.Step(loss, x, y);
            optimizer.step();
        }

        session.Flush();
        CheckNothingStale(session, log, after: 30);
    }

    [Scenario("12.9: a module is added to the model after attach")]
    private static void ModuleAddedAfterAttach()
    {
        var log = new LogCollector();
        var model = new Net(1);
        using var session = ProbeSession.Attach(model, Options.Small(log));
        new Trainer(model, session).Run(0, 25);
        model.register_module("late", nn.Linear(4, 4));
        new Trainer(model, session).Run(25, 60);
        bool watched = session.ParameterNames.Any(n => n.StartsWith("late", StringComparison.Ordinal));
        bool said = log.Entries.Any(e => e.Message.Contains("late", StringComparison.Ordinal));
        Check.That(watched || said, "a module added after attach is either watched or reported as not watched; parameters watched: " + string.Join(", ", session.ParameterNames));
    }

    /// <summary>
    /// After the model changed under the session, each window either publishes values of the model as it is now, or
    /// publishes none and says why; a gauge never shows a value of the model as it was.
    /// </summary>
    private static void CheckNothingStale(ProbeSession session, LogCollector log, long after)
    {
        var later = session.History.Where(s => s.Step > after).ToList();
        Check.That(later.Count >= 3, $"{later.Count} windows published after the change");
        Check.That(later.All(s => s.Failures.Count > 0 || Has(s, Indicators.Cosine)), "every window after the change either has gradient values or says why not");
        var latest = session.Latest!;
        string step = "step." + Indicators.Cosine;
        bool current = Has(latest, Indicators.Cosine) && Has(latest, step);
        if (!current)
        {
            Check.That(session.FailureCount > 0 && log.Warnings.Any(), "a window without gradient values counts and logs why");
            Check.That(latest.Failures.Count > 0, "a window without gradient values says so in its snapshot");
        }

        var gauges = Gauges.Read();
        foreach (var (name, geometry, value) in gauges.Where(g => g.Name.Contains("cosine", StringComparison.Ordinal)))
        {
            bool inLatest = latest.Values.Any(v => TrainingProbesMeter.InstrumentPrefix + v.Name == name
                && (v.Geometry == Geometry.None ? geometry is null : v.Geometry.ToString().Equals(geometry, StringComparison.OrdinalIgnoreCase))
                && (v.Value.Equals(value)));
            Check.That(inLatest, $"the gauge {name}[{geometry}] = {value} is not a value of the latest window (step {latest.Step}): a stale value shown as current");
        }
    }
}

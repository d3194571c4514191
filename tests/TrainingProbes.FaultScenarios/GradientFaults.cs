using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.FaultScenarios;

/// <summary>Faults in the gradients: coordinates whose K gradients are equal, NaN gradients.</summary>
internal static class GradientFaults
{
    [Scenario("12.3: a parameter only in an L2 term has K exactly equal gradients at one theta; GSNR and EB must not explode")]
    private static void EqualGradientsInGsnr()
    {
        // The loss adds 0.5 |c|^2 of a parameter the network does not use: its gradient is c in every minibatch. Its
        // coordinates have no variance across minibatches; the GSNR of the other coordinates must not change.
        Dictionary<string, double> Run(bool watchDecayed)
        {
            var log = new LogCollector();
            var model = new Net(1);
            var decayed = new Parameter(torch.linspace(-1, 1, 40).reshape(8, 5) * 0.37);
            model.register_parameter("decayed", decayed);
            Tensor Loss(Tensor output, Tensor target) => Data.Loss(output, target) + 0.5 * decayed.pow(2).sum();
            var options = Options.Small(log, loss: Loss, filter: watchDecayed ? null : name => name != "decayed");
            using var session = ProbeSession.Attach(model, options);
            var optimizer = new GcSafeSgd(model.parameters(), 0.05);
            for (int step = 0; step < 40; step++)
            {
                using var scope = torch.NewDisposeScope();
                var (x, y) = Data.Batch(step);
                optimizer.zero_grad();
                var loss = Loss(model.call(x), y);
                loss.backward();
                session.Step(loss, x, y);
                optimizer.step();
            }

            session.Flush();
            Check.That(session.FailureCount == 0, string.Join(" / ", log.Warnings.Take(2)));
            return session.Latest!.Values.Where(v => v.Name is Indicators.Gsnr or Indicators.EbCriterion && v.Layer is null)
                .ToDictionary(v => v.Name, v => v.Value);
        }

        // GSNR is the mean of per-coordinate ratios over all N watched coordinates, and a coordinate whose K values are
        // equal counts as 0 (GsnrStatistics): watching the 40 constant coordinates scales the mean by N / (N + 40), and EB
        // (-K GSNR) with it. The two runs train the network identically (the L2 term touches only its own parameter).
        var with = Run(watchDecayed: true);
        var without = Run(watchDecayed: false);
        Check.That(with.Count == 2 && without.Count == 2, $"GSNR and EB published: {with.Count}, {without.Count}");
        double network = new Net(1).parameters().Sum(p => p.numel());
        double scale = network / (network + 40);
        foreach (var (name, value) in without)
            Check.That(double.IsFinite(with[name]) && Math.Abs(with[name] - value * scale) <= 1e-6 * Math.Abs(value),
                $"{name} = {with[name]} with the L2-only parameter watched; {value} x {network} / {network + 40} = {value * scale} expected (its coordinates count as 0)");
    }

    [Scenario("12.4: one NaN gradient on one captured step (the trainer skips that optimizer step)")]
    private static void NanGradientInOneStep()
    {
        const int poisoned = 21;   // the second step of window 2 (steps 20 to 23)
        IReadOnlyList<ProbeSnapshot> Run(bool poison, LogCollector log)
        {
            var model = new Net(1);
            using var session = ProbeSession.Attach(model, Options.Small(log, steps: true));
            var trainer = new Trainer(model, session)
            {
                AfterBackward = step =>
                {
                    if (!poison || step != poisoned) return;
                    using var _ = torch.no_grad();
                    model.First.weight!.grad![0, 0] = torch.tensor(double.NaN);
                },
                StepOptimizer = step => step != poisoned,
            };
            trainer.Run(0, 100);
            return session.History;
        }

        var clean = Run(poison: false, new LogCollector());
        var log = new LogCollector();
        var windows = Run(poison: true, log);
        var hit = windows.Single(s => s.Window == 2);
        string stepCosine = "step." + Indicators.Cosine;
        Check.That(!hit.TryGetValue(stepCosine, Geometry.Euclidean, out double cosine) || double.IsNaN(cosine),
            $"the window with a NaN gradient publishes step.gradient.cosine = {cosine}, a finite value computed from NaN");
        Check.That(hit.Failures.Count > 0, "the window with a non-finite gradient says so in its snapshot");
        // The default indicators recompute their gradients from the closing step's batch, not from .grad: unharmed.
        Check.That(hit.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out double own) && double.IsFinite(own),
            $"the default cosine of window 2 is {own}: it does not read the poisoned .grad and should be finite");
        foreach (var later in windows.Where(s => s.Window > 2))
        {
            var reference = clean.Single(s => s.Window == later.Window);
            foreach (var value in reference.Values.Where(v => double.IsFinite(v.Value) && v.Name.StartsWith("step.", StringComparison.Ordinal)))
                Check.That(later.TryGetValue(value.Name, value.Geometry, out double poisonedValue, value.Layer) && double.IsFinite(poisonedValue),
                    $"window {later.Window}: {value.Name}[{value.Geometry}] is finite in the clean run and not after one NaN gradient in window 2");
        }
    }
}

using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// A small MLP (6-16-3) trained on random inputs and labels with a session attached: the published history, for tests
/// that recompute a smoothed value from the windows' own values.
/// </summary>
internal static class SmallRun
{
    public static Tensor Loss(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

    /// <summary>Trains <paramref name="steps"/> steps of batch 32 under the session <paramref name="options"/> makes (its loss function given); returns the history after a flush.</summary>
    public static IReadOnlyList<ProbeSnapshot> History(int seed, double learningRate, int steps, Func<Func<Tensor, Tensor, Tensor>, ProbeOptions> options)
    {
        var model = Trainer.Mlp(seed, inputs: 6, hidden: 16, classes: 3);
        var optimizer = new GcSafeSgd(model.parameters(), learningRate);
        using var session = ProbeSession.Attach(model, options(Loss), optimizer);
        // Random inputs and labels from the global generator, which Mlp seeded.
        Trainer.Train(model, optimizer, 0, steps, _ => (torch.randn(32, 6), torch.randint(0, 3, [32])), (loss, x, y) => session.Step(loss, x, y), Loss);

        session.Flush();
        return session.History;
    }
}

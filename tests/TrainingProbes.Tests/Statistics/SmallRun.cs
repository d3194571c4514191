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
        torch.manual_seed(seed);
        var model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3));
        var optimizer = new GcSafeSgd(model.parameters(), learningRate);
        using var session = ProbeSession.Attach(model, options(Loss), optimizer);
        for (int step = 0; step < steps; step++)
        {
            using var scope = torch.NewDisposeScope();
            var input = torch.randn(32, 6);
            var target = torch.randint(0, 3, [32]);
            optimizer.zero_grad();
            var loss = Loss(model.call(input), target);
            loss.backward();
            session.Step(loss, input, target);
            optimizer.step();
        }

        session.Flush();
        return session.History;
    }
}

using TorchSharp;
using TrainingProbes.Stopping;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Session;

/// <summary>A run saved and resumed publishes what an uninterrupted run publishes.</summary>
public sealed class ResumeTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("trainingprobes-resume-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static nn.Module<Tensor, Tensor> Model(int seed)
    {
        torch.manual_seed(seed);
        return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3));
    }

    private static ProbeOptions Options() => new()
    {
        RunId = "resume", WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null, HistoryCapacity = 100,
        Loss = (output, target) => nn.functional.cross_entropy(output, target),
        Stopping = [new EarlyStopping(Indicators.Cosine) { Geometry = Geometry.Fisher, Patience = 2, Action = RuleAction.Warn }],
    };

    /// <summary>Trains steps [from, to): each step's minibatch depends only on its index.</summary>
    private static void Train(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, ProbeSession session, int from, int to)
    {
        var task = new Classification(Features: 6);
        Trainer.Train(model, optimizer, from, to, step => task.AtStep(step, seed: 1000), (loss, x, y) => session.Step(loss, x, y));
        session.Flush();
    }

    /// <summary>A snapshot's values without the ones that measure time.</summary>
    private static Dictionary<string, double> Values(ProbeSnapshot snapshot) => snapshot.Values
        .Where(v => !v.Name.StartsWith("probe.overhead", StringComparison.Ordinal))
        .ToDictionary(v => $"{v.Name}[{v.Geometry}]{v.Layer}", v => v.Value);

    [Fact]
    public void A_resumed_session_publishes_the_same_values_and_takes_the_same_decisions_as_an_uninterrupted_one()
    {
        // Uninterrupted: 100 steps.
        var full = Model(1);
        var fullOptimizer = new GcSafeSgd(full.parameters(), 0.1);
        using var uninterrupted = ProbeSession.Attach(full, Options(), fullOptimizer);
        Train(full, fullOptimizer, uninterrupted, 0, 100);

        // Interrupted after 50 steps: the weights and the probe state are saved ...
        var first = Model(1);
        var firstOptimizer = new GcSafeSgd(first.parameters(), 0.1);
        string path = Path.Combine(_folder, "probes.safetensors");
        Tensor[] weights;
        using (var before = ProbeSession.Attach(first, Options(), firstOptimizer))
        {
            Train(first, firstOptimizer, before, 0, 50);
            before.SaveState(path);
            weights = first.parameters().Select(p => p.detach().clone()).ToArray();
        }

        // ... and loaded into a new process's model and session, which trains the other 50.
        var second = Model(2);
        using (torch.no_grad())
            foreach (var (p, w) in second.parameters().Zip(weights)) p.copy_(w);
        var secondOptimizer = new GcSafeSgd(second.parameters(), 0.1);
        using var resumed = ProbeSession.Attach(second, Options(), secondOptimizer);
        resumed.RestoreState(path);
        Assert.Equal(50, resumed.StepCount);
        Train(second, secondOptimizer, resumed, 50, 100);

        var expected = uninterrupted.History.Where(s => s.Step > 50).ToList();
        var actual = resumed.History;
        Assert.Equal(expected.Select(s => (s.Step, s.Window)), actual.Select(s => (s.Step, s.Window)));
        foreach (var (e, a) in expected.Zip(actual))
        {
            var want = Values(e);
            var got = Values(a);
            Assert.Equal(want.Keys.Order(), got.Keys.Order());
            foreach (var (name, value) in want)
                Assert.True(value.Equals(got[name]) || Math.Abs(value - got[name]) <= 1e-9 * Math.Max(1, Math.Abs(value)),
                    $"window {e.Window}, {name}: uninterrupted {value}, resumed {got[name]}");
        }

        Assert.Equal(uninterrupted.SaveStoppingState(), resumed.SaveStoppingState());
    }

    [Fact]
    public void Without_the_saved_state_the_resumed_values_differ()
    {
        // The control that shows the comparison above can fail: the Fisher average, the smoothed means and the rule's
        // counters all start over in a session that is not restored.
        var full = Model(1);
        var fullOptimizer = new GcSafeSgd(full.parameters(), 0.1);
        using var uninterrupted = ProbeSession.Attach(full, Options(), fullOptimizer);
        Train(full, fullOptimizer, uninterrupted, 0, 100);

        var second = Model(1);
        var secondOptimizer = new GcSafeSgd(second.parameters(), 0.1);
        using (var before = ProbeSession.Attach(second, Options(), secondOptimizer)) Train(second, secondOptimizer, before, 0, 50);
        using var fresh = ProbeSession.Attach(second, Options(), secondOptimizer);
        Train(second, secondOptimizer, fresh, 50, 100);

        // The first window after step 50 (window 5 of the run, window 0 of the fresh session).
        var e = Values(uninterrupted.History.First(s => s.Step > 50));
        var a = Values(fresh.History.First());
        Assert.NotEqual(e[$"{Indicators.Cosine}.smoothed[{Geometry.Euclidean}]"], a[$"{Indicators.Cosine}.smoothed[{Geometry.Euclidean}]"]);
        Assert.NotEqual(e[$"{Indicators.Cosine}[{Geometry.Fisher}]"], a[$"{Indicators.Cosine}[{Geometry.Fisher}]"]);
    }

    [Fact]
    public void A_state_saved_for_another_model_is_refused_and_changes_nothing()
    {
        var small = Model(1);
        string path = Path.Combine(_folder, "small.safetensors");
        using (var session = ProbeSession.Attach(small, Options()))
        {
            Train(small, new GcSafeSgd(small.parameters(), 0.1), session, 0, 30);
            session.SaveState(path);
        }

        torch.manual_seed(3);
        var other = nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 3));
        using var target = ProbeSession.Attach(other, Options());
        Train(other, new GcSafeSgd(other.parameters(), 0.1), target, 0, 7);
        var error = Assert.Throws<InvalidDataException>(() => target.RestoreState(path));
        Assert.Contains("parameters", error.Message);
        Assert.Equal(7, target.StepCount);
    }
}

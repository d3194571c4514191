using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Session;

/// <summary>A user's probe that implements <see cref="IStatefulPart"/> is saved and restored with the session's own state.</summary>
public sealed class UserProbeStateTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("trainingprobes-userstate-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    /// <summary>Counts windows and keeps a running sum of the first parameter tensor, as a tensor, across windows.</summary>
    private sealed class Accumulator(long[] shape) : TrainingProbe, IStatefulPart
    {
        public override string Name => "accumulator";

        public int Windows { get; private set; }

        public double[] Sum { get; private set; } = new double[shape.Aggregate(1L, (a, b) => a * b)];

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            Windows++;
            var first = window.Gradients(window.ParameterNames[0]).to(ScalarType.Float64).sum(dim: 0L).flatten().data<double>().ToArray();
            for (int i = 0; i < Sum.Length; i++) Sum[i] += first[i];
        }

        public string StateKey => Name;

        public void Save(SessionStateWriter state)
        {
            state.Set("windows", Windows);
            state.SetTensor("sum", torch.tensor(Sum, dtype: ScalarType.Float64).reshape(shape));
        }

        public Action Prepare(SessionStateReader state)
        {
            int windows = state.Get<int>("windows");
            var sum = state.GetTensor("sum", shape, ScalarType.Float64).flatten().data<double>().ToArray();
            return () => (Windows, Sum) = (windows, sum);
        }
    }

    /// <summary>Steps [from, to) on batches that depend only on the step's index.</summary>
    private static void Train(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, ProbeSession session, int from, int to)
    {
        var task = new Classification(Features: 6);
        Trainer.Train(model, optimizer, from, to, step => task.AtStep(step, seed: 2000), (loss, x, y) => session.Step(loss, x, y));
        session.Flush();
    }

    private static ProbeSession Attach(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, string runId, Accumulator probe) =>
        ProbeSession.Attach(model, new ProbeOptions
        {
            RunId = runId, WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null, Stopping = [],
            Loss = Trainer.CrossEntropy, Probes = [probe],
        }, optimizer);

    private static (nn.Module<Tensor, Tensor> Model, optim.Optimizer Optimizer, Accumulator Probe, ProbeSession Session) Start(string runId)
    {
        var (model, optimizer) = Trainer.SmallModel(seed: 5, inputs: 6, hidden: 12, learningRate: 0.1);
        var probe = new Accumulator([12, 6]);
        return (model, optimizer, probe, Attach(model, optimizer, runId, probe));
    }

    [Fact]
    public void A_user_probes_state_is_saved_and_restored_with_the_session()
    {
        var (fullModel, fullOptimizer, full, uninterrupted) = Start("full");
        using (uninterrupted) Train(fullModel, fullOptimizer, uninterrupted, 0, 60);

        // Saved after 30 steps; the model and optimizer are carried over as a checkpoint would carry them.
        var (model, optimizer, first, session) = Start("first");
        string path = Path.Combine(_folder, "state.safetensors");
        using (session)
        {
            Train(model, optimizer, session, 0, 30);
            session.SaveState(path);
        }
        var resumedProbe = new Accumulator([12, 6]);
        using var resumed = Attach(model, optimizer, "resumed", resumedProbe);
        resumed.RestoreState(path);
        Assert.Equal(first.Windows, resumedProbe.Windows);
        Assert.Equal(first.Sum, resumedProbe.Sum);
        Train(model, optimizer, resumed, 30, 60);

        // The resumed probe ends where the uninterrupted one did: its own state carried across.
        Assert.Equal(full.Windows, resumedProbe.Windows);
        for (int i = 0; i < full.Sum.Length; i++) Assert.Equal(full.Sum[i], resumedProbe.Sum[i], 1e-6);
    }

    [Fact]
    public void A_user_probe_whose_saved_state_does_not_fit_leaves_the_session_as_it_was()
    {
        var (model, optimizer, probe, session) = Start("saved");
        string path = Path.Combine(_folder, "state.safetensors");
        using (session)
        {
            Train(model, optimizer, session, 0, 20);
            session.SaveState(path);
        }

        // The same session shape, but the probe now keeps a tensor of another shape: its Prepare refuses the file.
        var wider = new Accumulator([12, 7]);
        using var other = Attach(model, optimizer, "other", wider);
        long steps = other.StepCount;
        var error = Assert.Throws<InvalidDataException>(() => other.RestoreState(path));
        Assert.Contains("accumulator/sum", error.Message);
        Assert.Equal(steps, other.StepCount);
        Assert.Equal(0, wider.Windows);
    }
}

using System.Runtime.CompilerServices;
using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Session;

public sealed class SessionLifetimeTests
{
    /// <summary>Trains a model with the one-line call, leaves its session undisposed, and returns weak references only.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (WeakReference Model, WeakReference Session, WeakReference Buffer) TrainAndDrop()
    {
        torch.manual_seed(5);
        var model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3));
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        var lossFunction = nn.CrossEntropyLoss();
        Train(model, optimizer, 120, seed: 7, onStep: (loss, x, y) => model.Probe(loss, optimizer, x, y, lossFunction.call), task: new Classification(Features: 6), loss: lossFunction.call);

        var session = ProbeSession.Get(model)!;
        session.Flush();   // the statistics of the last window may still run on the worker
        Assert.NotNull(session.Latest);   // windows closed: the buffers were used
        return (new WeakReference(model), new WeakReference(session), new WeakReference(session.Windows.Theta.Segments[0]));
    }

    [Fact]
    public void A_one_line_session_that_is_never_disposed_is_collected_with_its_model_and_buffers()
    {
        var (model, session, buffer) = TrainAndDrop();
        // The last window's statistics may still be running on the session's worker, which holds the session until then.
        for (int i = 0; i < 40 && (model.IsAlive || session.IsAlive || buffer.IsAlive); i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            if (i >= 4) Thread.Sleep(50);
        }

        Assert.False(model.IsAlive, "the model is still reachable after a full GC");
        Assert.False(session.IsAlive, "the session is still reachable after a full GC");
        Assert.False(buffer.IsAlive, "the session's gradient buffer is still reachable after a full GC");
    }

    /// <summary>A probe whose deferred work (on the session's worker) takes a while: a window's statistics in flight.</summary>
    private sealed class SlowStatistics(ManualResetEventSlim started) : TrainingProbe
    {
        public override string Name => "slow";

        public override void OnWindowClosed(ProbeWindowContext window) => window.Defer(() =>
        {
            started.Set();
            Thread.Sleep(1500);
        });
    }

    /// <summary>Trains until a window's job is running on the worker, leaves the session undisposed, returns weak references.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (WeakReference Model, WeakReference Session) DropWhileAJobRuns(ManualResetEventSlim started)
    {
        torch.manual_seed(5);
        var model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3));
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        var lossFunction = nn.CrossEntropyLoss();
        var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 5, OverheadBudget = null, Output = null, Loss = lossFunction.call, Probes = [new SlowStatistics(started)],
        }, optimizer);
        Train(model, optimizer, 5, seed: 7, onStep: (loss, x, y) => session.Step(loss, x, y), task: new Classification(Features: 6), loss: lossFunction.call);

        Assert.True(started.Wait(TimeSpan.FromSeconds(30)), "the window's job did not start");
        return (new WeakReference(model), new WeakReference(session));
    }

    [Fact]
    public void A_window_job_still_running_does_not_keep_an_abandoned_session_or_its_model_alive()
    {
        using var started = new ManualResetEventSlim();
        var (model, session) = DropWhileAJobRuns(started);
        GC.Collect();   // the job sleeps on the worker for 1.5 s: it is still running now
        GC.WaitForPendingFinalizers();
        GC.Collect();
        Assert.False(model.IsAlive, "the model is kept alive by its window's job running on the worker");
        Assert.False(session.IsAlive, "the session is kept alive by its window's job running on the worker");
    }
}

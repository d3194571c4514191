using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// A small MLP trained on a synthetic task, on its own thread (TorchSharp tensors stay on that thread), with a probe
/// session attached; runs a fixed number of steps, or until stopped. The session stays open until disposed.
/// </summary>
internal sealed class BackgroundTraining : IDisposable
{
    private readonly Thread _thread;
    private readonly CancellationTokenSource _stop = new();
    private readonly ManualResetEventSlim _attached = new();
    private readonly Func<ProbeOptions> _options;
    private readonly int _steps;
    private Exception? _error;
    private readonly int _holdAt;
    private readonly ManualResetEventSlim _released = new();

    /// <summary>Lets training go on past the step it holds at.</summary>
    public void Release() => _released.Set();

    /// <param name="options">The session's options.</param>
    /// <param name="steps">Steps to train.</param>
    /// <param name="seed">Seed of the weights and data.</param>
    /// <param name="holdAt">A step before which training waits until <see cref="Release"/> (so that work meant to overlap
    /// training does, however slow the machine), or -1.</param>
    public BackgroundTraining(Func<ProbeOptions> options, int steps = int.MaxValue, int seed = 1, int holdAt = -1)
    {
        _options = options;
        _steps = steps;
        _holdAt = holdAt;
        Seed = seed;
        _thread = new Thread(Run) { IsBackground = true, Name = "training" };
    }

    public int Seed { get; }

    public ProbeSession? Session { get; private set; }

    public long Steps => Session?.StepCount ?? 0;

    /// <summary>Starts training and waits until the session is attached; rethrows an attach failure.</summary>
    public BackgroundTraining Start()
    {
        _thread.Start();
        _attached.Wait(TimeSpan.FromSeconds(60));
        if (_error is not null) throw new InvalidOperationException("Training could not start: " + _error.Message, _error);
        return this;
    }

    /// <summary>Waits for the run to finish its steps (or to be stopped), and rethrows a training error.</summary>
    public void Join(TimeSpan timeout)
    {
        if (!_thread.Join(timeout)) throw new TimeoutException($"Training did not finish in {timeout}.");
        if (_error is not null) throw new InvalidOperationException("Training failed: " + _error.Message, _error);
    }

    private void Run()
    {
        try
        {
            // One intra-op thread: on a 2-core machine shared with Prometheus, HTTP clients and the test host, OpenMP's
            // spinning workers would otherwise fight for the cores and make step times erratic.
            torch.set_num_threads(1);
            torch.manual_seed(Seed);
            var generator = new Generator((ulong)Seed);
            var model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3));
            var optimizer = new GcSafeSgd(model.parameters(), 0.05, momentum: 0.9);
            var lossFunction = nn.CrossEntropyLoss();
            var teacher = torch.randn([16, 3], generator: generator);
            try
            {
                Session = ProbeSession.Attach(model, _options(), optimizer);
            }
            finally
            {
                _attached.Set();
            }

            var session = Session;
            for (int step = 0; step < _steps && !_stop.IsCancellationRequested; step++)
            {
                if (step == _holdAt) _released.Wait(TimeSpan.FromMinutes(2));
                using var scope = torch.NewDisposeScope();
                var x = torch.randn([32, 16], generator: generator);
                var y = x.mm(teacher).argmax(1);
                optimizer.zero_grad();
                var loss = lossFunction.call(model.call(x), y);
                loss.backward();
                session.Step(loss, x, y);
                optimizer.step();
            }

            session.Flush();
        }
        catch (Exception ex)
        {
            _error = ex;
            _attached.Set();
        }
    }

    /// <summary>Stops training, then ends the session (which stays open after the last step until now).</summary>
    public void Dispose()
    {
        _stop.Cancel();
        _released.Set();
        _thread.Join(TimeSpan.FromSeconds(30));
        Session?.Dispose();
    }
}

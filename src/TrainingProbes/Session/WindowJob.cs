using System.Diagnostics;
using TorchSharp;

namespace TrainingProbes.Session;

/// <summary>
/// The part of a closed window that reads only its buffers: the work the probes deferred
/// (<see cref="ProbeWindowContext.Defer"/>), then the window's transfer to the host and the callbacks that turn the
/// numbers into values. It runs on a worker (<see cref="ProbeOptions.BackgroundStatistics"/>) or inline, and never
/// throws: each failure is kept, with the probe it belongs to, for the training thread to count and log when it
/// publishes the window (the session's failure counter and events stay on that thread).
/// </summary>
internal sealed class WindowJob
{
    private readonly ProbeWindowContext _context;
    private readonly Task? _task;
    private readonly TimeProvider _clock;

    private WindowJob(ProbeWindowContext context, StatisticsWorker? worker, TimeProvider clock)
    {
        _context = context;
        _clock = clock;
        if (worker is not null) _task = worker.Run(Run);
        else Run();
    }

    /// <summary>Starts the job on <paramref name="worker"/>, or runs it now when there is none.</summary>
    /// <param name="context">The closed window.</param>
    /// <param name="worker">The session's worker, or null to run on this thread.</param>
    /// <param name="clock">The session's clock, which <see cref="Ticks"/> counts in (the overhead budget's ledger).</param>
    public static WindowJob Start(ProbeWindowContext context, StatisticsWorker? worker, TimeProvider clock) => new(context, worker, clock);

    /// <summary>The window's step and index, as the job took them (the context is not reused before it is published).</summary>
    public ProbeWindowContext Context => _context;

    /// <summary>Whether the job runs on the worker (its time is then charged when it is published).</summary>
    public bool InBackground => _task is not null;

    /// <summary>Whether the job has finished (an inline job always has).</summary>
    public bool IsCompleted => _task is null || _task.IsCompleted;

    /// <summary>Seconds per probe (and "transfer") that the job spent.</summary>
    public Dictionary<string, double> Seconds { get; } = [];

    /// <summary>All the job's time, in ticks of the session's clock.</summary>
    public long Ticks { get; private set; }

    /// <summary>What failed, in order, with the probe (or "transfer") it belongs to.</summary>
    public List<(string What, Exception Exception)> Failures { get; } = [];

    /// <summary>Waits until the job has finished.</summary>
    public void Wait() => _task?.Wait();

    private void Run()
    {
        long started = _clock.GetTimestamp();
        try
        {
            using var noGrad = torch.no_grad();
            using var scope = torch.NewDisposeScope();
            foreach (var (probe, work) in _context.Deferred)
            {
                long begun = Stopwatch.GetTimestamp();
                _context.CurrentProbe = probe;
                try
                {
                    work();
                }
                catch (Exception ex)
                {
                    Failures.Add((probe, ex));
                }

                Seconds[probe] = Seconds.GetValueOrDefault(probe) + Stopwatch.GetElapsedTime(begun).TotalSeconds;
            }

            long transfer = Stopwatch.GetTimestamp();
            try
            {
                _context.Resolve((probe, ex) => Failures.Add((probe, ex)));
            }
            catch (Exception ex)
            {
                Failures.Add(("transfer", ex));
            }

            Seconds["transfer"] = Stopwatch.GetElapsedTime(transfer).TotalSeconds;
        }
        catch (Exception ex)
        {
            Failures.Add(("session", ex));
        }
        finally
        {
            Ticks = _clock.GetTimestamp() - started;
        }
    }
}

using System.Collections.Concurrent;

namespace TrainingProbes.Session;

/// <summary>
/// The session's own background thread for window jobs (<see cref="ProbeOptions.BackgroundStatistics"/>), started at
/// the first job and ended with the session, or after a minute without work (a session that is never disposed leaves
/// no thread behind). One thread, so that torch's thread-local state (dispose scopes, grad mode) and the statistics
/// kernels' per-thread work space stay with it, and jobs run one at a time, in order. The thread holds no reference to
/// a job once it has run it: nothing it keeps alive reaches the session or the model.
/// </summary>
internal sealed class StatisticsWorker : IDisposable
{
    private readonly BlockingCollection<Action> _queue = new();
    private Thread? _thread;

    /// <summary>Runs <paramref name="work"/> on the worker; the task completes when it has (it never faults: catch inside).</summary>
    public Task Run(Action work)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_queue)
        {
            if (_thread is null || !_thread.IsAlive || _idle)
            {
                _thread?.Join();
                _idle = false;
                _thread = StartThread(_queue, this);
            }

            _queue.Add(() =>
            {
                try
                {
                    work();
                    done.SetResult();
                }
                catch (Exception ex)
                {
                    done.SetException(ex);
                }
            });
        }

        return done.Task;
    }

    /// <summary>The thread has decided to end (set under the queue's lock): the next job starts a new one.</summary>
    private bool _idle;

    /// <summary>
    /// Starts the loop. A method of its own: a lambda written in <see cref="Run"/> would share its closure with the job
    /// there, and the thread would keep that first job, its session and the model alive.
    /// </summary>
    private static Thread StartThread(BlockingCollection<Action> queue, StatisticsWorker owner)
    {
        var thread = new Thread(() => Loop(queue, owner)) { IsBackground = true, Name = "TrainingProbes statistics" };
        thread.UnsafeStart();   // no ExecutionContext: the trainer's AsyncLocal values stay off this thread
        return thread;
    }

    /// <summary>Runs <paramref name="read"/> on the worker and waits for its value (tests: the worker's thread-local counters).</summary>
    public T Read<T>(Func<T> read)
    {
        T value = default!;
        Run(() => value = read()).Wait();
        return value;
    }

    private static readonly TimeSpan IdleTimeout = TimeSpan.FromMinutes(1);

    private static void Loop(BlockingCollection<Action> queue, StatisticsWorker owner)
    {
        while (TakeAndRun(queue, owner))
        {
        }
    }

    /// <summary>
    /// Runs the next job, or returns false when there was none for <see cref="IdleTimeout"/>. A frame of its own, so that
    /// no stack slot of the waiting thread still holds the last job (and through it the session and the model).
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static bool TakeAndRun(BlockingCollection<Action> queue, StatisticsWorker owner)
    {
        if (queue.TryTake(out var work, IdleTimeout))
        {
            work();
            return true;
        }

        lock (queue)
        {
            if (queue.Count > 0) return true;
            owner._idle = true;
            return false;
        }
    }

    /// <summary>Lets the queued jobs finish and ends the thread.</summary>
    public void Dispose()
    {
        _queue.CompleteAdding();
        _thread?.Join();
        _queue.Dispose();
    }
}

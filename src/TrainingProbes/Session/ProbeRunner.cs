using System.Diagnostics;
using TorchSharp;

namespace TrainingProbes.Session;

/// <summary>
/// Runs the session's probes: starts them, calls them on captured steps and closed windows, ends them, each call
/// guarded (an exception is a counted, logged failure) and timed per probe. The times, with the capture, become the
/// training thread's part of the window's <see cref="ProbeSnapshot.ProbeSeconds"/> (the window's job adds its own).
/// </summary>
internal sealed class ProbeRunner
{
    private readonly TrainingProbe[] _probes;
    private readonly bool[] _started;
    private readonly long[] _ticks;   // per probe, then capture; reset per window
    private readonly ProbeFailures _failures;

    public ProbeRunner(IEnumerable<TrainingProbe> builtIn, IReadOnlyList<TrainingProbe> user, ProbeFailures failures)
    {
        _probes = [.. builtIn, .. user];
        var clash = _probes.GroupBy(p => p.Name).FirstOrDefault(g => g.Count() > 1);
        if (clash is not null)
            throw new ArgumentException($"A probe named '{clash.Key}' is already built in; give yours another Name.", "options");
        _started = new bool[_probes.Length];
        _ticks = new long[_probes.Length + 1];
        _failures = failures;
        // Steps outside a window cost nothing unless a user probe overrides OnStep (the built-in ones only act on
        // captured steps): then every step opens a dispose scope and calls the probes.
        ObservesEveryStep = user.Any(p =>
            p.GetType().GetMethod(nameof(TrainingProbe.OnStep), [typeof(ProbeStepContext)])?.DeclaringType != typeof(TrainingProbe));
    }

    /// <summary>Index of the capture's time in the timing table.</summary>
    public int Capture => _probes.Length;

    /// <summary>True when a user probe overrides <see cref="TrainingProbe.OnStep"/>: every step must call the probes.</summary>
    public bool ObservesEveryStep { get; }

    /// <summary>The probes, built-in first.</summary>
    public IReadOnlyList<TrainingProbe> Probes => _probes;

    /// <summary>
    /// Starts every probe. A <see cref="ProbeConfigurationException"/> ends the ones started and is rethrown: better
    /// now than a silent run without the probe. Other exceptions are failures.
    /// </summary>
    public void Start(ProbeSession session)
    {
        using var scope = torch.NewDisposeScope();
        for (int i = 0; i < _probes.Length; i++)
        {
            try
            {
                _probes[i].OnSessionStart(session);
                _started[i] = true;
            }
            catch (ProbeConfigurationException)
            {
                End();
                throw;
            }
            catch (Exception ex)
            {
                try
                {
                    _failures.Fail(_probes[i].Name, ex);
                }
                catch (ProbeFailureException)
                {
                    End();   // Strict: the session will not exist, so the probes started before this one end now
                    throw;
                }
            }
        }
    }

    /// <summary>Calls every started probe's step callback.</summary>
    public void Step(ProbeStepContext context)
    {
        for (int i = 0; i < _probes.Length; i++)
        {
            if (!_started[i]) continue;
            long started = Stopwatch.GetTimestamp();
            _failures.Guard(_probes[i].Name, static a => a.Probe.OnStep(a.Context), (Probe: _probes[i], Context: context));
            _ticks[i] += Stopwatch.GetTimestamp() - started;
        }
    }

    /// <summary>Calls every started probe's window callback.</summary>
    public void Window(ProbeWindowContext context)
    {
        for (int i = 0; i < _probes.Length; i++)
        {
            if (!_started[i]) continue;
            context.CurrentProbe = _probes[i].Name;
            long started = Stopwatch.GetTimestamp();
            _failures.Guard(_probes[i].Name, static a => a.Probe.OnWindowClosed(a.Context), (Probe: _probes[i], Context: context));
            _ticks[i] += Stopwatch.GetTimestamp() - started;
        }
    }

    /// <summary>Runs the capture <paramref name="action"/> guarded (failures under "capture"), timed under <see cref="Capture"/>.</summary>
    public void TimedCapture<T>(Action<T> action, T argument)
    {
        long started = Stopwatch.GetTimestamp();
        _failures.Guard("capture", action, argument);
        _ticks[Capture] += Stopwatch.GetTimestamp() - started;
    }

    /// <summary>The window's seconds per probe and capture on the training thread; the timing table starts over.</summary>
    /// <summary>Charges ticks measured elsewhere to the capture (the window's micro-batch passes).</summary>
    public void AddCaptureTicks(long ticks) => _ticks[Capture] += ticks;

    public Dictionary<string, double> TakeSeconds()
    {
        var seconds = new Dictionary<string, double>(_ticks.Length);
        for (int i = 0; i < _probes.Length; i++) seconds[_probes[i].Name] = Stopwatch.GetElapsedTime(0, _ticks[i]).TotalSeconds;
        seconds["capture"] = Stopwatch.GetElapsedTime(0, _ticks[Capture]).TotalSeconds;
        Array.Clear(_ticks);
        return seconds;
    }

    /// <summary>Ends every started probe (once).</summary>
    public void End()
    {
        using var scope = torch.NewDisposeScope();
        for (int i = 0; i < _probes.Length; i++)
        {
            if (!_started[i]) continue;
            _started[i] = false;
            _failures.Guard(_probes[i].Name, static p => p.OnSessionEnd(), _probes[i]);
        }
    }
}

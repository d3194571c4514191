using System.Text.RegularExpressions;
using TorchSharp;
using TrainingProbes.Capture;
using static TorchSharp.torch;

namespace TrainingProbes;

/// <summary>
/// What a probe sees of a closed window: its K micro-batch gradients (on their device) and a way to report values.
/// Values reported as tensors are gathered and moved to the host together, once per window and device, after all
/// probes have run. Each window has its own; do not keep it or the tensors it hands out past the window.
/// </summary>
public sealed partial class ProbeWindowContext
{
    private readonly ParameterLayout _layout;
    private readonly List<IndicatorValue> _values = [];
    private readonly List<PendingFetch> _pending = [];
    private readonly HashSet<string> _checkedNames = [];

    /// <param name="session">The window's session; null for a window measured outside training (<see cref="FixedPointProbe.Measure"/>).</param>
    /// <param name="layout">The watched parameters.</param>
    /// <param name="k">K, the window's number of gradients.</param>
    internal ProbeWindowContext(ProbeSession? session, ParameterLayout layout, int k)
    {
        _session = session;
        _weakSession = new WeakReference<ProbeSession>(session!);
        _sessionless = session is null;
        _layout = layout;
        WindowSize = k;
        ParameterNames = layout.Names;   // the layout's: a window context is made per window
    }

    /// <summary>The session.</summary>
    /// <exception cref="InvalidOperationException">Read by deferred work after the session and its model were collected.</exception>
    public ProbeSession Session => _session ?? (_weakSession.TryGetTarget(out var session) ? session
        : throw new InvalidOperationException(_sessionless
            ? "This window was measured outside a session (FixedPointProbe.Measure): it has no session."
            : "The session was collected while this window's statistics ran: nothing references its model any more."));

    private readonly bool _sessionless;

    private readonly WeakReference<ProbeSession> _weakSession;
    private ProbeSession? _session;

    /// <summary>
    /// While the window's job runs on the session's worker the context holds its session weakly, so that the worker
    /// (a GC root while it runs) does not keep an abandoned session and its model alive; the training thread holds it
    /// again when it publishes.
    /// </summary>
    internal void HoldSession(bool strongly)
    {
        if (!strongly)
        {
            _session = null;
            return;
        }

        if (_weakSession.TryGetTarget(out var session)) _session = session;
    }

    /// <summary>The model being trained.</summary>
    public nn.Module Model => Session.Model;

    /// <summary>Number of steps the session has seen when the window closed (the last captured step is <c>Step - 1</c>).</summary>
    public long Step { get; internal set; }

    /// <summary>Zero-based index of the window.</summary>
    public int Window { get; internal set; }

    /// <summary>The input of the step that closed the window, if it was passed to the step call.</summary>
    public Tensor? Input { get; internal set; }

    /// <summary>The target of the step that closed the window, if it was passed to the step call.</summary>
    public Tensor? Target { get; internal set; }

    /// <summary>K, the number of micro-batch gradients in the window.</summary>
    public int WindowSize { get; }

    /// <summary>Names of the watched parameters, in the order of <c>named_parameters()</c>.</summary>
    public IReadOnlyList<string> ParameterNames { get; }

    /// <summary>The window's micro-batch gradients, or null when the closing step could not give them.</summary>
    internal IWindowSource? MicroBatches { get; set; }

    internal string CurrentProbe { get; set; } = "";

    /// <summary>
    /// The window's K micro-batch gradients of one parameter, shaped [K, ...parameter shape], on the parameter's device:
    /// gradient k is the mean loss gradient of the k-th of K equal micro-batches of the closing step's batch, at the
    /// step's parameters. A new tensor, made when asked for (K copies of the parameter): the caller's dispose scope owns
    /// it.
    /// </summary>
    /// <param name="parameterName">A name from <see cref="ParameterNames"/>.</param>
    /// <exception cref="InvalidOperationException">This window has no micro-batch gradients (the step passed no batch or
    /// the session has no loss function), or the session keeps CountSketches of them (<see cref="WindowStorage.Sketch"/>).</exception>
    public Tensor Gradients(string parameterName)
    {
        if (!_layout.TryGetIndex(parameterName, out int index))
            throw new ArgumentException(
                $"'{parameterName}' is not a watched parameter. Watched: {string.Join(", ", ParameterNames.Take(8))}{(ParameterNames.Count > 8 ? ", ..." : "")}.",
                nameof(parameterName));
        var source = MicroBatches ?? throw new InvalidOperationException(
            "This window has no micro-batch gradients: the step that closed it passed no batch, or the session has no loss function. " +
            "Pass them in the one line: model.Probe(loss, optimizer, input, target, lossFunction.call).");
        return source.Gradients(index);
    }

    /// <summary>Reports a value computed on the host.</summary>
    /// <param name="name">Dotted snake_case name, for example <c>my_probe.alignment</c>.</param>
    /// <param name="value">The value.</param>
    /// <param name="geometry">The geometry the value belongs to, or <see cref="Geometry.None"/>.</param>
    /// <param name="layer">The parameter a per-layer value belongs to, or null for the whole model.</param>
    public void Report(string name, double value, Geometry geometry = Geometry.None, string? layer = null)
    {
        CheckName(name);
        _values.Add(new IndicatorValue(name, geometry, CurrentProbe, value, layer));
    }

    /// <summary>
    /// Reports a one-element tensor without waiting for the device: the value is read together with every other
    /// tensor reported in this window, in a single transfer.
    /// </summary>
    /// <param name="name">Dotted snake_case name.</param>
    /// <param name="value">A tensor with one element, on any device. The session keeps it alive until it is read.</param>
    /// <param name="geometry">The geometry the value belongs to, or <see cref="Geometry.None"/>.</param>
    /// <param name="layer">The parameter a per-layer value belongs to, or null for the whole model.</param>
    public void Report(string name, Tensor value, Geometry geometry = Geometry.None, string? layer = null)
    {
        ArgumentNullException.ThrowIfNull(value);
        CheckName(name);
        if (value.numel() != 1)
            throw new ArgumentException($"Report('{name}') needs a tensor with one element, got shape [{string.Join(", ", value.shape)}].", nameof(value));
        string probe = CurrentProbe;
        Fetch(value, host => _values.Add(new IndicatorValue(name, geometry, probe, host[0], layer)));
    }

    /// <summary>
    /// Queues <paramref name="values"/> (any shape, any device) for the window's single host transfer and
    /// calls <paramref name="onHost"/> with its elements, flattened, as doubles.
    /// </summary>
    internal void Fetch(Tensor values, Action<ReadOnlySpan<double>> onHost)
    {
        // A copy (to() shares a float64 tensor's storage, which the probe may change before the worker reads it), out
        // of every dispose scope: with background statistics the transfer happens on the worker, after the training
        // thread's scope of the window has ended. Resolve disposes it.
        var flat = values.detach().flatten().to(ScalarType.Float64, copy: true).DetachFromDisposeScope();
        _pending.Add(new PendingFetch(flat, onHost, CurrentProbe));
    }

    /// <summary>
    /// Queues work of the current probe that reads only the window's buffers and the probe's own state (never the model,
    /// which training changes meanwhile): it runs before the window's transfer, on the session's worker with
    /// <see cref="ProbeOptions.BackgroundStatistics"/>, else right after the probes. It may report and fetch.
    /// </summary>
    internal void Defer(Action work) => _deferred.Add((CurrentProbe, work));

    /// <summary>The work queued by <see cref="Defer"/> this window, with the probe that queued it.</summary>
    internal IReadOnlyList<(string Probe, Action Work)> Deferred => _deferred;

    private readonly List<(string Probe, Action Work)> _deferred = [];

    internal void Begin(long step, int window)
    {
        Step = step;
        Window = window;
        MicroBatches = null;
        _values.Clear();
        DisposePending();
        _deferred.Clear();
    }

    private void DisposePending()
    {
        foreach (var item in _pending) item.Values.Dispose();
        _pending.Clear();
    }

    /// <summary>Moves all queued tensors to the host, one transfer per device, and runs their callbacks.</summary>
    internal void Resolve(Action<string, Exception> onFailure)
    {
        foreach (var group in _pending.GroupBy(p => (p.Values.device.type, p.Values.device.index)))
        {
            var items = group.ToList();
            double[] host;
            using (var joined = torch.cat(items.Select(p => p.Values).ToArray(), 0))
            using (var onCpu = joined.cpu())
                host = onCpu.data<double>().ToArray();

            int offset = 0;
            foreach (var item in items)
            {
                int length = (int)item.Values.numel();
                try
                {
                    CurrentProbe = item.Probe;
                    item.OnHost(host.AsSpan(offset, length));
                }
                catch (Exception ex)
                {
                    onFailure(item.Probe, ex);
                }
                offset += length;
            }
        }
        DisposePending();
    }

    internal IReadOnlyList<IndicatorValue> Values => _values;

    private void CheckName(string name)
    {
        if (_checkedNames.Contains(name)) return;
        ValidateName(name);
        _checkedNames.Add(name);
    }

    internal static void ValidateName(string name)
    {
        if (string.IsNullOrEmpty(name) || !NamePattern().IsMatch(name))
            throw new ArgumentException(
                $"Indicator name '{name}' is not dotted snake_case (lower-case letters, digits and '_', parts joined by '.', for example 'my_probe.alignment').",
                nameof(name));
    }

    [GeneratedRegex("^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)*$")]
    private static partial Regex NamePattern();

    private readonly record struct PendingFetch(Tensor Values, Action<ReadOnlySpan<double>> OnHost, string Probe);
}

namespace TrainingProbes.Prometheus;

/// <summary>
/// A Prometheus scrape endpoint that lives as long as the probe sessions that use it: add it to
/// <see cref="ProbeOptions.Probes"/> and the first session to start starts it (failing that session's attach, with a
/// clear message, if the port is taken); it stops when the last of its sessions is disposed, so one instance can be
/// given to several sessions, which may start and end in any order and on any thread. It serves every TrainingProbes
/// session of the process through OpenTelemetry's Prometheus exporter; a scrape reads the sessions' last snapshots
/// and never touches the training thread or a tensor.
/// </summary>
/// <remarks>
/// The endpoints that <c>TRAININGPROBES_PROMETHEUS</c> turns on (<see cref="FromEnvironmentValue"/>) go further: all
/// of them for the same host and port share one process-wide server, so that every one-line session of a process is
/// served there, until the last of them ends.
/// </remarks>
public sealed class PrometheusScrapeEndpoint : TrainingProbe, IDisposable
{
    private readonly PrometheusEndpointOptions _options;
    private readonly bool _processWide;
    private readonly object _gate = new();
    private ScrapeServer? _server;
    private int _sessions;
    private bool _disposed;

    /// <summary>Creates the endpoint; it starts when the first of its sessions does.</summary>
    /// <param name="options">Where to listen; <c>http://127.0.0.1:9464/metrics</c> when null.</param>
    public PrometheusScrapeEndpoint(PrometheusEndpointOptions? options = null) : this(options ?? new PrometheusEndpointOptions(), processWide: false)
    {
    }

    private PrometheusScrapeEndpoint(PrometheusEndpointOptions options, bool processWide)
    {
        _options = options;
        _processWide = processWide;
    }

    /// <summary>
    /// Creates an endpoint from the value of <c>TRAININGPROBES_PROMETHEUS</c> (see <see cref="PrometheusEndpointOptions.Parse"/>).
    /// Endpoints created this way for the same host and port share one server for the whole process: each holds it
    /// while one of its sessions lives, and the server stops when no session of any of them is left.
    /// </summary>
    /// <param name="value">A port or host:port.</param>
    public static PrometheusScrapeEndpoint FromEnvironmentValue(string value) => new(PrometheusEndpointOptions.Parse(value), processWide: true);

    /// <inheritdoc />
    public override string Name => "prometheus";

    /// <summary>
    /// The address Prometheus should scrape, once started (with the actual port when <see cref="PrometheusEndpointOptions.Port"/>
    /// is 0). It keeps its last value after the endpoint stops.
    /// </summary>
    public Uri? Address { get; private set; }

    /// <summary>Starts the server if this is the endpoint's first live session, and counts the session.</summary>
    /// <param name="session">The session starting.</param>
    /// <exception cref="ProbeConfigurationException">The server cannot listen where the options say, or the endpoint was disposed.</exception>
    public override void OnSessionStart(ProbeSession session)
    {
        lock (_gate)
        {
            if (_disposed)
                throw new ProbeConfigurationException(
                    "This PrometheusScrapeEndpoint was disposed, which stops it for good; give the new session a new PrometheusScrapeEndpoint.");
            if (_server is null)
            {
                _server = _processWide ? ScrapeServer.Acquire(_options) : ScrapeServer.Start(_options);
                Address = _server.Address;
            }

            _sessions++;
        }

        session.Options.Output?.WriteLine($"[probes] Prometheus metrics at {Address}");
    }

    /// <summary>Counts the session out; the server stops when it was the last one.</summary>
    public override void OnSessionEnd()
    {
        lock (_gate)
        {
            if (_sessions == 0) return;   // the endpoint was disposed while the session lived
            if (--_sessions == 0) Stop();
        }
    }

    /// <summary>
    /// Stops the endpoint at once, whatever sessions still use it, and for good: a session started with it afterwards
    /// fails to attach. An endpoint from <see cref="FromEnvironmentValue"/> gives up its share of the process-wide
    /// server, which goes on serving other endpoints' sessions.
    /// </summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            _sessions = 0;
            Stop();
        }
    }

    private void Stop()
    {
        var server = _server;
        _server = null;
        server?.Release();
    }
}

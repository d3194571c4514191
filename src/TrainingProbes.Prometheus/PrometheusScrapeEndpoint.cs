namespace TrainingProbes.Prometheus;

/// <summary>
/// A Prometheus scrape endpoint: an HTTP server that serves every TrainingProbes session of the process, from
/// <see cref="Start"/> until <see cref="Dispose"/>, through OpenTelemetry's Prometheus exporter. Sessions are not
/// given the endpoint: it finds them through the meter, whenever and on whatever thread they start and end. A scrape
/// reads the sessions' last snapshots and never touches the training thread or a tensor.
/// </summary>
/// <example>
/// <code>
/// using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 9464 });
/// using var session = ProbeSession.Attach(model, new ProbeOptions(), optimizer);
/// </code>
/// </example>
/// <remarks>
/// The one-line form needs no endpoint object: with <c>TRAININGPROBES_PROMETHEUS</c> set, each session holds the
/// process-wide server for that host and port while it lives, shared by all such sessions (started with the first,
/// stopped when the last ends).
/// </remarks>
public sealed class PrometheusScrapeEndpoint : IDisposable
{
    private ScrapeServer? _server;

    private PrometheusScrapeEndpoint(ScrapeServer server)
    {
        _server = server;
        Address = server.Address;
    }

    /// <summary>Starts the server; it serves until the endpoint is disposed.</summary>
    /// <param name="options">Where to listen; <c>http://127.0.0.1:9464/metrics</c> when null.</param>
    /// <exception cref="ProbeConfigurationException">
    /// The server cannot listen where the options say: a port in use, or an address that is not this machine's.
    /// </exception>
    public static PrometheusScrapeEndpoint Start(PrometheusEndpointOptions? options = null) =>
        new(ScrapeServer.Start(options ?? new PrometheusEndpointOptions()));

    /// <summary>
    /// A hold on the process-wide server for the options' host, port and path, started if nobody holds it; disposing
    /// the hold gives it back, and the last to give it back stops the server. What a one-line session of
    /// <c>TRAININGPROBES_PROMETHEUS</c> holds while it lives.
    /// </summary>
    /// <exception cref="ProbeConfigurationException">The server is not running and cannot listen where the options say.</exception>
    internal static PrometheusScrapeEndpoint Share(PrometheusEndpointOptions options) => new(ScrapeServer.Acquire(options));

    /// <summary>
    /// The address Prometheus should scrape, with the actual port when <see cref="PrometheusEndpointOptions.Port"/> is 0.
    /// It keeps its value after the endpoint stops.
    /// </summary>
    public Uri Address { get; }

    /// <summary>Stops the server (a second call does nothing); the sessions go on, no longer served here.</summary>
    public void Dispose() => Interlocked.Exchange(ref _server, null)?.Release();
}

using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;

namespace TrainingProbes.Prometheus;

/// <summary>
/// A Prometheus scrape endpoint that lives as long as its probe session: add it to <see cref="ProbeOptions.Probes"/>
/// and the session starts it when attached (failing the attach, with a clear message, if the port is taken) and
/// stops it when disposed. It serves every TrainingProbes session of the process through OpenTelemetry's Prometheus
/// exporter; a scrape reads the sessions' last snapshots and never touches the training thread or a tensor.
/// </summary>
public sealed class PrometheusScrapeEndpoint : TrainingProbe, IDisposable
{
    private readonly PrometheusEndpointOptions _options;
    private WebApplication? _app;

    /// <summary>Creates the endpoint; it starts when its session does.</summary>
    /// <param name="options">Where to listen; <c>http://127.0.0.1:9464/metrics</c> when null.</param>
    public PrometheusScrapeEndpoint(PrometheusEndpointOptions? options = null) => _options = options ?? new PrometheusEndpointOptions();

    /// <summary>Creates an endpoint from the value of <c>TRAININGPROBES_PROMETHEUS</c> (see <see cref="PrometheusEndpointOptions.Parse"/>).</summary>
    /// <param name="value">A port or host:port.</param>
    public static PrometheusScrapeEndpoint FromEnvironmentValue(string value) => new(PrometheusEndpointOptions.Parse(value));

    /// <inheritdoc />
    public override string Name => "prometheus";

    /// <summary>The address Prometheus should scrape, once started (with the actual port when <see cref="PrometheusEndpointOptions.Port"/> is 0).</summary>
    public Uri? Address { get; private set; }

    /// <inheritdoc />
    public override void OnSessionStart(ProbeSession session)
    {
        if (_app is not null) return;   // shared by several sessions: one server is enough
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(PrometheusScrapeEndpoint).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        // The trainer owns the process: Ctrl+C and SIGTERM must keep their usual effect, not stop only this server.
        builder.Services.AddSingleton<IHostLifetime, TrainerOwnsTheProcess>();
        var address = _options.Host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(_options.Host);
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(address, _options.Port));
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics.AddTrainingProbes().AddPrometheusExporter());

        var app = builder.Build();
        app.MapPrometheusScrapingEndpoint(_options.Path);
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (Exception ex) when (IsAddressInUse(ex))
        {
            DisposeApp(app);
            throw new ProbeConfigurationException(
                $"The Prometheus endpoint cannot listen on {_options.Host}:{_options.Port}: port {_options.Port} is already in use. " +
                $"Choose another with PrometheusEndpointOptions.Port (or TRAININGPROBES_PROMETHEUS=host:port), or stop the process that holds it.", ex);
        }
        catch (Exception ex)
        {
            DisposeApp(app);
            throw new ProbeConfigurationException(
                $"The Prometheus endpoint cannot start on {_options.Host}:{_options.Port}: {ex.Message} Check PrometheusEndpointOptions.Host and Port.", ex);
        }

        _app = app;
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault();
        Address = new Uri(new Uri(bound ?? $"http://{_options.Host}:{_options.Port}"), _options.Path);
        session.Options.Output?.WriteLine($"[probes] Prometheus metrics at {Address}");
    }

    /// <inheritdoc />
    public override void OnSessionEnd() => Dispose();

    /// <summary>Stops the server (also done when the session ends).</summary>
    public void Dispose()
    {
        var app = Interlocked.Exchange(ref _app, null);
        if (app is not null) DisposeApp(app);
    }

    private static void DisposeApp(WebApplication app)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            app.StopAsync(timeout.Token).GetAwaiter().GetResult();
        }
        finally
        {
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    private static bool IsAddressInUse(Exception ex) =>
        ex is IOException { InnerException: SocketException { SocketErrorCode: SocketError.AddressAlreadyInUse } }
        || ex.GetType().Name == "AddressInUseException"
        || ex.InnerException is not null && IsAddressInUse(ex.InnerException);

    /// <summary>A host lifetime that leaves the process's signals alone (the default one would take Ctrl+C and SIGTERM).</summary>
    private sealed class TrainerOwnsTheProcess : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}

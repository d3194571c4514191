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
/// The Kestrel server behind a <see cref="PrometheusScrapeEndpoint"/>. An endpoint either owns one (<see cref="Start"/>)
/// or holds the process-wide one for its host, port and path (<see cref="Acquire"/>), as the sessions of
/// <c>TRAININGPROBES_PROMETHEUS</c> do: every one-line session of the process takes its own hold, and they must not
/// each try to bind the same port. The registry of shared servers holds a server only while somebody holds it, and a
/// server holds no session or model (the exporter reads the sessions through weak references).
/// </summary>
internal sealed class ScrapeServer
{
    private static readonly object SharedGate = new();
    private static readonly Dictionary<(string Host, int Port, string Path), ScrapeServer> Shared = [];

    private readonly WebApplication _app;
    private readonly (string Host, int Port, string Path)? _sharedAs;
    private int _holders = 1;

    private ScrapeServer(WebApplication app, Uri address, (string, int, string)? sharedAs)
    {
        _app = app;
        Address = address;
        _sharedAs = sharedAs;
    }

    /// <summary>The address Prometheus should scrape, with the port actually bound.</summary>
    public Uri Address { get; }

    /// <summary>Starts a server of the caller's own; <see cref="Release"/> stops it.</summary>
    /// <exception cref="ProbeConfigurationException">The server cannot listen where the options say.</exception>
    public static ScrapeServer Start(PrometheusEndpointOptions options) => Launch(options, sharedAs: null);

    /// <summary>
    /// The process-wide server for the options' host, port and path, started if nobody holds it; each call takes
    /// one hold, which <see cref="Release"/> gives back. The last release stops the server and forgets it.
    /// </summary>
    /// <exception cref="ProbeConfigurationException">The server is not running and cannot listen where the options say.</exception>
    public static ScrapeServer Acquire(PrometheusEndpointOptions options)
    {
        var key = (options.Host == "localhost" ? "127.0.0.1" : options.Host, options.Port, options.Path);
        lock (SharedGate)
        {
            if (Shared.TryGetValue(key, out var server))
            {
                server._holders++;
                return server;
            }

            server = Launch(options, key);
            Shared.Add(key, server);
            return server;
        }
    }

    /// <summary>Gives back one hold: stops a server of the caller's own, or the shared one when nobody else holds it.</summary>
    public void Release()
    {
        if (_sharedAs is not { } key)
        {
            Stop(_app);
            return;
        }

        // Stopped under the registry's lock, so that a session acquiring the same port meanwhile waits for the port
        // to be free and starts a new server instead of failing to bind.
        lock (SharedGate)
        {
            if (--_holders > 0) return;
            Shared.Remove(key);
            Stop(_app);
        }
    }

    private static ScrapeServer Launch(PrometheusEndpointOptions options, (string, int, string)? sharedAs)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(ScrapeServer).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        // The trainer owns the process: Ctrl+C and SIGTERM must keep their usual effect, not stop only this server.
        builder.Services.AddSingleton<IHostLifetime, TrainerOwnsTheProcess>();
        var address = options.Host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(options.Host);
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(address, options.Port));
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics.AddTrainingProbes().AddPrometheusExporter());

        var app = builder.Build();
        app.MapPrometheusScrapingEndpoint(options.Path);
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (Exception ex) when (IsAddressInUse(ex))
        {
            Stop(app);
            throw new ProbeConfigurationException(
                $"The Prometheus endpoint cannot listen on {options.Host}:{options.Port}: port {options.Port} is already in use. " +
                $"Choose another with PrometheusEndpointOptions.Port (or TRAININGPROBES_PROMETHEUS=host:port), or stop the process that holds it.", ex);
        }
        catch (Exception ex)
        {
            Stop(app);
            throw new ProbeConfigurationException(
                $"The Prometheus endpoint cannot start on {options.Host}:{options.Port}: {ex.Message.TrimEnd('.')}. The host must be an address of this " +
                "machine: 127.0.0.1 to be scraped from here only, 0.0.0.0 from every interface. Set it with PrometheusEndpointOptions.Host and Port " +
                "(or TRAININGPROBES_PROMETHEUS=host:port).", ex);
        }

        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault();
        return new ScrapeServer(app, new Uri(new Uri(bound ?? $"http://{options.Host}:{options.Port}"), options.Path), sharedAs);
    }

    private static void Stop(WebApplication app)
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

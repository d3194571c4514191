using System.Globalization;
using System.Net;

namespace TrainingProbes.Prometheus;

/// <summary>
/// Where the scrape endpoint listens. The default, <c>http://127.0.0.1:9464/metrics</c>, is reachable from this
/// machine only; set <see cref="Host"/> to <c>0.0.0.0</c> (or a specific address) to let another machine scrape it.
/// </summary>
public sealed class PrometheusEndpointOptions
{
    private string _host = "127.0.0.1";
    private int _port = 9464;
    private string _path = "/metrics";

    /// <summary>IP address to bind (default <c>127.0.0.1</c>, loopback only); <c>localhost</c> is taken as 127.0.0.1.</summary>
    public string Host
    {
        get => _host;
        init => _host = value == "localhost" || IPAddress.TryParse(value, out _)
            ? value
            : throw new ArgumentException(
                $"Host '{value}' is not an IP address. Use 127.0.0.1 (this machine only, the default), 0.0.0.0 (all interfaces) or an address of this machine.",
                nameof(Host));
    }

    /// <summary>TCP port (default 9464, the port registered for OpenTelemetry's Prometheus exporter); 0 picks a free port.</summary>
    public int Port
    {
        get => _port;
        init => _port = value is >= 0 and <= 65535
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Port), value, "Port must be between 0 (pick a free port) and 65535.");
    }

    /// <summary>Path of the scrape endpoint (default <c>/metrics</c>).</summary>
    public string Path
    {
        get => _path;
        init => _path = value is { Length: > 1 } && value[0] == '/' && !value.Contains('?') && !value.Contains(' ')
            ? value
            : throw new ArgumentException($"Path '{value}' must start with '/' and name a path, for example /metrics.", nameof(Path));
    }

    /// <summary>
    /// Parses <c>port</c>, <c>host:port</c> or <c>[ipv6]:port</c>, as in the environment variable <c>TRAININGPROBES_PROMETHEUS</c>.
    /// </summary>
    /// <param name="text">The text to parse.</param>
    /// <exception cref="ArgumentException">The text is not one of those forms.</exception>
    public static PrometheusEndpointOptions Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = text.Trim();
        string host = "127.0.0.1";
        string port = text;
        int colon = text.LastIndexOf(':');
        if (colon >= 0)
        {
            host = text[..colon].Trim('[', ']');
            port = text[(colon + 1)..];
        }

        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int number))
            throw new ArgumentException($"'{text}' is not an endpoint: write a port (9464) or host:port (127.0.0.1:9464, 0.0.0.0:9464).", nameof(text));
        return new PrometheusEndpointOptions { Host = host, Port = number };
    }
}

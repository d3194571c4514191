using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// A real Prometheus server on loopback with its own temporary configuration and data directory, scraping given
/// targets every second. Disposing it kills the process and deletes the directory.
/// </summary>
internal sealed class PrometheusServer : IDisposable
{
    private readonly Process _process;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(10) };
    private readonly string _directory;
    private readonly System.Text.StringBuilder _log = new();

    private PrometheusServer(Process process, string directory, Uri address)
    {
        _process = process;
        _directory = directory;
        Address = address;
    }

    public Uri Address { get; }

    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    public static PrometheusServer Start(Uri target, IEnumerable<string> ruleFiles)
    {
        var directory = Directory.CreateTempSubdirectory("trainingprobes-prometheus-").FullName;
        var rules = ruleFiles.Select(Path.GetFullPath).ToList();
        File.WriteAllText(Path.Combine(directory, "prometheus.yml"),
            $"""
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            rule_files:
            {string.Concat(rules.Select(r => $"  - '{r}'\n"))}
            scrape_configs:
              - job_name: trainingprobes-test
                metrics_path: '{target.AbsolutePath}'
                static_configs:
                  - targets: ['{target.Authority}']
            """);

        int port = FreePort();
        var start = new ProcessStartInfo(ExternalTool.Prometheus())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in new[]
        {
            $"--config.file={Path.Combine(directory, "prometheus.yml")}",
            $"--storage.tsdb.path={Path.Combine(directory, "data")}",
            $"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        })
            start.ArgumentList.Add(argument);

        var process = Process.Start(start) ?? throw new InvalidOperationException("prometheus did not start.");
        var server = new PrometheusServer(process, directory, new Uri($"http://127.0.0.1:{port}/"));
        process.OutputDataReceived += (_, e) => server.Append(e.Data);
        process.ErrorDataReceived += (_, e) => server.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            server.WaitUntil(() => server.Get("-/ready").StatusCode == HttpStatusCode.OK, TimeSpan.FromSeconds(60), "Prometheus ready");
        }
        catch
        {
            server.Dispose();
            throw;
        }

        return server;
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_log) _log.AppendLine(line);
    }

    private HttpResponseMessage Get(string relative)
    {
        try
        {
            return _http.GetAsync(new Uri(Address, relative)).GetAwaiter().GetResult();
        }
        catch (HttpRequestException)
        {
            return new HttpResponseMessage(HttpStatusCode.ServiceUnavailable);
        }
    }

    public void WaitUntil(Func<bool> condition, TimeSpan timeout, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < timeout)
        {
            if (_process.HasExited) throw new InvalidOperationException($"Prometheus exited ({_process.ExitCode}) while waiting for {what}:\n{Log}");
            if (condition()) return;
            Thread.Sleep(250);
        }

        throw new TimeoutException($"Timed out after {timeout} waiting for {what}.\nPrometheus log:\n{Log}");
    }

    /// <summary>Runs an instant query; returns the result vector as (labels, value) pairs.</summary>
    public IReadOnlyList<(Dictionary<string, string> Labels, double Value)> Query(string promql)
    {
        using var response = Get("api/v1/query?query=" + Uri.EscapeDataString(promql));
        var body = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        using var document = JsonDocument.Parse(body);
        var root = document.RootElement;
        if (root.GetProperty("status").GetString() != "success")
            throw new InvalidOperationException($"Query failed: {promql}\n{body}");
        var data = root.GetProperty("data");
        var results = new List<(Dictionary<string, string>, double)>();
        if (data.GetProperty("resultType").GetString() == "scalar")
        {
            results.Add(([], ParseValue(data.GetProperty("result")[1].GetString()!)));
            return results;
        }

        foreach (var item in data.GetProperty("result").EnumerateArray())
        {
            var labels = item.GetProperty("metric").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString() ?? "");
            results.Add((labels, ParseValue(item.GetProperty("value")[1].GetString()!)));
        }

        return results;
    }

    /// <summary>The alerting and recording rules Prometheus loaded, with their health.</summary>
    public IReadOnlyList<(string Name, string Query, string Health, string? Error)> Rules()
    {
        using var response = Get("api/v1/rules");
        using var document = JsonDocument.Parse(response.Content.ReadAsStringAsync().GetAwaiter().GetResult());
        return document.RootElement.GetProperty("data").GetProperty("groups").EnumerateArray()
            .SelectMany(g => g.GetProperty("rules").EnumerateArray())
            .Select(r => (
                r.GetProperty("name").GetString()!,
                r.GetProperty("query").GetString()!,
                r.GetProperty("health").GetString()!,
                r.TryGetProperty("lastError", out var e) ? e.GetString() : null))
            .ToList();
    }

    private static double ParseValue(string text) => text switch
    {
        "NaN" => double.NaN,
        "+Inf" => double.PositiveInfinity,
        "-Inf" => double.NegativeInfinity,
        _ => double.Parse(text, CultureInfo.InvariantCulture),
    };

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException)
        {
        }

        _process.Dispose();
        _http.Dispose();
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

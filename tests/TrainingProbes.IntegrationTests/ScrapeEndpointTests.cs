using System.Net;
using System.Net.Sockets;
using TorchSharp;
using TrainingProbes.Prometheus;

namespace TrainingProbes.IntegrationTests;

public sealed class ScrapeEndpointTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public async Task A_burst_of_scrapes_while_training_leaves_every_indicator_bit_identical()
    {
        const int Steps = 10_000;
        using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 0 });
        IReadOnlyList<ProbeSnapshot> scraped, quiet;
        int requests = 0, duringTraining = 0;
        // Training holds at its middle step until the clients are done: the burst overlaps training on any machine.
        using (var training = new BackgroundTraining(() => new ProbeOptions { RunId = "burst", Output = null, OverheadBudget = null, Interval = 20 },
            Steps, seed: 7, holdAt: Steps / 2))
        {
            training.Start();
            using var http = new HttpClient();
            var clients = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
            {
                // Each client scrapes back to back until it has done 100 scrapes while training was running.
                int mine = 0;
                while (mine < 100 && training.Steps < Steps)
                {
                    bool running = training.Steps < Steps;
                    using var response = await http.GetAsync(endpoint.Address);
                    Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                    await response.Content.ReadAsStringAsync();
                    Interlocked.Increment(ref requests);
                    if (running && training.Steps < Steps)
                    {
                        Interlocked.Increment(ref duringTraining);
                        mine++;
                    }
                }
            })).ToArray();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            await Task.WhenAll(clients).WaitAsync(TimeSpan.FromMinutes(2));
            training.Release();
            output.WriteLine($"scrapes done after {clock.Elapsed.TotalSeconds:F2} s, training at step {training.Steps}");
            training.Join(TimeSpan.FromMinutes(2));
            output.WriteLine($"training done after {clock.Elapsed.TotalSeconds:F2} s");
            scraped = training.Session!.History;
        }

        using (var training = new BackgroundTraining(() => new ProbeOptions { RunId = "quiet", Output = null, OverheadBudget = null, Interval = 20 }, Steps, seed: 7))
        {
            training.Start().Join(TimeSpan.FromMinutes(2));
            quiet = training.Session!.History;
        }

        Assert.True(duringTraining >= 400, $"only {duringTraining} of {requests} scrapes overlapped training; the test proves nothing then");
        Assert.Equal(Steps / 20, quiet.Count);
        Assert.Equal(quiet.Count, scraped.Count);
        for (int w = 0; w < quiet.Count; w++)
        {
            // Everything but the overheads, which are measurements of time.
            static bool Timed(IndicatorValue v) => v.Name is Indicators.ProbeOverhead or Indicators.ProbeOverheadTotal;
            var expected = quiet[w].Values.Where(v => !Timed(v)).ToList();
            var actual = scraped[w].Values.Where(v => !Timed(v)).ToList();
            Assert.Equal(expected.Count, actual.Count);
            for (int i = 0; i < expected.Count; i++)
            {
                Assert.Equal((expected[i].Name, expected[i].Geometry, expected[i].Layer), (actual[i].Name, actual[i].Geometry, actual[i].Layer));
                Assert.True(BitConverter.DoubleToInt64Bits(expected[i].Value) == BitConverter.DoubleToInt64Bits(actual[i].Value),
                    $"window {w} {expected[i].Name} [{expected[i].Geometry}]: {expected[i].Value:R} without scrapes, {actual[i].Value:R} with");
            }
        }
    }

    [Fact]
    public void Defaults_listen_on_loopback_9464_metrics()
    {
        var options = new PrometheusEndpointOptions();
        Assert.Equal(("127.0.0.1", 9464, "/metrics"), (options.Host, options.Port, options.Path));
        var parsed = PrometheusEndpointOptions.Parse("0.0.0.0:9500");
        Assert.Equal(("0.0.0.0", 9500), (parsed.Host, parsed.Port));
        Assert.Equal(("127.0.0.1", 9600), (PrometheusEndpointOptions.Parse("9600").Host, PrometheusEndpointOptions.Parse("9600").Port));
        Assert.Contains("host:port", Assert.Throws<ArgumentException>(() => PrometheusEndpointOptions.Parse("metrics")).Message);
        Assert.Contains("IP address", Assert.Throws<ArgumentException>(() => new PrometheusEndpointOptions { Host = "example.org" }).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new PrometheusEndpointOptions { Port = 70000 });
    }

    [Fact]
    public async Task The_endpoint_serves_on_loopback_from_Start_until_it_is_disposed()
    {
        var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 0 });
        var address = endpoint.Address;
        Assert.Equal("127.0.0.1", address.Host);
        Assert.Equal("/metrics", address.AbsolutePath);
        Assert.NotEqual(0, address.Port);
        using var http = new HttpClient();
        Assert.DoesNotContain("run_id=\"loopback\"", await http.GetStringAsync(address));

        // A session started afterwards is served without being told about the endpoint ...
        var model = torch.nn.Linear(3, 2);
        using (var session = ProbeSession.Attach(model, new ProbeOptions { RunId = "loopback", Output = null, OverheadBudget = null }))
        {
            Assert.Empty(session.Options.Probes);
            var text = await ScrapeUntilItShows(http, address, "run_id=\"loopback\"");
            Assert.Contains("trainingprobes_training_step{", text);
            Assert.Contains("run_id=\"loopback\"", text);
        }

        // ... and the endpoint outlives it, until it is disposed; a second Dispose does nothing.
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(address)).StatusCode);
        endpoint.Dispose();
        AssertClosed(address.Port);
        endpoint.Dispose();
        Assert.Equal(address, endpoint.Address);
    }

    [Fact]
    public async Task One_endpoint_serves_every_session_of_the_process_as_they_come_and_go()
    {
        using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 0 });
        var first = ProbeSession.Attach(torch.nn.Linear(3, 2), new ProbeOptions { RunId = "first", Output = null, OverheadBudget = null });
        var second = ProbeSession.Attach(torch.nn.Linear(3, 2), new ProbeOptions { RunId = "second", Output = null, OverheadBudget = null });
        using var http = new HttpClient();
        var text = await ScrapeUntilItShows(http, endpoint.Address, "run_id=\"second\"");
        Assert.Contains("run_id=\"first\"", text);
        Assert.Contains("run_id=\"second\"", text);

        first.Dispose();
        Assert.Contains("run_id=\"second\"", await http.GetStringAsync(endpoint.Address));
        second.Dispose();
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(endpoint.Address)).StatusCode);

        using var third = ProbeSession.Attach(torch.nn.Linear(3, 2), new ProbeOptions { RunId = "third", Output = null, OverheadBudget = null });
        Assert.Contains("run_id=\"third\"", await ScrapeUntilItShows(http, endpoint.Address, "run_id=\"third\""));
    }

    [Fact]
    public async Task Sessions_served_by_an_endpoint_may_start_and_end_on_any_thread()
    {
        using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 0 });
        var sessions = new ProbeSession[8];
        Parallel.For(0, sessions.Length, i => sessions[i] = ProbeSession.Attach(torch.nn.Linear(3, 2),
            new ProbeOptions { RunId = $"thread{i}", Output = null, OverheadBudget = null }));
        var address = endpoint.Address;
        using var http = new HttpClient();
        var text = await ScrapeUntilItShows(http, address, "run_id=\"thread7\"");
        Assert.All(Enumerable.Range(0, sessions.Length), i => Assert.Contains($"run_id=\"thread{i}\"", text));

        Parallel.For(1, sessions.Length, i => sessions[i].Dispose());
        Assert.Contains("run_id=\"thread0\"", await http.GetStringAsync(address));
        sessions[0].Dispose();
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(address)).StatusCode);
    }

    [Fact]
    public async Task Disposing_the_endpoint_stops_it_at_once_and_the_sessions_train_on()
    {
        var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 0 });
        using var training = new BackgroundTraining(() => new ProbeOptions { RunId = "unserved", Output = null, OverheadBudget = null, Interval = 20 },
            steps: 400, holdAt: 200);
        training.Start();
        Assert.True(SpinWait.SpinUntil(() => training.Steps >= 200, TimeSpan.FromMinutes(1)), $"training at step {training.Steps}");
        using var http = new HttpClient();
        Assert.Contains("run_id=\"unserved\"", await ScrapeUntilItShows(http, endpoint.Address, "run_id=\"unserved\""));

        endpoint.Dispose();
        AssertClosed(endpoint.Address.Port);
        training.Release();
        training.Join(TimeSpan.FromMinutes(1));
        Assert.Equal(400 / 20, training.Session!.History.Count);
        Assert.Equal(0, training.Session.FailureCount);
    }

    [Fact]
    public async Task Sessions_from_the_environment_share_one_endpoint_until_the_last_of_them_ends()
    {
        int port = FreePort();
        var environment = new Dictionary<string, string> { ["TRAININGPROBES_PROMETHEUS"] = $"127.0.0.1:{port}", ["TRAININGPROBES_OUTPUT"] = "none" };
        ProbeOptions FromEnvironment(string run) => ProbeOptions.FromEnvironment(name => name == "TRAININGPROBES_RUN_ID" ? run : environment.GetValueOrDefault(name));

        // The variable adds no probe: each one-line session builds its own options and holds the process-wide server
        // while it lives; the sessions must not each bind the port.
        Assert.Empty(FromEnvironment("first").Probes);
        var first = ProbeSession.Attach(torch.nn.Linear(3, 2), FromEnvironment("first"));
        var second = ProbeSession.Attach(torch.nn.Linear(3, 2), FromEnvironment("second"));
        var address = new Uri($"http://127.0.0.1:{port}/metrics");
        using var http = new HttpClient();
        var text = await http.GetStringAsync(address);
        Assert.Contains("run_id=\"first\"", text);
        Assert.Contains("run_id=\"second\"", text);

        first.Dispose();
        Assert.Contains("run_id=\"second\"", await http.GetStringAsync(address));

        // A session that starts while another still holds the server joins it; the server ends with the last one.
        var third = ProbeSession.Attach(torch.nn.Linear(3, 2), FromEnvironment("third"));
        second.Dispose();
        Assert.Contains("run_id=\"third\"", await ScrapeUntilItShows(http, address, "run_id=\"third\""));
        third.Dispose();
        AssertClosed(port);

        // And a later session starts it afresh, saying where on its output.
        var console = new StringWriter();
        using var fourth = ProbeSession.Attach(torch.nn.Linear(3, 2),
            new ProbeOptions { RunId = "fourth", Output = console, OverheadBudget = null, SessionResources = FromEnvironment("fourth").SessionResources });
        Assert.Contains("run_id=\"fourth\"", await http.GetStringAsync(address));
        Assert.Contains($"[probes] Prometheus metrics at {address}", console.ToString());
    }

    [Fact]
    public void A_port_in_use_fails_Start_with_a_message_naming_the_port_and_the_option()
    {
        using var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start();
        int port = ((IPEndPoint)holder.LocalEndpoint).Port;

        var error = Assert.Throws<ProbeConfigurationException>(() => PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = port }));
        Assert.Contains($"port {port} is already in use", error.Message);
        Assert.Contains("PrometheusEndpointOptions.Port", error.Message);
    }

    [Fact]
    public void A_port_in_use_fails_a_one_line_sessions_attach_and_leaves_nothing_behind()
    {
        using var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start();
        int port = ((IPEndPoint)holder.LocalEndpoint).Port;
        var model = torch.nn.Linear(3, 2);
        var options = ProbeOptions.FromEnvironment(name => name switch
        {
            "TRAININGPROBES_PROMETHEUS" => $"127.0.0.1:{port}",
            "TRAININGPROBES_OUTPUT" => "none",
            _ => null,
        });

        var error = Assert.Throws<ProbeConfigurationException>(() => ProbeSession.Attach(model, options));
        Assert.Contains($"port {port} is already in use", error.Message);
        Assert.Contains("TRAININGPROBES_PROMETHEUS", error.Message);

        // The failed attach left nothing behind: the model can be attached again, and once the port is free the
        // process-wide server starts (no failed hold of it was kept).
        holder.Stop();
        using (var session = ProbeSession.Attach(model, options))
        {
            Assert.Same(session, ProbeSession.Get(model));
        }

        AssertClosed(port);
    }

    [Fact]
    public void A_host_that_is_not_this_machines_fails_Start_naming_the_addresses_that_work_and_the_variable()
    {
        var error = Assert.Throws<ProbeConfigurationException>(() =>
            PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Host = "8.8.8.8", Port = 0 }));
        Assert.Contains("8.8.8.8", error.Message);
        Assert.Contains("127.0.0.1", error.Message);
        Assert.Contains("0.0.0.0", error.Message);
        Assert.Contains("TRAININGPROBES_PROMETHEUS", error.Message);
    }

    /// <summary>
    /// Scrapes until the text shows <paramref name="expected"/> or 5 s pass: the exporter answers from a cache for
    /// 300 ms after a scrape, so a session that started just after one shows up only in the next.
    /// </summary>
    private static async Task<string> ScrapeUntilItShows(HttpClient http, Uri address, string expected)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var text = await http.GetStringAsync(address);
            if (text.Contains(expected, StringComparison.Ordinal) || clock.Elapsed > TimeSpan.FromSeconds(5)) return text;
            await Task.Delay(100);
        }
    }

    private static void AssertClosed(int port)
    {
        using var client = new TcpClient();
        Assert.ThrowsAny<SocketException>(() => client.Connect(IPAddress.Loopback, port));
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

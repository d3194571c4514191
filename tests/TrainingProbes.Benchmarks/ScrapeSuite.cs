using System.Diagnostics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Prometheus;
using static TorchSharp.torch;

/// <summary>
/// Bytes allocated per scrape of the /metrics endpoint, in the whole process (server and client together, the client
/// reading into a reused buffer), with no training running, against the floor: the same client fetching a static page
/// of the same size from a bare Kestrel server. Two kinds of scrapes: collections (one every 350 ms, past the exporter's 300 ms response cache, as a
/// Prometheus server scraping every few seconds does) and cached responses (back to back); then collections with a
/// window published before each (training between scrapes, every collection the first after a change). With ALLOC_TICKS set, it
/// first prints the types behind the collections' allocations (the runtime's allocation-tick samples, one per ~100 KB).
/// </summary>
internal static class ScrapeSuite
{
    public static void Run(int collections, int cached)
    {
        torch.set_num_threads(1);
        torch.manual_seed(1);
        var model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5));
        var optimizer = optim.SGD(model.parameters(), 0.05, momentum: 0.9);
        static Tensor Loss(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);
        using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 0 });
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            Loss = Loss, Output = null, OverheadBudget = null, Interval = 20,
        }, optimizer);
        var generator = new Generator(2);
        void Train(int steps)
        {
            for (int step = 0; step < steps; step++)
            {
                using var scope = torch.NewDisposeScope();
                var x = torch.randn([32, 20], generator: generator);
                var y = torch.randint(0, 5, [32], generator: generator);
                optimizer.zero_grad();
                var loss = Loss(model.call(x), y);
                loss.backward();
                session.Step(loss, x, y);
                optimizer.step();
            }

            session.Flush();
        }

        Train(400);
        using var http = new HttpClient();
        var page = http.GetByteArrayAsync(endpoint.Address).GetAwaiter().GetResult();
        int series = System.Text.Encoding.UTF8.GetString(page).Split('\n').Count(l => l.StartsWith("trainingprobes_", StringComparison.Ordinal));
        Console.WriteLine($"session: {session.History.Count} windows published; the page: {page.Length:N0} bytes, {series} series");

        if (Environment.GetEnvironmentVariable("ALLOC_TICKS") is not null)
        {
            using var listener = new AllocationTicks();
            Measure(http, endpoint.Address, collections, pause: TimeSpan.FromMilliseconds(350));
            foreach (var (type, n) in listener.Types.OrderByDescending(t => t.Value).Take(25)) Console.WriteLine($"  {n,4} x ~100 KB  {type}");
        }

        var floor = StaticServer(page);
        var floorAddress = new Uri(floor.Urls.First() + "/metrics");
        foreach (var (name, address) in new[] { ("TrainingProbes /metrics", endpoint.Address), ("floor: static page, bare Kestrel", floorAddress) })
        {
            var collected = Measure(http, address, collections, pause: TimeSpan.FromMilliseconds(350));
            var back = Measure(http, address, cached, pause: TimeSpan.Zero);
            Console.WriteLine($"{name,-34} every 350 ms: {collected.Bytes,8:N0} B/scrape, median {collected.Median * 1e3,6:F2} ms   " +
                $"back to back: {back.Bytes,8:N0} B/scrape, median {back.Median * 1e3,6:F2} ms");
        }

        // Training between scrapes: one window (20 steps) before each, as when Prometheus scrapes less often than windows
        // close; only the scrape is counted.
        var fresh = Measure(http, endpoint.Address, collections, pause: TimeSpan.FromMilliseconds(350), before: () => Train(20));
        Console.WriteLine($"{"TrainingProbes, a window between",-34} every 350 ms: {fresh.Bytes,8:N0} B/scrape, median {fresh.Median * 1e3,6:F2} ms");

        floor.StopAsync().GetAwaiter().GetResult();
    }

    private static readonly byte[] Buffer = new byte[1 << 16];

    /// <summary>One scrape, read into a reused buffer: the client allocates as little as HttpClient allows.</summary>
    private static void Scrape(HttpClient http, Uri address)
    {
        using var stream = http.GetStreamAsync(address).GetAwaiter().GetResult();
        while (stream.Read(Buffer) > 0) { }
    }

    private static (double Bytes, double Median) Measure(HttpClient http, Uri address, int count, TimeSpan pause, Action? before = null)
    {
        for (int i = 0; i < 20; i++) Scrape(http, address);   // warm
        var seconds = new double[count];
        long allocated = 0;
        for (int i = 0; i < count; i++)
        {
            before?.Invoke();
            if (pause > TimeSpan.Zero) Thread.Sleep(pause);
            long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
            long started = Stopwatch.GetTimestamp();
            Scrape(http, address);
            seconds[i] = Stopwatch.GetElapsedTime(started).TotalSeconds;
            allocated += GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;
        }

        Array.Sort(seconds);
        return ((double)allocated / count, seconds[count / 2]);
    }

    private static WebApplication StaticServer(byte[] page)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        app.MapGet("/metrics", (HttpContext context) =>
        {
            context.Response.ContentType = "text/plain; charset=utf-8; version=0.0.4";
            return context.Response.Body.WriteAsync(page).AsTask();
        });
        app.StartAsync().GetAwaiter().GetResult();
        return app;
    }
}

internal sealed class AllocationTicks : System.Diagnostics.Tracing.EventListener
{
    public readonly Dictionary<string, int> Types = [];

    protected override void OnEventSourceCreated(System.Diagnostics.Tracing.EventSource source)
    {
        if (source.Name == "Microsoft-Windows-DotNETRuntime")
            EnableEvents(source, System.Diagnostics.Tracing.EventLevel.Verbose, (System.Diagnostics.Tracing.EventKeywords)0x1);
    }

    protected override void OnEventWritten(System.Diagnostics.Tracing.EventWrittenEventArgs e)
    {
        if (e.EventName != "GCAllocationTick_V4" || e.Payload is null) return;
        int i = e.PayloadNames!.IndexOf("TypeName");
        string type = e.Payload[i]?.ToString() ?? "?";
        lock (Types) Types[type] = Types.GetValueOrDefault(type) + 1;
    }
}

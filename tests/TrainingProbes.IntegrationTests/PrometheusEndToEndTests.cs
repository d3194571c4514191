using TrainingProbes.Prometheus;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// The whole metrics path against a real Prometheus server: a training run serves its indicators on a free loopback
/// port, Prometheus scrapes it every second, and its HTTP API must return every instrument of the instrument table of docs/REFERENCE.md with
/// finite values, data for every query of the Grafana dashboard, and healthy alert rules over existing series.
/// </summary>
public sealed class PrometheusEndToEndTests
{
    private const string RunId = "it-e2e";

    /// <summary>
    /// The contrastive flatness and the norm test divide by the unbiased |E g|^2: they are +Inf when the window cannot
    /// tell its mean gradient from zero, and their standard errors when that happens to a leave-one-out value
    /// (docs/REFERENCE.md).
    /// </summary>
    private static readonly string[] InfiniteWithoutSignal = ["trainingprobes_flatness_contrastive", "trainingprobes_test_norm", "trainingprobes_gradient_noise_scale"];

    private static readonly HashSet<string> MayBeInfinite = InfiniteWithoutSignal
        .SelectMany(n => new[] { n, n + "_stderr", n + "_smoothed", n + "_smoothed_stderr" }).ToHashSet();

    // Their spread skips the infinite windows: undefined until two finite windows in a row are held.
    private static readonly HashSet<string> MayBeUndefined = InfiniteWithoutSignal.Select(n => n + "_spread").ToHashSet();

    [FactNeeding(Tool.Prometheus)]
    public void Prometheus_scrapes_every_instrument_and_every_dashboard_and_alert_query_has_data()
    {
        using var endpoint = PrometheusScrapeEndpoint.Start(new PrometheusEndpointOptions { Port = 0 });
        using var training = new BackgroundTraining(() => new ProbeOptions
        {
            RunId = RunId, Worker = "rank-0", LayerMetrics = 2, Output = null, OverheadBudget = null,
            StepStatistics = true,   // the opt-in step family: every instrument of the table
            Loss = (output, target) => TorchSharp.torch.nn.functional.cross_entropy(output, target),
            Stopping = [TrainingProbes.Stopping.StoppingRule.Parse("training.loss is not finite")],
            Probes = [new FixedPointProbe(new FixedPointOptions
            {
                Loss = (output, target) => TorchSharp.torch.nn.functional.cross_entropy(output, target), Every = 2, PowerIterations = 5, TraceSamples = 5,
                WindowSize = 5,   // the GSNR's standard error needs K >= 5
            })],
        }).Start();
        using var prometheus = PrometheusServer.Start(endpoint.Address, [RepositoryFiles.PathOf("examples/grafana/alerts.yml")]);

        string run = $"{RunId}";
        prometheus.WaitUntil(
            () => prometheus.Query($"count_over_time(trainingprobes_training_step{{run_id=\"{run}\"}}[1m])") is [var (_, samples)] && samples >= 5,
            TimeSpan.FromSeconds(90), "five scrapes of the training run");

        // Every instrument of the instrument table of docs/REFERENCE.md, present for this run, with finite values.
        var instruments = RepositoryFiles.ReadmeInstruments();
        Assert.True(instruments.Count >= 20, $"the instrument table of docs/REFERENCE.md lists only {instruments.Count} names");
        foreach (var name in instruments)
        {
            var series = prometheus.Query($"{name}{{run_id=\"{run}\"}}");
            Assert.True(series.Count > 0, $"{name}: no series for run {run} in Prometheus.");
            Assert.All(series, s => Assert.True(double.IsFinite(s.Value) || (double.IsPositiveInfinity(s.Value) && MayBeInfinite.Contains(name))
                    || (double.IsNaN(s.Value) && MayBeUndefined.Contains(name)),
                $"{name}{{{Labels(s.Labels)}}} = {s.Value}"));
            Assert.All(series, s => Assert.Equal("rank-0", s.Labels.GetValueOrDefault("worker")));
        }

        // ... and nothing exported that the table does not list.
        var exported = prometheus.Query($"count by (__name__) ({{__name__=~\"trainingprobes_.+\", run_id=\"{run}\"}})")
            .Select(s => s.Labels["__name__"]).ToHashSet();
        var listed = instruments.ToHashSet();
        // (OpenMetrics adds a <name>_created series with the start time of each counter and histogram.)
        var unlisted = exported.Where(n => !listed.Contains(n) && !n.EndsWith("_created", StringComparison.Ordinal)).ToList();
        Assert.True(unlisted.Count == 0, $"exported but not in the instrument table of docs/REFERENCE.md: {string.Join(", ", unlisted)}");

        // Per-layer series exist for the first two parameters only.
        var layers = prometheus.Query($"trainingprobes_gradient_cosine{{run_id=\"{run}\", layer!=\"\", geometry=\"euclidean\"}}")
            .Select(s => s.Labels["layer"]).OrderBy(l => l).ToArray();
        Assert.Equal(["0.bias", "0.weight"], layers);

        // Every query of the Grafana dashboard returns data.
        var panels = RepositoryFiles.DashboardExpressions();
        Assert.True(panels.Count >= 10, $"the dashboard has only {panels.Count} queries");
        foreach (var (panel, expression) in panels)
        {
            var query = RepositoryFiles.Substitute(expression, run);
            Assert.True(prometheus.Query(query).Count > 0, $"dashboard panel '{panel}': no data for {query}");
        }

        // Every alert rule evaluates cleanly, and every series it watches exists.
        var alerts = RepositoryFiles.AlertExpressions();
        Assert.True(alerts.Count >= 5, $"alerts.yml has only {alerts.Count} rules");
        prometheus.WaitUntil(() => prometheus.Rules().All(r => r.Health != "unknown"), TimeSpan.FromSeconds(30), "rule evaluation");
        foreach (var rule in prometheus.Rules())
            Assert.True(rule.Health == "ok", $"alert {rule.Name}: health {rule.Health}, {rule.Error}");
        foreach (var (alert, expression) in alerts)
        foreach (var metric in RepositoryFiles.MetricsIn(expression))
            Assert.True(prometheus.Query($"{metric}{{run_id=\"{run}\"}}").Count > 0, $"alert {alert}: no series {metric} for the run");

        Assert.Equal(0, training.Session!.FailureCount);
    }

    private static string Labels(Dictionary<string, string> labels) => string.Join(",", labels.Select(kv => $"{kv.Key}=\"{kv.Value}\""));
}

using TorchSharp;
using TrainingProbes.Tests.Telemetry;

namespace TrainingProbes.Tests.Session;

/// <summary>
/// The session-lifetime hook behind <c>TRAININGPROBES_PROMETHEUS</c>: what the options list is acquired as the session
/// starts and disposed as it ends, without being a probe.
/// </summary>
public sealed class SessionResourcesTests
{
    private sealed class Resource(string name, List<string> log) : IDisposable
    {
        public void Dispose() => log.Add($"dispose {name}");
    }

    private static Func<ProbeSession, IDisposable> Acquired(string name, List<string> log) => session =>
    {
        Assert.NotNull(session.Options);
        log.Add($"acquire {name}");
        return new Resource(name, log);
    };

    [Fact]
    public void Resources_are_acquired_at_attach_in_order_and_disposed_once_at_dispose_last_first()
    {
        var log = new List<string>();
        var model = torch.nn.Linear(3, 2);
        var session = ProbeSession.Attach(model, new ProbeOptions
        {
            Output = null, OverheadBudget = null, SessionResources = [Acquired("a", log), Acquired("b", log)],
        });
        Assert.Equal(["acquire a", "acquire b"], log);
        Assert.DoesNotContain(session.RunningProbes, p => p.Name is "a" or "b");

        session.Dispose();
        session.Dispose();
        Assert.Equal(["acquire a", "acquire b", "dispose b", "dispose a"], log);
    }

    [Fact]
    public void A_failed_acquisition_fails_the_attach_releases_the_ones_before_it_and_leaves_the_model_free()
    {
        var log = new List<string>();
        var model = torch.nn.Linear(3, 2);
        var error = Assert.Throws<ProbeConfigurationException>(() => ProbeSession.Attach(model, new ProbeOptions
        {
            Output = null, OverheadBudget = null,
            SessionResources = [Acquired("a", log), _ => throw new ProbeConfigurationException("port 9464 is already in use"), Acquired("c", log)],
        }));
        Assert.Contains("port 9464 is already in use", error.Message);
        Assert.Equal(["acquire a", "dispose a"], log);

        Assert.Null(ProbeSession.Get(model));
        using var session = ProbeSession.Attach(model, new ProbeOptions { Output = null, OverheadBudget = null });
        Assert.Same(session, ProbeSession.Get(model));
    }

    private sealed class ThrowingEnd : TrainingProbe
    {
        public override string Name => "throwing_end";

        public override void OnSessionEnd() => throw new InvalidOperationException("end failed");
    }

    [Fact]
    public void Resources_and_the_session_are_released_even_when_a_strict_sessions_probe_fails_to_end()
    {
        var log = new List<string>();
        var model = torch.nn.Linear(3, 2);
        var session = ProbeSession.Attach(model, new ProbeOptions
        {
            RunId = "strict-end", Output = null, OverheadBudget = null, Strict = true, Probes = [new ThrowingEnd()], SessionResources = [Acquired("a", log)],
        });
        session.Report("val.loss", 1.0);
        Assert.Contains(MeterReader.Collect(), m => m.RunId == "strict-end");

        Assert.Throws<ProbeFailureException>(session.Dispose);
        Assert.Equal(["acquire a", "dispose a"], log);
        // The session's own cleanup ran too: its gauges left the meter and the model can have a new session.
        Assert.DoesNotContain(MeterReader.Collect(), m => m.RunId == "strict-end");
        Assert.Null(ProbeSession.Get(model));
        using var next = ProbeSession.Attach(model, new ProbeOptions { Output = null, OverheadBudget = null });
    }

    [Fact]
    public void The_prometheus_variable_adds_a_session_resource_and_no_probe()
    {
        var options = ProbeOptions.FromEnvironment(name => name == "TRAININGPROBES_PROMETHEUS" ? "127.0.0.1:9464" : null);
        Assert.Empty(options.Probes);
        Assert.Single(options.SessionResources);
        Assert.Empty(ProbeOptions.FromEnvironment(_ => null).SessionResources);
        Assert.Empty(new ProbeOptions().SessionResources);
    }
}

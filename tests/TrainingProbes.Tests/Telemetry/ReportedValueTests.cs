using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Telemetry;

public sealed class ReportedValueTests
{
    [Fact]
    public void A_value_the_trainer_reports_is_a_gauge_at_once_and_keeps_its_last_value()
    {
        torch.manual_seed(1);
        var model = nn.Sequential(nn.Linear(4, 3));
        using var session = ProbeSession.Attach(model, new ProbeOptions { RunId = "reported-gauge", Output = null, OverheadBudget = null });
        session.Report("validation.loss", 0.75);
        session.Report("validation.loss", 0.5);
        session.Report("validation.accuracy", 0.9);

        var mine = MeterReader.Collect().Where(m => m.RunId == "reported-gauge").ToList();
        Assert.Equal(0.5, Assert.Single(mine, m => m.Instrument == TrainingProbesMeter.InstrumentPrefix + "validation.loss").Value);
        Assert.Equal(0.9, Assert.Single(mine, m => m.Instrument == TrainingProbesMeter.InstrumentPrefix + "validation.accuracy").Value);
    }

    [Fact]
    public void Reported_values_and_fired_rules_are_kept_in_order_with_their_steps()
    {
        torch.manual_seed(1);
        var model = nn.Sequential(nn.Linear(4, 3));
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            RunId = "reported-record", Output = null, OverheadBudget = null,
            Stopping = [TrainingProbes.Stopping.StoppingRule.Parse("val.accuracy > 0.8 -> warn")],
        });
        session.Report("val.accuracy", 0.5);
        for (int i = 0; i < 3; i++) session.Step();
        session.Report("val.accuracy", 0.9);

        Assert.Equal([(0L, 0.5), (3L, 0.9)], session.ReportedValues.Select(r => (r.Step, r.Value.Value)));
        Assert.All(session.ReportedValues, r => Assert.Equal(("val.accuracy", Geometry.None, "user"), (r.Value.Name, r.Value.Geometry, r.Value.Probe)));
        var fired = Assert.Single(session.FiredRules);
        Assert.Equal((3L, 0.9, TrainingProbes.Stopping.RuleAction.Warn), (fired.Step, fired.Value, fired.Action));
    }
}

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
}

using System.Globalization;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Session;

public sealed partial class ConsoleSummaryTests
{
    [Fact]
    public void The_console_line_shows_each_geometrys_smoothed_cosine_relative_regret_and_flatness_with_their_errors_after_a_legend()
    {
        torch.manual_seed(2);
        var model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3));
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        var lossFunction = nn.CrossEntropyLoss();
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 10, OverheadBudget = null, Output = output, Loss = lossFunction.call,
            TimeProvider = new SteppingClock(TimeSpan.FromSeconds(2)),   // every window is shown, a second or more apart
        }, optimizer);
        Train(model, optimizer, 40, seed: 3, onStep: (loss, x, y) => session.Step(loss, x, y), loss: lossFunction.call);

        session.Flush();
        var snapshot = session.Latest!;
        Assert.Contains("K = 4 micro-batches of a training step's minibatch at its theta", output.ToString().Split('\n')[0]);
        string line = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Last(l => l.StartsWith("[probes] step", StringComparison.Ordinal));
        foreach (var (label, geometry) in new[] { ("euc", Geometry.Euclidean), ("fis", Geometry.Fisher), ("ada", Geometry.Adaptive) })
        {
            var part = Part().Match(line[line.IndexOf("| " + label, StringComparison.Ordinal)..]);
            Assert.True(part.Success, line);
            string Show(string name) => snapshot.Get(name + Indicators.SmoothedSuffix, geometry).ToString("G3", CultureInfo.InvariantCulture);
            string Error(string name) => snapshot.Get(name + Indicators.SmoothedSuffix + Indicators.StandardErrorSuffix, geometry).ToString("G2", CultureInfo.InvariantCulture);
            Assert.Equal(Show(Indicators.Cosine), part.Groups["cos"].Value);
            Assert.Equal(Error(Indicators.Cosine), part.Groups["cosError"].Value);
            Assert.Equal(Show(Indicators.RelativeRegret), part.Groups["regret"].Value);
            Assert.Equal(Error(Indicators.RelativeRegret), part.Groups["regretError"].Value);
            Assert.Equal(Show(Indicators.ContrastiveFlatness), part.Groups["kappa"].Value);
        }
    }

    [GeneratedRegex(@"cos (?<cos>\S+)±(?<cosError>\S+) regret (?<regret>\S+)±(?<regretError>\S+) kappa (?<kappa>[^±\s]+)")]
    private static partial Regex Part();
}

using TorchSharp;
using TrainingProbes.Stopping;
using TrainingProbes.Tests.Telemetry;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;
using static TrainingProbes.TestSupport.Trainer;

namespace TrainingProbes.Tests.Catalogue;

public sealed class IndicatorCatalogueTests
{
    /// <summary>A made-up first-order indicator: the mean squared norm of the window's minibatch gradients, mean_i G_ii.</summary>
    private static readonly IndicatorDefinition MeanSquaredNorm = new(
        "gradient.test_mean_squared_norm", "1", "Mean squared norm of the window's minibatch gradients (a test indicator).",
        StoppingMode.Max, PerGeometry: true,
        FromGram: g =>
        {
            double sum = 0;
            for (int i = 0; i < g.K; i++) sum += g[i, i];
            return sum / g.K;
        });

    /// <summary>Records the window's micro-batch gradients' squared norms, to recompute the made-up value independently.</summary>
    private sealed class Recorder : TrainingProbe
    {
        public override string Name => "recorder";

        public List<double[]> SquaredNorms { get; } = [];

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            var norms = new double[window.WindowSize];
            foreach (string name in window.ParameterNames)
            {
                var g = window.Gradients(name).to(ScalarType.Float64).reshape(window.WindowSize, -1);
                var values = g.data<double>().ToArray();
                int columns = values.Length / window.WindowSize;
                for (int i = 0; i < window.WindowSize; i++)
                    for (int c = 0; c < columns; c++) norms[i] += values[i * columns + c] * values[i * columns + c];
            }

            SquaredNorms.Add(norms);
        }
    }

    [Fact]
    public void One_catalogue_entry_is_enough_for_a_new_indicator_to_reach_the_snapshot_the_meter_and_the_rules()
    {
        // The catalogue is process-wide (as instrument names are): take the entry out again so that later tests'
        // sessions do not compute it.
        IndicatorCatalogue.Register(MeanSquaredNorm);
        try
        {
            RunWithMadeUpIndicator();
        }
        finally
        {
            IndicatorCatalogue.Unregister(MeanSquaredNorm.Name);
        }
    }

    private static void RunWithMadeUpIndicator()
    {

        torch.manual_seed(4);
        var model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3));
        var optimizer = new GcSafeSgd(model.parameters(), 0.05);
        var lossFunction = nn.CrossEntropyLoss();
        var recorder = new Recorder();
        var warn = StoppingRule.Parse("gradient.test_mean_squared_norm[euclidean] > 0 for 1 -> warn");
        var early = new EarlyStopping("gradient.test_mean_squared_norm") { Geometry = Geometry.Euclidean, Patience = 1000 };
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            RunId = "made-up-indicator", WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null,
            Loss = lossFunction.call, Probes = [recorder], Stopping = [warn, early],
        }, optimizer);
        int fired = 0;
        session.RuleFired += (_, e) => fired += e.Rule.Name == warn.Name ? 1 : 0;
        Train(model, optimizer, 40, seed: 3, onStep: (loss, x, y) => session.Step(loss, x, y), loss: lossFunction.call);

        // The snapshot: in every geometry, with a standard error; the euclidean value equals the mean squared norm of
        // the recorded micro-batch gradients.
        session.Flush();
        var snapshot = session.Latest!;
        double expected = recorder.SquaredNorms[^1].Average();
        Assert.Equal(expected, snapshot.Get("gradient.test_mean_squared_norm", Geometry.Euclidean), expected * 1e-5);
        foreach (var geometry in new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive })
        {
            Assert.True(double.IsFinite(snapshot.Get("gradient.test_mean_squared_norm", geometry)));
            Assert.True(snapshot.Get("gradient.test_mean_squared_norm.stderr", geometry) > 0);
        }

        // The meter: a gauge with the definition's unit and the snapshot's value.
        var gauge = MeterReader.Collect().Single(m => m.RunId == "made-up-indicator" && m.Geometry == "euclidean"
            && m.Instrument == TrainingProbesMeter.InstrumentPrefix + "gradient.test_mean_squared_norm");
        Assert.Equal("1", gauge.Unit);
        Assert.Equal(snapshot.Get("gradient.test_mean_squared_norm", Geometry.Euclidean), gauge.Value);

        // The rules: a warn rule on it fired (once: it fires when its condition starts to hold, and it held from the
        // first window), and early stopping took its direction from the entry.
        Assert.Equal(1, fired);
        Assert.Equal(StoppingMode.Max, early.EffectiveMode);
        Assert.Equal(StoppingMode.Max, session.Rules.OfType<EarlyStopping>().Single().EffectiveMode);
    }

    [Fact]
    public void Registering_a_second_definition_under_a_taken_name_is_refused()
    {
        var taken = new IndicatorDefinition(Indicators.Cosine, "1", "Another cosine.");
        var error = Assert.Throws<ArgumentException>(() => IndicatorCatalogue.Register(taken));
        Assert.Contains("already in the catalogue", error.Message);
    }

    [Fact]
    public void Every_built_in_indicator_is_in_a_readme_table_with_the_catalogues_unit()
    {
        var rows = File.ReadAllLines(Path.Combine(RepositoryRoot(), "docs", "REFERENCE.md")).Where(l => l.StartsWith("| `trainingprobes.", StringComparison.Ordinal)).ToList();
        foreach (var definition in IndicatorCatalogue.BuiltIn)
        {
            // Indicators only a fixed-point window computes are listed under the fixed-point probe's prefix.
            string[] names = [TrainingProbesMeter.InstrumentPrefix + definition.Name, TrainingProbesMeter.InstrumentPrefix + FixedPointProbe.Prefix + definition.Name];
            var row = rows.FirstOrDefault(l => names.Any(n => l.StartsWith("| `" + n + "` |", StringComparison.Ordinal)));
            Assert.True(row is not null, $"docs/REFERENCE.md has no instrument row for {names[0]}");
            Assert.Equal(definition.Unit, row.Split('|')[3].Trim().Trim('`'));
        }
    }

    private static string RepositoryRoot()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "TrainingProbes.sln"))) directory = directory.Parent;
        return directory?.FullName ?? throw new InvalidOperationException("TrainingProbes.sln not found above " + AppContext.BaseDirectory);
    }
}

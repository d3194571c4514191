using System.Globalization;
using Xunit.Abstractions;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// Adding a built-in Gram indicator is adding one file: a copy of the library's sources gets one more file under
/// Catalogue/Indicators and nothing else, a small trainer builds against that copy, and the new indicator comes out of a
/// session with its value (checked against the window's gradients, recomputed by the trainer), its standard error,
/// its instrument's unit and the direction a rule takes from it.
/// </summary>
[Trait("Category", "Long")]   // copies the sources and builds a project: `dotnet test --filter Category=Long`
public sealed class AddIndicatorFileTests(ITestOutputHelper output)
{
    private const string Name = "gradient.test_mean_squared_norm";

    /// <summary>The one added file: the mean squared norm of the window's gradients, mean_i G_ii, better when higher.</summary>
    private const string IndicatorFile = """
        using TrainingProbes.Stopping;

        namespace TrainingProbes;

        public static partial class Indicators
        {
            internal const string TestMeanSquaredNorm = "gradient.test_mean_squared_norm";
        }

        /// <summary>mean_i ||g_i||^2 over the window's gradients (a test indicator).</summary>
        internal sealed class TestMeanSquaredNormIndicator() : BuiltInIndicator(IndicatorFamily.FirstOrder, 1000,
            new(Indicators.TestMeanSquaredNorm, "{norm2}", "Mean squared norm of the window's gradients (a test indicator).", StoppingMode.Max, PerGeometry: true,
                FromGram: g =>
                {
                    double sum = 0;
                    for (int i = 0; i < g.K; i++) sum += g[i, i];
                    return sum / g.K;
                }));
        """;

    /// <summary>The trainer's project: the copied library, and the tests' shared training loop (its source, linked).</summary>
    private const string Project = """
        <Project Sdk="Microsoft.NET.Sdk">
          <PropertyGroup>
            <OutputType>Exe</OutputType>
          </PropertyGroup>
          <ItemGroup>
            <ProjectReference Include="../../src/TrainingProbes/TrainingProbes.csproj" />
            <PackageReference Include="TorchSharp-cpu" />
            <Compile Include="../../tests/TrainingProbes.TestSupport/Trainer.cs" />
          </ItemGroup>
        </Project>
        """;

    /// <summary>Trains 40 steps with a window every 10; prints the last window's values, the gauge's unit and the rule's direction.</summary>
    private const string Program = """
        using System.Diagnostics.Metrics;
        using System.Globalization;
        using TorchSharp;
        using TrainingProbes;
        using TrainingProbes.Stopping;
        using TrainingProbes.TestSupport;
        using static TorchSharp.torch;

        const string name = "gradient.test_mean_squared_norm";
        string? unit = null;
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, _) => { if (instrument.Name == "trainingprobes." + name) unit = instrument.Unit; },
        };
        listener.Start();

        var (model, optimizer) = Trainer.SmallModel(seed: 4);
        var recorder = new Recorder();
        var early = new EarlyStopping(name) { Geometry = Geometry.Euclidean, Patience = 1000 };
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = 4, Interval = 10, OverheadBudget = null, Output = null, Loss = Trainer.CrossEntropy,
            Probes = [recorder], Stopping = [early],
        }, optimizer);
        Trainer.Train(model, optimizer, 40, seed: 3, onStep: (loss, x, y) => session.Step(loss, x, y));
        session.Flush();
        var snapshot = session.Latest!;
        string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        Console.WriteLine($"value={F(snapshot.Get(name, Geometry.Euclidean))}");
        Console.WriteLine($"stderr={F(snapshot.Get(name + ".stderr", Geometry.Euclidean))}");
        Console.WriteLine($"adaptive={F(snapshot.Get(name, Geometry.Adaptive))}");
        Console.WriteLine($"expected={F(recorder.SquaredNorms[^1].Average())}");
        Console.WriteLine($"unit={unit}");
        Console.WriteLine($"direction={session.Rules.OfType<EarlyStopping>().Single().EffectiveMode}");

        /// <summary>Each window's squared gradient norms, row sums of squares of its raw K x P gradients in double precision.</summary>
        sealed class Recorder : TrainingProbe
        {
            public override string Name => "recorder";

            public List<double[]> SquaredNorms { get; } = [];

            public override void OnWindowClosed(ProbeWindowContext window) => SquaredNorms.Add(window.ParameterNames
                .Select(p => window.Gradients(p).to(ScalarType.Float64).reshape(window.WindowSize, -1).square().sum(dim: 1L))
                .Aggregate((a, b) => a + b).data<double>().ToArray());
        }
        """;

    [Fact]
    public void One_added_file_publishes_a_new_gram_indicator_with_its_standard_error_unit_and_direction()
    {
        var work = Directory.CreateTempSubdirectory("trainingprobes-indicator-").FullName;
        try
        {
            // The library as it is in the repository (sources and build files, no build outputs), plus one file.
            foreach (var file in new[] { ".editorconfig", "Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props", "LICENSE", "README.md" })
                File.Copy(RepositoryFiles.PathOf(file), Path.Combine(work, file));
            CopySources(RepositoryFiles.PathOf("src"), Path.Combine(work, "src"));
            Directory.CreateDirectory(Path.Combine(work, "tests/TrainingProbes.TestSupport"));
            File.Copy(RepositoryFiles.PathOf("tests/TrainingProbes.TestSupport/Trainer.cs"), Path.Combine(work, "tests/TrainingProbes.TestSupport/Trainer.cs"));
            string added = Path.Combine(work, "src/TrainingProbes/Catalogue/Indicators/TestMeanSquaredNorm.cs");
            Assert.False(File.Exists(added));
            File.WriteAllText(added, IndicatorFile);

            string app = Path.Combine(work, "apps/Trainer");
            Directory.CreateDirectory(app);
            File.WriteAllText(Path.Combine(app, "Trainer.csproj"), Project);
            File.WriteAllText(Path.Combine(app, "Program.cs"), Program);
            var (exit, text) = DotnetCli.Dotnet(app, ["run", "--configuration", "Release"], TimeSpan.FromMinutes(8));
            output.WriteLine(text);
            Assert.True(exit == 0, $"`dotnet run` of the trainer exited with {exit}:\n{text}");

            var values = text.Split('\n').Select(l => l.Trim().Split('=', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0], p => p[1]);
            double Number(string key) => double.Parse(values[key], CultureInfo.InvariantCulture);
            Assert.Equal(Number("expected"), Number("value"), Number("expected") * 1e-5);
            Assert.True(Number("stderr") > 0, $"the standard error is {values["stderr"]}");
            Assert.True(double.IsFinite(Number("adaptive")), "published in every geometry");
            Assert.Equal("{norm2}", values["unit"]);
            Assert.Equal("Max", values["direction"]);
        }
        finally
        {
            try { Directory.Delete(work, recursive: true); }
            catch (IOException) { }
        }
    }

    /// <summary>Copies a source tree without its build outputs.</summary>
    private static void CopySources(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from))
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        foreach (var folder in Directory.GetDirectories(from))
            if (Path.GetFileName(folder) is not ("bin" or "obj"))
                CopySources(folder, Path.Combine(to, Path.GetFileName(folder)));
    }
}

using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Xunit.Abstractions;

namespace TrainingProbes.IntegrationTests;

/// <summary>
/// The packages as a user gets them: <c>dotnet pack</c> makes the three packages into a local feed, their contents
/// are checked, and a fresh console project outside the repository (<c>dotnet new console</c>, <c>dotnet add
/// package</c>) trains a few hundred steps with the one added line, serving its metrics through the Prometheus
/// package. The project adds TrainingProbes, not TrainingProbes.NativeRepair: the repair's buildTransitive targets
/// come with TrainingProbes' dependency on it. On a machine whose libstdc++ lacks GLIBCXX_3.4.32 (Debian 12, Ubuntu
/// 22.04), the same project built with the repair switched off must fail to load TorchSharp: the repair is what makes
/// it run.
/// </summary>
[Trait("Category", "Long")]   // packs, creates and builds a console project: `dotnet test --filter Category=Long`
public sealed partial class PackageConsumptionTests(ITestOutputHelper output)
{
    private const string TorchSharpVersion = "0.107.0";
    private const string RepairTargets = "buildTransitive/TrainingProbes.NativeRepair.targets";
    private const string RepairTaskAssembly = "tasks/netstandard2.0/TrainingProbes.NativeRepair.dll";
    private static readonly string[] Packables =
    [
        "src/TrainingProbes/TrainingProbes.csproj",
        "src/TrainingProbes.NativeRepair/TrainingProbes.NativeRepair.csproj",
        "src/TrainingProbes.Prometheus/TrainingProbes.Prometheus.csproj",
    ];
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromMinutes(5);

    [Fact]
    public void The_packages_install_build_and_train_in_a_fresh_console_project()
    {
        string version = $"0.1.0-ci.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
        var work = Directory.CreateTempSubdirectory("trainingprobes-package-").FullName;
        try
        {
            // As a user packs: no version override. The Prometheus package is a prerelease (its exporter is one),
            // which NuGet requires; a stable version there fails the pack (NU5104).
            string plain = Path.Combine(work, "plain");
            foreach (var packable in Packables)
                Cli(RepositoryFiles.Root, "pack", RepositoryFiles.PathOf(packable), "--configuration", "Release", "--output", plain, "--artifacts-path", Path.Combine(work, "plain-artifacts"));
            var packed = Directory.GetFiles(plain, "*.nupkg").Select(Path.GetFileName).Order().ToArray();
            Assert.Equal(3, packed.Length);
            Assert.Matches(@"^TrainingProbes\.\d+\.\d+\.\d+\.nupkg$", packed[0]);
            Assert.Matches(@"^TrainingProbes\.NativeRepair\.\d+\.\d+\.\d+\.nupkg$", packed[1]);
            Assert.Matches(@"^TrainingProbes\.Prometheus\.\d+\.\d+\.\d+-[0-9A-Za-z.]+\.nupkg$", packed[2]);

            string feed = Path.Combine(work, "feed");
            foreach (var packable in Packables)
                Pack(packable, feed, Path.Combine(work, "artifacts"), version);
            CheckPackage(Path.Combine(feed, $"TrainingProbes.{version}"), "TrainingProbes", library: true);
            CheckPackage(Path.Combine(feed, $"TrainingProbes.Prometheus.{version}"), "TrainingProbes.Prometheus", library: true);
            CheckPackage(Path.Combine(feed, $"TrainingProbes.NativeRepair.{version}"), "TrainingProbes.NativeRepair", library: false);

            // The repair ships in its own package, and TrainingProbes depends on it without holding back its
            // buildTransitive assets (the default exclusion of a dependency's build/ folder does not cover them).
            var dependency = Dependencies(Path.Combine(feed, $"TrainingProbes.{version}.nupkg")).Single(d => d.Attribute("id")?.Value == "TrainingProbes.NativeRepair");
            Assert.Equal(version, dependency.Attribute("version")?.Value);
            Assert.DoesNotContain("BuildTransitive", dependency.Attribute("exclude")?.Value ?? "", StringComparison.OrdinalIgnoreCase);

            // A user's project: outside the repository, so none of its Directory.Build.* files apply.
            string project = Path.Combine(work, "Consumer");
            Directory.CreateDirectory(project);
            Assert.False(Path.GetFullPath(project).StartsWith(RepositoryFiles.Root, StringComparison.Ordinal));
            File.WriteAllText(Path.Combine(project, "nuget.config"),
                $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <add key="trainingprobes-local" value="{feed}" />
                  </packageSources>
                </configuration>
                """);
            Cli(project, "new", "console", "--framework", "net10.0", "--name", "Consumer", "--output", ".");
            Cli(project, "add", "package", "TrainingProbes", "--version", version);
            Cli(project, "add", "package", "TrainingProbes.Prometheus", "--version", version);
            Cli(project, "add", "package", "TorchSharp-cpu", "--version", TorchSharpVersion);
            File.WriteAllText(Path.Combine(project, "Program.cs"), ConsumerProgram);
            Assert.DoesNotContain("NativeRepair", File.ReadAllText(Path.Combine(project, "Consumer.csproj")));

            int port = PrometheusServer.FreePort();
            var environment = new Dictionary<string, string?>
            {
                ["TRAININGPROBES_INTERVAL"] = "20",
                ["TRAININGPROBES_OVERHEAD_BUDGET"] = "none",
                ["TRAININGPROBES_OUTPUT"] = "none",
                ["TRAININGPROBES_PROMETHEUS"] = $"127.0.0.1:{port}",
            };
            var run = Cli(project, environment, "run", "--configuration", "Release");

            // 300 steps, a window of 8 every 20 steps: 15 windows, all with finite values, and the endpoint served them.
            var result = ResultPattern().Match(run);
            Assert.True(result.Success, $"the consumer printed no result line:\n{run}");
            Assert.Equal(15, int.Parse(result.Groups["windows"].Value));
            Assert.Equal(0, int.Parse(result.Groups["failures"].Value));
            double cosine = double.Parse(result.Groups["cosine"].Value, System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(cosine, -1.0, 1.0);
            Assert.True(int.Parse(result.Groups["series"].Value) >= 20, $"the scrape endpoint served too few trainingprobes_ series:\n{run}");

            // NuGet imported the repair into the consumer's build through TrainingProbes' dependency.
            string imports = File.ReadAllText(Path.Combine(project, "obj", "Consumer.csproj.nuget.g.targets"));
            Assert.Contains($"trainingprobes.nativerepair/{version}/{RepairTargets}", imports);

            if (!SystemLibstdcxxHas("GLIBCXX_3.4.32"))
            {
                // Negative control: the same project with the package's repair switched off cannot load TorchSharp here.
                Cli(project, "build", "--configuration", "Debug", "-p:TrainingProbesRepairLibTorchSharp=false");
                var (exit, unrepaired) = DotnetCli.Dotnet(project, [Path.Combine(project, "bin", "Debug", "net10.0", "Consumer.dll")], CommandTimeout, environment);
                output.WriteLine($"without the repair (exit {exit}):\n{unrepaired}");
                Assert.NotEqual(0, exit);
                Assert.Contains("Failed to load native component LibTorchSharp", unrepaired);
            }
            else
            {
                output.WriteLine("This machine's libstdc++ has GLIBCXX_3.4.32: TorchSharp loads without the repair, so there is no negative control to run.");
            }
        }
        finally
        {
            Directory.Delete(work, recursive: true);
            // The uniquely versioned packages were extracted into the global packages folder: remove them.
            string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } configured
                ? configured
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            foreach (var id in new[] { "trainingprobes", "trainingprobes.nativerepair", "trainingprobes.prometheus" })
            {
                var folder = Path.Combine(packages, id, version);
                if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            }
        }
    }

    private const string ConsumerProgram =
        """
        using TorchSharp;
        using static TorchSharp.torch;

        torch.manual_seed(1);
        var x = torch.randn(512, 10);
        var y = (x.sum(1) > 0).to(ScalarType.Int64);
        var model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2));
        var optimizer = new TrainingProbes.Optimizers.GcSafeSgd(model.parameters(), 0.1);
        var lossFunction = nn.CrossEntropyLoss();

        for (int step = 0; step < 300; step++)
        {
            using var scope = torch.NewDisposeScope();
            var batch = torch.randint(0, 512, [32]);
            var (input, target) = (x[batch], y[batch]);
            optimizer.zero_grad();
            var loss = lossFunction.call(model.call(input), target);
            loss.backward();
            if (model.Probe(loss, optimizer, input, target, lossFunction.call).ShouldStop) break;
            optimizer.step();
        }

        var session = TrainingProbes.ProbeSession.Get(model)!;
        session.Flush();
        using var http = new System.Net.Http.HttpClient();
        var metrics = await http.GetStringAsync($"http://{Environment.GetEnvironmentVariable("TRAININGPROBES_PROMETHEUS")}/metrics");
        int series = metrics.Split('\n').Count(line => line.StartsWith("trainingprobes_"));
        double cosine = session.History[^1].Get(TrainingProbes.Indicators.Cosine, TrainingProbes.Geometry.Euclidean);
        Console.WriteLine($"consumer: windows {session.History.Count} failures {session.FailureCount} cosine {cosine.ToString(System.Globalization.CultureInfo.InvariantCulture)} series {series}");
        session.Dispose();
        """;

    private void Pack(string project, string feed, string artifacts, string version) =>
        Cli(RepositoryFiles.Root, "pack", RepositoryFiles.PathOf(project), "--configuration", "Release", "--output", feed,
            "--artifacts-path", artifacts, $"-p:Version={version}");

    private string Cli(string directory, params string[] arguments) => Cli(directory, null, arguments);

    private string Cli(string directory, IReadOnlyDictionary<string, string?>? environment, params string[] arguments)
    {
        var (exit, text) = DotnetCli.Dotnet(directory, arguments, CommandTimeout, environment);
        output.WriteLine($"$ dotnet {string.Join(' ', arguments)}  (exit {exit})");
        Assert.True(exit == 0, $"`dotnet {string.Join(' ', arguments)}` in {directory} exited with {exit}:\n{text}");
        return text;
    }

    /// <summary>What a package must carry: README, licence, repository URL, and either (a library) its assembly, XML docs
    /// and symbols, or (the repair) only its buildTransitive targets and the task assembly they load.</summary>
    private static void CheckPackage(string pathWithoutExtension, string id, bool library)
    {
        using (var package = ZipFile.OpenRead(pathWithoutExtension + ".nupkg"))
        {
            var entries = package.Entries.Select(e => e.FullName).ToHashSet();
            Assert.Contains("README.md", entries);
            Assert.Contains("LICENSE", entries);
            if (library)
            {
                Assert.Contains($"lib/net10.0/{id}.dll", entries);
                Assert.Contains($"lib/net10.0/{id}.xml", entries);
                Assert.DoesNotContain(entries, e => e.StartsWith("buildTransitive/", StringComparison.Ordinal));
            }
            else
            {
                Assert.Contains(RepairTargets, entries);
                Assert.Contains(RepairTaskAssembly, entries);
                Assert.DoesNotContain(entries, e => e.StartsWith("lib/", StringComparison.Ordinal));
            }

            using var nuspecStream = package.GetEntry($"{id}.nuspec")!.Open();
            var metadata = XDocument.Load(nuspecStream).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
            string? Value(string name) => metadata.Elements().SingleOrDefault(e => e.Name.LocalName == name)?.Value;
            Assert.Equal("MIT", Value("license"));
            Assert.Equal("README.md", Value("readme"));
            var repository = metadata.Elements().Single(e => e.Name.LocalName == "repository");
            Assert.StartsWith("https://", repository.Attribute("url")!.Value);
            Assert.False(string.IsNullOrWhiteSpace(Value("description")));

            using var readme = new StreamReader(package.GetEntry("README.md")!.Open(), Encoding.UTF8);
            string text = readme.ReadToEnd();
            Assert.Contains($"dotnet add package {id}", text);
            if (!library)
            {
                Assert.Contains("TrainingProbesRepairLibTorchSharp=false", text);
                Assert.False(File.Exists(pathWithoutExtension + ".snupkg"), "the repair package's assembly is a build task: no symbols package");
                return;
            }

            // The package's README shows the same one line as the repository's README and the consumer below.
            Assert.Contains("model.Probe(loss, optimizer, x, y, lossFunction.call)", text);
            Assert.Contains("model.Probe(loss, optimizer, x, y, lossFunction.call)", File.ReadAllText(RepositoryFiles.PathOf("README.md")));
        }

        using var symbols = ZipFile.OpenRead(pathWithoutExtension + ".snupkg");
        Assert.Contains($"lib/net10.0/{id}.pdb", symbols.Entries.Select(e => e.FullName));
    }

    /// <summary>The <c>dependency</c> elements of a package's nuspec.</summary>
    private static List<XElement> Dependencies(string nupkg)
    {
        using var package = ZipFile.OpenRead(nupkg);
        using var nuspec = package.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal) && !e.FullName.Contains('/')).Open();
        return XDocument.Load(nuspec).Descendants().Where(e => e.Name.LocalName == "dependency").ToList();
    }

    /// <summary>Whether the system libstdc++ (the first found on the repair's search list, which the build gives this
    /// assembly) defines the symbol version <paramref name="version"/> (read from its bytes).</summary>
    private static bool SystemLibstdcxxHas(string version)
    {
        string searchPath = typeof(PackageConsumptionTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .SingleOrDefault(a => a.Key == "TrainingProbesLibStdCxxSearchPath")?.Value ?? "";
        var library = searchPath.Split(';', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault(File.Exists);
        if (library is null) return true;   // not a glibc Linux we know: no negative control
        var bytes = File.ReadAllBytes(library);
        return bytes.AsSpan().IndexOf(Encoding.ASCII.GetBytes(version + "\0")) >= 0;
    }

    [GeneratedRegex(@"consumer: windows (?<windows>\d+) failures (?<failures>\d+) cosine (?<cosine>\S+) series (?<series>\d+)")]
    private static partial Regex ResultPattern();
}

using TrainingProbes.Checkpoints;
using static TorchSharp.torch;

namespace TrainingProbes.FaultScenarios;

/// <summary>Faults in files and settings: corrupted checkpoints, out-of-range options and environment values.</summary>
internal static class FileFaults
{
    [Scenario("12.13: single-byte corruptions of a .pt checkpoint")]
    private static void CorruptedPtCheckpoint()
    {
        string folder = Directory.CreateTempSubdirectory("trainingprobes-fault-").FullName;
        try
        {
            var model = new Net(1);
            string path = Path.Combine(folder, "model.pt");
            CheckpointFile.Save(model, path, CheckpointFormat.PyTorch);
            byte[] original = File.ReadAllBytes(path);
            var expected = Weights(model);
            int silent = 0, refused = 0, same = 0;
            var rng = new Random(12);
            string corrupted = Path.Combine(folder, "corrupted.pt");
            for (int trial = 0; trial < 300; trial++)
            {
                byte[] bytes = (byte[])original.Clone();
                int at = trial * (bytes.Length / 300) + rng.Next(bytes.Length / 300);
                bytes[at] ^= (byte)(1 + rng.Next(255));
                File.WriteAllBytes(corrupted, bytes);
                var target = new Net(99);
                try
                {
                    CheckpointFile.Load(target, corrupted);
                }
                catch (InvalidDataException)
                {
                    refused++;
                    continue;
                }

                if (Weights(target).SequenceEqual(expected)) same++;
                else silent++;
            }

            Check.That(silent == 0, $"{silent} of 300 corrupted files loaded with wrong values ({refused} refused, {same} loaded the right values)");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static float[] Weights(Net model) => model.parameters().SelectMany(p => p.detach().data<float>().ToArray()).ToArray();

    [Scenario("12.14: a window size whose K x P buffer cannot be allocated as one tensor, and unusable environment values")]
    private static void OutOfRangeSettings()
    {
        bool refused = false;
        try
        {
            var options = new ProbeOptions { WindowSize = 30000, Interval = 30000, Output = null };
            using var session = ProbeSession.Attach(new Net(1), options);
        }
        catch (ArgumentException ex)
        {
            refused = ex.Message.Contains("WindowSize", StringComparison.Ordinal);
        }

        Check.That(refused, "WindowSize = 30000 is refused at attach with a message naming WindowSize");

        // A folder that does not exist, under a folder this scenario made: no other program can have made it.
        string scratch = Directory.CreateTempSubdirectory("trainingprobes-settings-").FullName;
        string missingFolder = Path.Combine(scratch, "no-such-folder", "best.pt");
        (string Variable, string Value)[] bad =
        [
            ("TRAININGPROBES_WINDOW_SIZE", "1"), ("TRAININGPROBES_WINDOW_SIZE", "x"), ("TRAININGPROBES_WINDOW_SIZE", "99999999999"),
            ("TRAININGPROBES_WINDOW_SIZE", "30000"),
            ("TRAININGPROBES_INTERVAL", "0"), ("TRAININGPROBES_INTERVAL", "-5"), ("TRAININGPROBES_INTERVAL", "1.5"),
            ("TRAININGPROBES_GEOMETRIES", "1"), ("TRAININGPROBES_GEOMETRIES", "7"), ("TRAININGPROBES_GEOMETRIES", "none"),
            ("TRAININGPROBES_GEOMETRIES", "euclid"), ("TRAININGPROBES_LAYER_METRICS", "-1"), ("TRAININGPROBES_LAYER_METRICS", "a"),
            ("TRAININGPROBES_OVERHEAD_BUDGET", "2"), ("TRAININGPROBES_OVERHEAD_BUDGET", "0"), ("TRAININGPROBES_OVERHEAD_BUDGET", "5%"),
            ("TRAININGPROBES_OVERHEAD_BUDGET", "NaN"), ("TRAININGPROBES_STORAGE", "2"), ("TRAININGPROBES_STORAGE", "half"),
            ("TRAININGPROBES_SKETCH_DIMENSION", "10"), ("TRAININGPROBES_BACKGROUND", "yes"), ("TRAININGPROBES_OUTPUT", "file"),
            ("TRAININGPROBES_STOP", "loss <"), ("TRAININGPROBES_CHECKPOINT", missingFolder),
            ("TRAININGPROBES_CHECKPOINT", "best.txt"), ("TRAININGPROBES_PROMETHEUS", "99999"),
        ];
        var unnamed = new List<string>();
        foreach (var (variable, value) in bad)
        {
            Environment.SetEnvironmentVariable(variable, value);
            try
            {
                ProbeOptions.FromEnvironment();
                unnamed.Add($"{variable}={value} accepted");
            }
            catch (ArgumentException ex)
            {
                if (!ex.Message.Contains(variable, StringComparison.Ordinal)) unnamed.Add($"{variable}={value}: {ex.Message}");
            }
            finally
            {
                Environment.SetEnvironmentVariable(variable, null);
            }
        }

        Directory.Delete(scratch, recursive: true);
        Check.That(unnamed.Count == 0, $"{unnamed.Count} of {bad.Length} bad values are accepted or refused without naming their variable: " + string.Join(" | ", unnamed));
    }
}

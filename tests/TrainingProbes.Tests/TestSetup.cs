using System.Runtime.CompilerServices;
using TorchSharp;

// Many tests seed torch's global generator (torch.manual_seed) before building a model; run the classes one at a
// time so that no test reseeds it while another is drawing from it.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace TrainingProbes.Tests;

internal static class TestSetup
{
    /// <summary>
    /// One intra-op thread per torch call: xunit runs test classes in parallel on a 2-core machine, and OpenMP's
    /// spinning workers of several concurrent tests would otherwise fight for the cores (tests slow down tenfold).
    /// </summary>
    [ModuleInitializer]
    internal static void SingleThreadedTorch() => torch.set_num_threads(1);

    /// <summary>
    /// Every session the tests build is strict unless the test says otherwise: a probe failure throws instead of being
    /// logged, so a test cannot pass over a failure it did not expect. Tests of failure handling set Strict = false.
    /// </summary>
    [ModuleInitializer]
    internal static void StrictSessions() => ProbeOptions.StrictByDefault = true;
}

/// <summary>Names of the optimizer's step-to-step statistics (step windows), which the replay tests check.</summary>
internal static class StepNames
{
    public static string Step(string name) => TrainingProbes.Probes.GradientStatisticsProbe.Prefix + name;
}

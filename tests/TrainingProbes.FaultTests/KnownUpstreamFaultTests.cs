using Xunit.Abstractions;

namespace TrainingProbes.FaultTests;

/// <summary>
/// Faults outside TrainingProbes that users meet in training runs, reproduced without TrainingProbes code
/// (TrainingProbes.FaultScenarios' reproductions). Category KnownUpstreamFault: CI runs them with every other test.
/// Each passes while the fault is there and its workaround holds: the faulty call fails under garbage pressure, the same
/// work with the workaround does not. Once TorchSharp fixes the fault, the reproduction fails and says so, and the
/// docs/KNOWN-ISSUES.md and the README's summary are to be updated.
/// </summary>
[Trait("Category", "KnownUpstreamFault")]
[Trait("Category", "Long")]
public sealed class KnownUpstreamFaultTests(ITestOutputHelper log)
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    public static TheoryData<string> Reproductions() => FaultScenarioTests.Listed("--list-reproductions");

    [Theory]
    [MemberData(nameof(Reproductions))]
    public void TorchSharp_fault_reproduces_and_its_workaround_holds(string reproduction)
    {
        var (code, output) = FaultScenarioTests.Run(reproduction, Limit);
        string tail = output.Length > 6000 ? output[^6000..] : output;
        log.WriteLine(tail);   // what failed where, and the control: shown with --logger "console;verbosity=detailed"
        Assert.True(code != -1, $"{reproduction} did not finish within {Limit.TotalMinutes} minutes; its output:\n{tail}");
        Assert.True(code != 3, $"{reproduction}: the upstream fault no longer reproduces. {tail}");
        Assert.True(code == 0, $"{reproduction} exited {code} (1: the workaround failed too; over 128: killed by a signal):\n{tail}");
    }
}

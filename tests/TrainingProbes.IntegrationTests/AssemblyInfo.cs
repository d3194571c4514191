// These tests start servers and train models for seconds each; run them one at a time so that their timing does not
// depend on each other.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace TrainingProbes.IntegrationTests
{
    internal static class StrictSessions
    {
        /// <summary>Every session these tests build in process is strict: a probe failure throws instead of being logged.</summary>
        [System.Runtime.CompilerServices.ModuleInitializer]
        internal static void Initialize() => ProbeOptions.StrictByDefault = true;
    }
}

using TrainingProbes.Stopping;

namespace TrainingProbes.Tests.Stopping;

/// <summary>Runs a scripted sequence of monitored values through a rule, one evaluation every 100 steps.</summary>
internal static class RuleScript
{
    public const long Stride = 100;

    /// <summary>Step of the i-th evaluation (0-based): 100, 200, ...</summary>
    public static long StepOf(int index) => Stride * (index + 1);

    public static List<RuleDecision> Run(StoppingRule rule, IEnumerable<double> values, int firstIndex = 0) =>
        values.Select((v, i) => rule.Evaluate(v, StepOf(firstIndex + i))).ToList();

    /// <summary>
    /// One character per evaluation: 'B' fired and improved, 'F' fired, 'I' improved, '.' neither. Compared as a
    /// string, a mismatch shows exactly which evaluation differs.
    /// </summary>
    public static string Pattern(IEnumerable<RuleDecision> decisions) =>
        string.Concat(decisions.Select(d => (d.Fired, d.Improved) switch
        {
            (true, true) => 'B',
            (true, false) => 'F',
            (false, true) => 'I',
            _ => '.',
        }));

    public static string Pattern(StoppingRule rule, IEnumerable<double> values) => Pattern(Run(rule, values));
}

namespace TrainingProbes.Stopping;

/// <summary>
/// Finds the stopping rules that would never fire because nothing publishes what they monitor. At attach: a rule
/// whose name the catalogue knows but in a geometry it is never published in (<c>regret.relative</c> without
/// <c>[fisher]</c>, a geometry the session does not compute) is an error; a name the catalogue does not know but that
/// is a few letters away from one it does (<c>regret.relatve</c>) is a likely typo. A name neither knows (a value the
/// trainer reports, such as <c>val.loss</c>) is warned about once if <see cref="Patience"/> windows pass in which it
/// was neither published nor reported.
/// </summary>
internal static class MonitorCheck
{
    /// <summary>Windows after which a rule whose value was never published nor reported is reported as unknown.</summary>
    public const int Patience = 10;

    private static readonly string[] Prefixes = ["", Probes.GradientStatisticsProbe.Prefix, FixedPointProbe.Prefix];

    /// <summary>Why the rule can never fire in a session with <paramref name="options"/>, or null when it can.</summary>
    public static string? Impossible(StoppingRule rule, ProbeOptions options)
    {
        if (!IndicatorCatalogue.TryFind(rule.Monitor, out var definition)) return null;
        if (rule.Monitor.StartsWith(FixedPointProbe.Prefix, StringComparison.Ordinal) && !options.Probes.Any(p => p is FixedPointProbe))
            return $"The stopping rule '{rule.Name}' monitors {rule.MonitorLabel}, which only a FixedPointProbe publishes: add one to ProbeOptions.Probes.";
        if (definition.PerGeometry && rule.Geometry == Geometry.None)
            return $"The stopping rule '{rule.Name}' monitors {rule.Monitor}, which is published once per geometry: give it one, for example " +
                $"{rule.Monitor}[{Names(options.Geometries).First()}] (this session computes {string.Join(", ", Names(options.Geometries))}).";
        if (!definition.PerGeometry && rule.Geometry != Geometry.None)
            return $"The stopping rule '{rule.Name}' monitors {rule.MonitorLabel}, but {rule.Monitor} has no geometry: write {rule.Monitor} without one.";
        if (definition.PerGeometry && !options.Geometries.HasFlag(rule.Geometry))
            return $"The stopping rule '{rule.Name}' monitors {rule.MonitorLabel}, but this session computes only {string.Join(", ", Names(options.Geometries))}: " +
                $"add {rule.Geometry} to ProbeOptions.Geometries or monitor another geometry.";
        return null;
    }

    /// <summary>The catalogue name a few edits away from the rule's unknown monitor, or null.</summary>
    public static string? LikelyMeant(string monitor)
    {
        if (IndicatorCatalogue.TryFind(monitor, out _)) return null;
        string? best = null;
        int bestDistance = int.MaxValue;
        foreach (var definition in IndicatorCatalogue.All)
        foreach (var prefix in Prefixes)
        {
            string candidate = prefix + definition.Name;
            int distance = Distance(monitor, candidate);
            if (distance < bestDistance) (best, bestDistance) = (candidate, distance);
        }

        return bestDistance <= Math.Max(2, monitor.Length / 8) ? best : null;
    }

    /// <summary>The message for a monitor that nothing published or reported in the first windows.</summary>
    public static string NeverSeen(StoppingRule rule, int windows)
    {
        string? meant = LikelyMeant(rule.Monitor);
        return $"The stopping rule '{rule.Name}' monitors {rule.MonitorLabel}, which no probe published in {windows} windows and the trainer never reported" +
            (meant is null
                ? ". If your trainer reports it with ProbeSession.Report less often (once per epoch, say), this is expected until the first report; " +
                  "otherwise check the name (the published names are in the instrument table of docs/REFERENCE.md)."
                : $"; did you mean {meant}?");
    }

    private static IEnumerable<string> Names(Geometry geometries) =>
        new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive }.Where(g => geometries.HasFlag(g)).Select(g => g.ToName());

    /// <summary>Levenshtein distance (insertions, deletions, substitutions).</summary>
    private static int Distance(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) previous[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (int j = 1; j <= b.Length; j++)
                current[j] = Math.Min(Math.Min(current[j - 1], previous[j]) + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            (previous, current) = (current, previous);
        }

        return previous[b.Length];
    }
}

using TrainingProbes.Probes;
using TrainingProbes.Stopping;
using static TrainingProbes.Indicators;

namespace TrainingProbes;

/// <summary>
/// Every indicator the library knows: one <see cref="IndicatorDefinition"/> each. The first-order family is computed
/// from these definitions, the meter declares its instruments from them, the stopping rules look up their direction
/// here, and a test checks the instrument tables of docs/REFERENCE.md against them. A built-in indicator is one file under
/// Catalogue/Indicators; a user's first-order indicator is one <see cref="Register"/> call with its <see cref="IndicatorDefinition.FromGram"/>.
/// Formulas and references: the section "The indicators" of docs/REFERENCE.md.
/// </summary>
public static class IndicatorCatalogue
{
    private const string One = "1";

    /// <summary>The built-in indicators, one file each under Catalogue/Indicators.</summary>
    public static IReadOnlyList<IndicatorDefinition> BuiltIn { get; } = BuiltInIndicator.Discover();

    private static readonly object Gate = new();
    private static IndicatorDefinition[] _all = [.. BuiltIn];
    private static Dictionary<string, IndicatorDefinition> _byName = BuiltIn.ToDictionary(d => d.Name);

    /// <summary>The built-in indicators and the registered ones.</summary>
    public static IReadOnlyList<IndicatorDefinition> All => Volatile.Read(ref _all);

    /// <summary>
    /// Adds an indicator. One with <see cref="IndicatorDefinition.FromGram"/> is computed by every session attached after
    /// this call, in both first-order families, with its standard error and smoothed mean; its instrument and its
    /// direction for the stopping rules come from the definition. Names are process-wide, as instrument names are.
    /// </summary>
    /// <param name="definition">The definition.</param>
    /// <exception cref="ArgumentException">The name is not dotted snake_case, or another definition has it.</exception>
    public static void Register(IndicatorDefinition definition)
    {
        ArgumentNullException.ThrowIfNull(definition);
        ProbeWindowContext.ValidateName(definition.Name);
        lock (Gate)
        {
            if (_byName.TryGetValue(definition.Name, out var existing))
            {
                if (existing == definition) return;
                throw new ArgumentException($"An indicator named '{definition.Name}' is already in the catalogue; choose another name.", nameof(definition));
            }

            var byName = new Dictionary<string, IndicatorDefinition>(_byName) { [definition.Name] = definition };
            Volatile.Write(ref _byName, byName);
            Volatile.Write(ref _all, [.. _all, definition]);
        }

        if (definition.IsSnapshotValue) Telemetry.ProbeMetrics.EnsureInstrument(definition.Name);
    }

    /// <summary>Removes a registered (not built-in) indicator; sessions attached before keep computing it. For tests.</summary>
    internal static void Unregister(string name)
    {
        lock (Gate)
        {
            if (BuiltIn.Any(d => d.Name == name) || !_byName.ContainsKey(name)) return;
            var byName = new Dictionary<string, IndicatorDefinition>(_byName);
            byName.Remove(name);
            Volatile.Write(ref _byName, byName);
            Volatile.Write(ref _all, _all.Where(d => d.Name != name).ToArray());
        }
    }

    /// <summary>The first-order indicators (those with <see cref="IndicatorDefinition.FromGram"/>), in catalogue order.</summary>
    internal static IndicatorDefinition[] FirstOrder() => All.Where(d => d.FromGram is not null).ToArray();

    /// <summary>
    /// The definition a published name comes from: the name itself, or with a family prefix (<c>step.</c>,
    /// <c>fixed_point.</c>) and a suffix (<c>.smoothed</c>, <c>.stderr</c>, <c>.spread</c>) taken off.
    /// </summary>
    /// <param name="name">A published name.</param>
    /// <param name="definition">The definition when found.</param>
    public static bool TryFind(string name, out IndicatorDefinition definition)
    {
        ArgumentNullException.ThrowIfNull(name);
        return Volatile.Read(ref _byName).TryGetValue(Base(name), out definition!);
    }

    /// <summary>The name without its family prefix and its suffixes.</summary>
    private static string Base(string name)
    {
        foreach (var prefix in new[] { GradientStatisticsProbe.Prefix, FixedPointProbe.Prefix })
            if (name.StartsWith(prefix, StringComparison.Ordinal)) name = name[prefix.Length..];
        if (name.EndsWith(SpreadSuffix, StringComparison.Ordinal)) name = name[..^SpreadSuffix.Length];
        if (name.EndsWith(StandardErrorSuffix, StringComparison.Ordinal)) name = name[..^StandardErrorSuffix.Length];
        if (name.EndsWith(SmoothedSuffix, StringComparison.Ordinal)) name = name[..^SmoothedSuffix.Length];
        return name;
    }

    /// <summary>The UCUM unit of a published name's instrument (<c>1</c> for names not in the catalogue).</summary>
    internal static string UnitOf(string name) => TryFind(name, out var d) ? d.Unit : One;

    /// <summary>The instrument description of a published name.</summary>
    internal static string DescriptionOf(string name)
    {
        if (name.EndsWith(SpreadSuffix, StringComparison.Ordinal))
            return "Between-window spread (successive differences over the last ProbeOptions.SmoothingWindows windows; value +- 1.96 spread is the run-level interval) of: " + DescriptionOf(name[..^SpreadSuffix.Length]);
        if (name.EndsWith(SmoothedSuffix, StringComparison.Ordinal))
            return "Mean over the last windows (ProbeOptions.SmoothingWindows) of: " + DescriptionOf(name[..^SmoothedSuffix.Length]);
        if (name.EndsWith(StandardErrorSuffix, StringComparison.Ordinal))
            return "Standard error (jackknife over the window's K minibatches) of: " + DescriptionOf(name[..^StandardErrorSuffix.Length]);
        if (!TryFind(name, out var definition)) return $"Value '{name}' reported by a probe.";
        if (name.StartsWith(FixedPointProbe.Prefix, StringComparison.Ordinal))
            return definition.Description + " (fixed-point window: K minibatches at one theta)";
        if (name.StartsWith(GradientStatisticsProbe.Prefix, StringComparison.Ordinal))
            return definition.Description + " (the optimizer's step gradients, each at its own theta: a trajectory statistic)";
        return definition.Description;
    }
}

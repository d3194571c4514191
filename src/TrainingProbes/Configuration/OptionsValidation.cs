using TrainingProbes.Stopping;

namespace TrainingProbes.Configuration;

/// <summary>The checks of <see cref="ProbeOptions"/> that depend on several options at once, made when a session attaches.</summary>
internal static class OptionsValidation
{
    /// <summary>
    /// Checks the options that depend on each other. For options read from the environment, the message also names
    /// the variables behind the options it is about, with their values.
    /// </summary>
    public static void Validate(ProbeOptions o)
    {
        try
        {
            EachWithTheOthers(o);
        }
        catch (ArgumentException ex) when (o.EnvironmentValues is { } values)
        {
            var named = EnvironmentOptions.Variables.Where(v => v.Key == ex.ParamName || System.Text.RegularExpressions.Regex.IsMatch(ex.Message, $@"\b{v.Key}\b"))
                .Select(v => values.TryGetValue(v.Value, out var text) && text is { Length: > 0 } ? $"{v.Value}='{text}'" : $"{v.Value} (unset)")
                .Distinct().ToList();
            if (named.Count == 0) throw;
            throw new ArgumentException($"{ex.Message} These options came from the environment: {string.Join(", ", named)}; change the variables.", ex.ParamName, ex);
        }
    }

    private static void EachWithTheOthers(ProbeOptions o)
    {
        if (o.StepStatistics && o.Interval < o.WindowSize)
            throw new ArgumentException(
                $"Interval ({o.Interval}) must be at least WindowSize ({o.WindowSize}) with StepStatistics: a window of K consecutive steps opens every N steps. " +
                $"Raise Interval to {o.WindowSize} or more, or lower WindowSize.", nameof(ProbeOptions.Interval));
        if (o.Storage == WindowStorage.Sketch && o.Geometries.HasFlag(Geometry.Fisher))
            throw new ArgumentException(
                "The fisher geometry needs a per-coordinate average of squared gradients, which Storage = Sketch does not keep. " +
                "Leave Geometries unset (euclidean and adaptive) or drop Fisher, or use Storage = Full or BFloat16.", nameof(ProbeOptions.Geometries));
        if (o.Storage == WindowStorage.Sketch
            && o.Stopping.FirstOrDefault(r => r is not null && (r.Geometry == Geometry.Fisher || (IndicatorCatalogue.TryFind(r.Monitor, out var d) && d.PerCoordinate))) is { } unavailable)
            throw new ArgumentException(
                $"The stopping rule '{unavailable.Name}' monitors {unavailable.MonitorLabel}, which Storage = Sketch does not compute (GSNR and EB are " +
                "per-coordinate, and the fisher geometry needs a per-coordinate average); it would never fire. Monitor a Gram indicator such as " +
                "gradient.cosine or regret.relative in the euclidean or adaptive geometry, or use Storage = Full or BFloat16.", nameof(ProbeOptions.Stopping));
        if (o.Storage == WindowStorage.Sketch && o.LayerMetrics > 0)
            throw new ArgumentException(
                "Per-layer values are not available with Storage = Sketch (one sketch holds the whole model). Set LayerMetrics = 0, or use Storage = Full or BFloat16.",
                nameof(ProbeOptions.LayerMetrics));
        if (o.Probes.Any(p => p is null))
            throw new ArgumentException("Probes contains a null entry.", nameof(ProbeOptions.Probes));
        if (o.Stopping.Any(r => r is null))
            throw new ArgumentException("Stopping contains a null entry.", nameof(ProbeOptions.Stopping));
        if (o.Stopping.Select(r => MonitorCheck.Impossible(r, o)).FirstOrDefault(problem => problem is not null) is { } impossible)
            throw new ArgumentException(impossible, nameof(ProbeOptions.Stopping));
        var sameName = o.Stopping.GroupBy(r => r.Name).FirstOrDefault(g => g.Count() > 1);
        if (sameName is not null)
            throw new ArgumentException($"Two stopping rules are named '{sameName.Key}'; give each a distinct Name (their saved states are matched by name).", nameof(ProbeOptions.Stopping));
        var duplicate = o.Probes.GroupBy(p => p.Name).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
            throw new ArgumentException($"Two probes are named '{duplicate.Key}'; give each probe a distinct Name.", nameof(ProbeOptions.Probes));
    }
}

using TrainingProbes.Stopping;

namespace TrainingProbes.Configuration;

/// <summary>
/// The one-line form's binder: <see cref="ProbeOptions"/> from the <c>TRAININGPROBES_*</c> environment variables, each
/// parsed with an error that names the variable and what it should hold. Not Microsoft.Extensions.Configuration: the
/// values are not plain bindable scalars (rules in their text form, geometry lists, a budget that may be <c>none</c>,
/// an endpoint from another package), so a binder would still need every one of these parsers.
/// </summary>
internal static class EnvironmentOptions
{
    /// <summary>Options from the variables <paramref name="read"/> returns, remembering what it read for error messages.</summary>
    public static ProbeOptions FromEnvironment(Func<string, string?> read)
    {
        var seen = new Dictionary<string, string?>();
        var options = Read(name =>
        {
            string? value = read(name);
            seen[name] = value;
            return value;
        });
        foreach (var variable in Variables.Values) seen.TryAdd(variable, read(variable));
        options.EnvironmentValues = seen;
        return options;
    }

    /// <summary>The environment variable of each property <see cref="ProbeOptions.FromEnvironment()"/> sets, to name it in an error.</summary>
    public static readonly Dictionary<string, string> Variables = new()
    {
        [nameof(ProbeOptions.WindowSize)] = "TRAININGPROBES_WINDOW_SIZE", [nameof(ProbeOptions.Interval)] = "TRAININGPROBES_INTERVAL",
        [nameof(ProbeOptions.Geometries)] = "TRAININGPROBES_GEOMETRIES", [nameof(ProbeOptions.LayerMetrics)] = "TRAININGPROBES_LAYER_METRICS",
        [nameof(ProbeOptions.OverheadBudget)] = "TRAININGPROBES_OVERHEAD_BUDGET", [nameof(ProbeOptions.Storage)] = "TRAININGPROBES_STORAGE",
        [nameof(ProbeOptions.SketchDimension)] = "TRAININGPROBES_SKETCH_DIMENSION", [nameof(ProbeOptions.CheckpointPath)] = "TRAININGPROBES_CHECKPOINT",
        [nameof(ProbeOptions.RunId)] = "TRAININGPROBES_RUN_ID", [nameof(ProbeOptions.Worker)] = "TRAININGPROBES_WORKER",
        [nameof(ProbeOptions.Stopping)] = "TRAININGPROBES_STOP", [nameof(ProbeOptions.SessionResources)] = "TRAININGPROBES_PROMETHEUS",
        [nameof(ProbeOptions.BackgroundStatistics)] = "TRAININGPROBES_BACKGROUND",
    };


    private static ProbeOptions Read(Func<string, string?> read)
    {
        var defaults = new ProbeOptions();
        try
        {
            var storage = read("TRAININGPROBES_STORAGE")?.Trim() switch
            {
                null or "" => defaults.Storage,
                var text => Enum.TryParse<WindowStorage>(text, ignoreCase: true, out var parsed) && Enum.IsDefined(parsed) && !char.IsDigit(text[0])
                    ? parsed
                    : throw new ArgumentException($"TRAININGPROBES_STORAGE is '{text}'; use full, bfloat16 or sketch."),
            };
            return new ProbeOptions
            {
                WindowSize = Integer(read, "TRAININGPROBES_WINDOW_SIZE") ?? defaults.WindowSize,
                Interval = Integer(read, "TRAININGPROBES_INTERVAL") ?? defaults.Interval,
                Geometries = read("TRAININGPROBES_GEOMETRIES") is { Length: > 0 } names ? ParseGeometries(names) : ProbeOptions.DefaultGeometries(storage),
                RunId = read("TRAININGPROBES_RUN_ID") is { Length: > 0 } id ? id : null,
                Worker = read("TRAININGPROBES_WORKER") is { Length: > 0 } worker ? worker : null,
                OverheadBudget = read("TRAININGPROBES_OVERHEAD_BUDGET")?.Trim() switch
                {
                    null or "" => defaults.OverheadBudget,
                    "none" => null,
                    var text => double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double budget)
                        ? budget
                        : throw new ArgumentException($"TRAININGPROBES_OVERHEAD_BUDGET is '{text}'; use a fraction such as 0.05, or none for a fixed interval."),
                },
                LayerMetrics = Integer(read, "TRAININGPROBES_LAYER_METRICS") ?? defaults.LayerMetrics,
                Storage = storage,
                SketchDimension = Integer(read, "TRAININGPROBES_SKETCH_DIMENSION") ?? defaults.SketchDimension,
                BackgroundStatistics = read("TRAININGPROBES_BACKGROUND")?.Trim().ToLowerInvariant() switch
                {
                    null or "" => defaults.BackgroundStatistics,
                    "true" or "1" => true,
                    "false" or "0" => false,
                    var other => throw new ArgumentException($"TRAININGPROBES_BACKGROUND is '{other}'; use true or false."),
                },
                SessionResources = read("TRAININGPROBES_PROMETHEUS") is { Length: > 0 } endpoint ? [PrometheusEndpoint(endpoint)] : [],
                Stopping = read("TRAININGPROBES_STOP")?.Trim() switch
                {
                    null or "" => defaults.Stopping,
                    "none" => [],
                    var rules => ParseRules(rules),
                },
                CheckpointPath = read("TRAININGPROBES_CHECKPOINT") is { Length: > 0 } checkpoint ? checkpoint : null,
                Strict = read("TRAININGPROBES_STRICT")?.Trim().ToLowerInvariant() switch
                {
                    null or "" => defaults.Strict,
                    "true" or "1" => true,
                    "false" or "0" => false,
                    var other => throw new ArgumentException($"TRAININGPROBES_STRICT is '{other}'; use true or false."),
                },
                Output = read("TRAININGPROBES_OUTPUT")?.Trim().ToLowerInvariant() switch
                {
                    null or "" or "console" => Console.Out,
                    "none" => null,
                    var other => throw new ArgumentException($"TRAININGPROBES_OUTPUT is '{other}'; use 'console' or 'none'."),
                },
            };
        }
        catch (ArgumentException ex) when (!ex.Message.StartsWith("TRAININGPROBES_", StringComparison.Ordinal))
        {
            // A property refused its value: name the variable it came from.
            string? variable = ex.ParamName is { } property && Variables.TryGetValue(property, out var name) ? name : null;
            throw new ArgumentException(variable is null
                ? $"An environment variable TRAININGPROBES_* holds an unusable value: {ex.Message}"
                : $"{variable} is '{read(variable)}': {ex.Message}", ex);
        }

        static int? Integer(Func<string, string?> read, string variable) =>
            read(variable) is not { Length: > 0 } text ? null
            : int.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int value) ? value
            : throw new ArgumentException($"{variable} is '{text}'; it must be an integer.");

        // The endpoint lives in the TrainingProbes.Prometheus package (ASP.NET Core stays out of the core library),
        // which registers its factory with EnvironmentResources when it loads. Each session holds the process-wide
        // server while it lives.
        static Func<ProbeSession, IDisposable> PrometheusEndpoint(string value)
        {
            try
            {
                return EnvironmentResources.Create("TRAININGPROBES_PROMETHEUS", value, "TrainingProbes.Prometheus")
                    ?? throw new ArgumentException(
                        $"TRAININGPROBES_PROMETHEUS is '{value}', but the application does not reference the TrainingProbes.Prometheus package that serves it. Add the package, or unset the variable.");
            }
            catch (ArgumentException ex) when (!ex.Message.StartsWith("TRAININGPROBES_", StringComparison.Ordinal))
            {
                throw new ArgumentException($"TRAININGPROBES_PROMETHEUS: {ex.Message}", ex);
            }
        }

        static StoppingRule[] ParseRules(string text)
        {
            try
            {
                return text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(StoppingRule.Parse).ToArray();
            }
            catch (RuleParseException ex)
            {
                throw new ArgumentException($"TRAININGPROBES_STOP: {ex.Message}", ex);
            }
        }

        static Geometry ParseGeometries(string text)
        {
            var result = Geometry.None;
            foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                result |= !char.IsDigit(part[0]) && part[0] != '-' && Enum.TryParse<Geometry>(part, ignoreCase: true, out var g) && g != Geometry.None
                    ? g
                    : throw new ArgumentException($"TRAININGPROBES_GEOMETRIES has '{part}'; use euclidean, fisher, adaptive or all, separated by commas.");
            return result;
        }
    }

}

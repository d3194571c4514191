using System.Text.Json;
using System.Text.Json.Serialization;

namespace TrainingProbes.Stopping;

/// <summary>
/// What a <see cref="StoppingRule"/> needs to resume after a checkpoint: its counters and best value, not its
/// settings (those come from the rule it is restored into). Save it with <see cref="StoppingRule.SaveState"/>,
/// write it with <see cref="StoppingState.ToJson"/>, and restore it with <see cref="StoppingRule.RestoreState"/>.
/// </summary>
public sealed record RuleState
{
    /// <summary>The kind of rule that saved the state: <c>early_stopping</c> or <c>threshold</c>.</summary>
    public required string Kind { get; init; }

    /// <summary>The <see cref="StoppingRule.Name"/> of the rule that saved the state (informative; not checked).</summary>
    public string Name { get; init; } = "";

    /// <summary>The monitored name.</summary>
    public required string Monitor { get; init; }

    /// <summary>The geometry of the monitored value.</summary>
    public Geometry Geometry { get; init; }

    /// <summary>
    /// The best value so far (<see cref="EarlyStopping.BestValue"/>, or the best value that satisfied a
    /// <see cref="ThresholdRule"/>), or null when none.
    /// </summary>
    public double? BestValue { get; init; }

    /// <summary>The step of <see cref="BestValue"/>, or null when none.</summary>
    public long? BestStep { get; init; }

    /// <summary>Evaluations since the last improvement (<see cref="EarlyStopping.Wait"/>; 0 for a threshold rule).</summary>
    public int Wait { get; init; }

    /// <summary>Consecutive evaluations the condition has held (<see cref="ThresholdRule.Consecutive"/>; 0 for early stopping).</summary>
    public int Consecutive { get; init; }

    /// <summary>The step of the first of the <see cref="Consecutive"/> evaluations, or null when none.</summary>
    public long? ConsecutiveSince { get; init; }

    /// <summary>Evaluations the rule has counted.</summary>
    public long Evaluations { get; init; }

    /// <summary>The step of the last counted evaluation, or null before the first.</summary>
    public long? LastStep { get; init; }

    /// <summary>Whether the rule (a stop rule) has fired and is latched.</summary>
    public bool Stopped { get; init; }

    /// <summary>The step the stop rule fired at, or null.</summary>
    public long? StoppedStep { get; init; }

    /// <summary>The reason the stop rule fired for, or null.</summary>
    public string? StopReason { get; init; }
}

/// <summary>Writes and reads the states of several rules as JSON (System.Text.Json), for a checkpoint.</summary>
public static class StoppingState
{
    private static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        WriteIndented = true,
    };

    /// <summary>Writes the states as a JSON array.</summary>
    /// <param name="states">The states, for example <c>rules.Select(r =&gt; r.SaveState()).ToList()</c>.</param>
    /// <returns>The JSON text.</returns>
    /// <exception cref="ArgumentException">A state is null.</exception>
    public static string ToJson(IReadOnlyList<RuleState> states)
    {
        ArgumentNullException.ThrowIfNull(states);
        if (states.Any(s => s is null))
            throw new ArgumentException("The list of states has a null entry; save a state for each rule.", nameof(states));
        return JsonSerializer.Serialize(states, Options);
    }

    /// <summary>Reads states written by <see cref="ToJson"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>The states, in the order they were written.</returns>
    /// <exception cref="FormatException">The text is not a JSON array of rule states.</exception>
    public static IReadOnlyList<RuleState> FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        List<RuleState?>? states;
        try
        {
            states = JsonSerializer.Deserialize<List<RuleState?>>(json, Options);
        }
        catch (JsonException ex)
        {
            throw new FormatException($"The text is not a JSON array of rule states as StoppingState.ToJson writes them: {ex.Message}", ex);
        }
        if (states is null || states.Any(s => s is null))
            throw new FormatException("The JSON holds a null where a rule state was expected; write states with StoppingState.ToJson.");
        return states!;
    }
}

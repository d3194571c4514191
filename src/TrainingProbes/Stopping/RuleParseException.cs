namespace TrainingProbes.Stopping;

/// <summary>
/// A rule written as text (<see cref="StoppingRule.Parse"/>) could not be read. The message names the column, what was
/// expected there and what was found, and shows the rule with a caret under the column:
/// <code>
/// Rule 'regret.relative &gt; for 5': at column 18, expected a number, found 'for'.
///   regret.relative &gt; for 5
///                     ^
/// </code>
/// </summary>
public sealed class RuleParseException : FormatException
{
    /// <summary>Creates the exception for a rule, a column, what was expected and what was found there.</summary>
    /// <param name="rule">The rule's text.</param>
    /// <param name="position">The 0-based column (character offset) of the offending token.</param>
    /// <param name="expected">What was expected there, for example <c>a number</c>.</param>
    /// <param name="found">What was found: the token's text, or null for the end of the rule.</param>
    public RuleParseException(string rule, int position, string expected, string? found)
        : base(Format(rule, position, expected, found))
    {
        Rule = rule;
        Position = position;
        Expected = expected;
        Found = found;
    }

    /// <summary>The rule's text.</summary>
    public string Rule { get; }

    /// <summary>The 0-based column (character offset in <see cref="Rule"/>) of the offending token; the rule's length at its end.</summary>
    public int Position { get; }

    /// <summary>What was expected at <see cref="Position"/>, for example <c>a number</c> or <c>an action: stop, warn or checkpoint</c>.</summary>
    public string Expected { get; }

    /// <summary>The text found at <see cref="Position"/>, or null at the end of the rule.</summary>
    public string? Found { get; }

    private static string Format(string rule, int position, string expected, string? found)
    {
        string echo = rule.Replace('\t', ' ').Replace('\r', ' ').Replace('\n', ' ');
        return $"Rule '{rule}': at column {position}, expected {expected}, found {(found is null ? "the end of the rule" : $"'{found}'")}."
            + Environment.NewLine + "  " + echo
            + Environment.NewLine + "  " + new string(' ', position) + "^";
    }
}

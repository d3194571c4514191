using System.Globalization;
using System.Text.RegularExpressions;

namespace TrainingProbes.Stopping;

/// <summary>
/// Reads the text form of a rule (see <see cref="StoppingRule.Parse"/>): a tokenizer and a recursive-descent parser.
/// <code>
/// rule      = early | threshold | rise
/// threshold = metric ( comparator number | "is" ["not"] "finite" ) ["for" integer] ["->" action] end
/// rise      = metric "rises" number "%" "above" "its" "minimum" ["after" integer] ["for" integer] ["->" action] end
/// early     = "early_stopping" "(" param { "," param } ")" ["->" action] end
/// param     = name "=" value
/// metric    = snake_name ["[" geometry "]"]
/// </code>
/// </summary>
internal sealed partial class RuleParser
{
    private enum TokenKind { Identifier, Number, Symbol, Invalid, End }

    private readonly record struct Token(TokenKind Kind, string Text, int Position)
    {
        public bool Is(string symbol) => Kind == TokenKind.Symbol && Text == symbol;

        public bool IsWord(string word) => Kind == TokenKind.Identifier && string.Equals(Text, word, StringComparison.OrdinalIgnoreCase);
    }

    private const string Geometries = "a geometry: euclidean, fisher or adaptive";
    private const string Actions = "an action: stop, warn or checkpoint";

    private static readonly string[] ParameterNames =
    [
        "monitor", "mode", "patience", "min_delta", "baseline", "stopping_threshold", "divergence_threshold",
        "check_finite", "warmup_steps", "restore_best_weights",
    ];

    private readonly string _text;
    private readonly List<Token> _tokens;
    private int _next;

    public RuleParser(string text)
    {
        _text = text;
        _tokens = Tokenize(text);
    }

    public StoppingRule ParseRule()
    {
        var first = Peek();
        if (first.Kind == TokenKind.End)
            throw Error(first, "a metric name or early_stopping(...)");
        return first.IsWord("early_stopping") && _tokens[_next + 1].Is("(") ? ParseEarlyStopping() : ParseThreshold();
    }

    private StoppingRule ParseThreshold()
    {
        var (monitor, geometry) = ParseMetric();
        if (Peek().IsWord("rises"))
            return ParseRise(monitor, geometry);
        var token = Next();
        ThresholdComparison comparison;
        double threshold = 0;
        if (token.Kind == TokenKind.Symbol && token.Text is ">" or ">=" or "<" or "<=")
        {
            comparison = token.Text switch
            {
                ">" => ThresholdComparison.GreaterThan,
                ">=" => ThresholdComparison.GreaterThanOrEqual,
                "<" => ThresholdComparison.LessThan,
                _ => ThresholdComparison.LessThanOrEqual,
            };
            threshold = ParseNumber(Next(), "a number");
        }
        else if (token.IsWord("is"))
        {
            token = Next();
            bool not = token.IsWord("not");
            if (not)
                token = Next();
            if (!token.IsWord("finite"))
                throw Error(token, not ? "'finite'" : "'not' or 'finite'");
            comparison = not ? ThresholdComparison.IsNotFinite : ThresholdComparison.IsFinite;
        }
        else
        {
            throw Error(token, "a comparison (>, >=, <, <=) or 'is'");
        }

        int count = 1;
        bool hasFor = false;
        if (Peek().IsWord("for"))
        {
            Next();
            hasFor = true;
            token = Next();
            count = ParseInteger(token) is long n and >= 1 and <= int.MaxValue
                ? (int)n
                : throw Error(token, "a positive integer after 'for'");
        }
        var action = ParseActionAndEnd(hasFor ? "'->' or the end of the rule" : "'for', '->' or the end of the rule");
        return new ThresholdRule
        {
            Monitor = monitor,
            Geometry = geometry,
            Comparison = comparison,
            Threshold = threshold,
            For = count,
            Action = action,
        };
    }

    private RiseRule ParseRise(string monitor, Geometry geometry)
    {
        Next(); // rises
        var token = Next();
        double percent = ParseNumber(token, "a percentage, for example 25");
        if (!(percent > 0))
            throw Error(token, "a percentage above 0");
        foreach (var word in new[] { "%", "above", "its", "minimum" })
        {
            token = Next();
            if (!(word == "%" ? token.Is("%") : token.IsWord(word)))
                throw Error(token, $"'{word}' (the form is: <metric> rises 25% above its minimum [after <step>] [for <n>])");
        }

        long after = 0;
        if (Peek().IsWord("after"))
        {
            Next();
            token = Next();
            after = ParseInteger(token) is long a ? a : throw Error(token, "a step (an integer, 0 or more) after 'after'");
        }

        int count = 1;
        if (Peek().IsWord("for"))
        {
            Next();
            token = Next();
            count = ParseInteger(token) is long n and >= 1 and <= int.MaxValue ? (int)n : throw Error(token, "a positive integer after 'for'");
        }

        var action = ParseActionAndEnd("'after', 'for', '->' or the end of the rule");
        return new RiseRule { Monitor = monitor, Geometry = geometry, Rise = percent / 100, After = after, For = count, Action = action };
    }

    private EarlyStopping ParseEarlyStopping()
    {
        Next(); // early_stopping
        Next(); // (
        var given = new HashSet<string>(StringComparer.Ordinal);
        string? monitor = null;
        Token monitorToken = default;
        var geometry = Geometry.None;
        StoppingMode mode = StoppingMode.Auto;
        int patience = EarlyStopping.DefaultPatience;
        double minDelta = 0;
        double? baseline = null, stopping = null, divergence = null;
        bool checkFinite = true, restore = false;
        long warmup = 0;
        Token separator;
        string parameterList = "a parameter name (" + string.Join(", ", ParameterNames) + ")";
        while (true)
        {
            var name = Next();
            string key = name.Text.ToLowerInvariant();
            if (name.Kind != TokenKind.Identifier || !ParameterNames.Contains(key))
                throw Error(name, parameterList);
            if (!given.Add(key))
                throw Error(name, $"a parameter not given before ('{key}' is given twice)");
            var equals = Next();
            if (!equals.Is("="))
                throw Error(equals, $"'=' after {key}");
            switch (key)
            {
                case "monitor":
                    monitorToken = Peek();
                    (monitor, geometry) = ParseMetric();
                    break;
                case "mode":
                    var value = Next();
                    mode = value.IsWord("auto") ? StoppingMode.Auto
                        : value.IsWord("min") ? StoppingMode.Min
                        : value.IsWord("max") ? StoppingMode.Max
                        : throw Error(value, "a mode: auto, min or max");
                    break;
                case "patience":
                    value = Next();
                    patience = ParseInteger(value) is long p and <= int.MaxValue
                        ? (int)p
                        : throw Error(value, "a non-negative integer for patience");
                    break;
                case "min_delta":
                    value = Next();
                    minDelta = ParseNumber(value, "a number >= 0 for min_delta");
                    if (minDelta < 0)
                        throw Error(value, "a number >= 0 for min_delta");
                    break;
                case "baseline":
                    baseline = ParseOptionalNumber(Next(), "a number or none for baseline");
                    break;
                case "stopping_threshold":
                    stopping = ParseOptionalNumber(Next(), "a number or none for stopping_threshold");
                    break;
                case "divergence_threshold":
                    divergence = ParseOptionalNumber(Next(), "a number or none for divergence_threshold");
                    break;
                case "check_finite":
                    checkFinite = ParseBoolean(Next(), "true or false for check_finite");
                    break;
                case "restore_best_weights":
                    restore = ParseBoolean(Next(), "true or false for restore_best_weights");
                    break;
                default: // warmup_steps
                    value = Next();
                    warmup = ParseInteger(value)
                        ?? throw Error(value, "a non-negative integer for warmup_steps");
                    break;
            }
            separator = Next();
            if (separator.Is(")"))
                break;
            if (!separator.Is(","))
                throw Error(separator, "',' or ')'");
        }
        if (monitor is null)
            throw Error(separator, "monitor=<name>, which early_stopping requires");

        if (mode == StoppingMode.Auto && !EarlyStopping.TryInferMode(monitor, out _))
            throw Error(monitorToken, $"a name of known direction, or mode=min or mode=max (the direction of '{monitor}' is not known)");
        var action = ParseActionAndEnd("'->' or the end of the rule");
        return new EarlyStopping
        {
            Mode = mode,
            Monitor = monitor,
            Geometry = geometry,
            Patience = patience,
            MinDelta = minDelta,
            Baseline = baseline,
            StoppingThreshold = stopping,
            DivergenceThreshold = divergence,
            CheckFinite = checkFinite,
            WarmupSteps = warmup,
            RestoreBestWeights = restore,
            Action = action,
        };
    }

    private (string Monitor, Geometry Geometry) ParseMetric()
    {
        var name = Next();
        if (name.Kind != TokenKind.Identifier || !StoppingRule.IsSnakeCase(name.Text))
            throw Error(name, "a metric name in dotted snake_case (for example val.loss)");
        if (!Peek().Is("["))
            return (name.Text, Geometry.None);
        Next();
        var token = Next();
        var geometry = token.IsWord("euclidean") ? Geometry.Euclidean
            : token.IsWord("fisher") ? Geometry.Fisher
            : token.IsWord("adaptive") ? Geometry.Adaptive
            : throw Error(token, Geometries);
        var close = Next();
        if (!close.Is("]"))
            throw Error(close, "']'");
        return (name.Text, geometry);
    }

    private RuleAction ParseActionAndEnd(string expectedBeforeAction)
    {
        var token = Next();
        var action = RuleAction.Stop;
        if (token.Is("->"))
        {
            token = Next();
            action = token.IsWord("stop") ? RuleAction.Stop
                : token.IsWord("warn") ? RuleAction.Warn
                : token.IsWord("checkpoint") ? RuleAction.Checkpoint
                : throw Error(token, Actions);
            token = Next();
            if (token.Kind != TokenKind.End)
                throw Error(token, "the end of the rule");
        }
        else if (token.Kind != TokenKind.End)
        {
            throw Error(token, expectedBeforeAction);
        }
        return action;
    }

    private double ParseNumber(Token token, string expected)
    {
        if (token.Kind != TokenKind.Number || !DoubleLiteral().IsMatch(token.Text))
            throw Error(token, expected);
        string digits = token.Text.Replace("_", "", StringComparison.Ordinal).TrimEnd('d', 'D');
        double value = double.Parse(digits, NumberStyles.Float, CultureInfo.InvariantCulture);
        return double.IsFinite(value) ? value : throw Error(token, expected + " (within the range of a double)");
    }

    private double? ParseOptionalNumber(Token token, string expected) =>
        token.IsWord("none") ? null : ParseNumber(token, expected);

    /// <summary>A non-negative integer literal (digit separators allowed), or null when the token is not one.</summary>
    private static long? ParseInteger(Token token)
    {
        if (token.Kind != TokenKind.Number || !IntegerLiteral().IsMatch(token.Text))
            return null;
        return long.TryParse(token.Text.Replace("_", "", StringComparison.Ordinal), NumberStyles.None, CultureInfo.InvariantCulture, out long value)
            ? value
            : null;
    }

    private bool ParseBoolean(Token token, string expected) =>
        token.IsWord("true") ? true
        : token.IsWord("false") ? false
        : throw Error(token, expected);

    private Token Peek() => _tokens[_next];

    private Token Next()
    {
        var token = _tokens[_next];
        if (token.Kind != TokenKind.End)
            _next++;
        return token;
    }

    private RuleParseException Error(Token token, string expected) =>
        new(_text, token.Position, expected, token.Kind == TokenKind.End ? null : token.Text);

    private static List<Token> Tokenize(string text)
    {
        var tokens = new List<Token>();
        int pos = 0;
        while (pos < text.Length)
        {
            char c = text[pos];
            if (char.IsWhiteSpace(c))
            {
                pos++;
                continue;
            }
            int start = pos;
            if (char.IsAsciiLetter(c) || c == '_')
            {
                pos = ScanWord(text, pos);
                while (pos + 1 < text.Length && text[pos] == '.' && IsWordChar(text[pos + 1]))
                    pos = ScanWord(text, pos + 1);
                tokens.Add(new Token(TokenKind.Identifier, text[start..pos], start));
            }
            else if (char.IsAsciiDigit(c) || (c == '.' && At(text, pos + 1, char.IsAsciiDigit))
                || (c is '-' or '+' && (At(text, pos + 1, char.IsAsciiDigit) || (At(text, pos + 1, ch => ch == '.') && At(text, pos + 2, char.IsAsciiDigit)))))
            {
                pos++;
                while (pos < text.Length && (IsWordChar(text[pos]) || text[pos] == '.'
                    || (text[pos] is '+' or '-' && text[pos - 1] is 'e' or 'E')))
                    pos++;
                tokens.Add(new Token(TokenKind.Number, text[start..pos], start));
            }
            else if (pos + 1 < text.Length && text.AsSpan(pos, 2) is "->" or ">=" or "<=")
            {
                pos += 2;
                tokens.Add(new Token(TokenKind.Symbol, text[start..pos], start));
            }
            else if (c is '>' or '<' or '(' or ')' or '[' or ']' or ',' or '=' or '%')
            {
                pos++;
                tokens.Add(new Token(TokenKind.Symbol, c.ToString(), start));
            }
            else
            {
                pos++;
                tokens.Add(new Token(TokenKind.Invalid, c.ToString(), start));
            }
        }
        tokens.Add(new Token(TokenKind.End, "", text.Length));
        tokens.Add(new Token(TokenKind.End, "", text.Length));
        return tokens;

        static bool IsWordChar(char ch) => char.IsAsciiLetterOrDigit(ch) || ch == '_';

        static int ScanWord(string s, int i)
        {
            while (i < s.Length && IsWordChar(s[i]))
                i++;
            return i;
        }

        static bool At(string s, int i, Func<char, bool> test) => i < s.Length && test(s[i]);
    }

    /// <summary>A C# double literal with an optional sign: digit separators, fraction, exponent, <c>d</c> suffix.</summary>
    [GeneratedRegex(@"^[+-]?(?:[0-9](?:_*[0-9])*(?:\.[0-9](?:_*[0-9])*)?|\.[0-9](?:_*[0-9])*)(?:[eE][+-]?[0-9](?:_*[0-9])*)?[dD]?$", RegexOptions.CultureInvariant)]
    private static partial Regex DoubleLiteral();

    [GeneratedRegex(@"^[0-9](?:_*[0-9])*$", RegexOptions.CultureInvariant)]
    private static partial Regex IntegerLiteral();
}

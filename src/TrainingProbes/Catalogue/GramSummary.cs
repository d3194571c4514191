using TrainingProbes.Statistics;

namespace TrainingProbes;

/// <summary>
/// What a first-order indicator is computed from: the K x K Gram matrix <c>G_ij = &lt;g_i, g_j&gt;</c> of a window's
/// minibatch gradients in one geometry, in double precision on the host. An <see cref="IndicatorDefinition.FromGram"/>
/// function reads it; for the jackknife it is also handed the (K-1) x (K-1) matrices that leave one minibatch out.
/// The session reuses the object: do not keep it.
/// </summary>
public sealed class GramSummary
{
    private readonly double[] _gram;
    private readonly double[] _scratch;
    private FirstOrderStatistics? _statistics;

    internal GramSummary(int capacity, double regretQuantile)
    {
        _gram = new double[capacity * capacity];
        _scratch = new double[capacity * Math.Max(capacity - 1, 1)];
        RegretQuantile = regretQuantile;
    }

    /// <summary>K, the number of gradients.</summary>
    public int K { get; private set; }

    /// <summary><c>&lt;g_i, g_j&gt;</c>.</summary>
    /// <param name="i">Row, 0 to K-1.</param>
    /// <param name="j">Column, 0 to K-1.</param>
    public double this[int i, int j] => _gram[i * K + j];

    /// <summary>
    /// s, the trainer's minibatch over one of the window's gradients, in examples: K when the window's gradients are the K
    /// micro-batches of one minibatch (the family then describes gradients of the trainer's batch size), 1 when each is a
    /// minibatch of its own.
    /// </summary>
    public double Scale => _scale ?? 1;

    private double? _scale;

    /// <summary>
    /// n, the examples behind each of the K gradients (the micro-batch size), which the per-example indicators scale by;
    /// NaN when the window's source does not know it.
    /// </summary>
    public double ExamplesPerGradient { get; private set; } = double.NaN;

    /// <summary>The quantile of the pairwise regret that <c>regret.upper</c> reports (<see cref="ProbeOptions.RegretQuantile"/>).</summary>
    public double RegretQuantile { get; }

    /// <summary>The built-in family, computed once per matrix.</summary>
    internal FirstOrderStatistics Statistics => _statistics ??= FirstOrderStatistics.FromGram(_gram.AsSpan(0, K * K), K, _scale, RegretQuantile, _scratch, ExamplesPerGradient);

    /// <summary>
    /// Loads a row-major K x K matrix: of micro-batch gradients that each carry 1/<paramref name="scale"/> of the trainer's
    /// batch, or (null) of minibatch gradients, each over <paramref name="examples"/> examples (NaN: unknown).
    /// </summary>
    internal void Load(ReadOnlySpan<double> gram, int k, double? scale, double examples)
    {
        K = k;
        _scale = scale;
        ExamplesPerGradient = examples;
        gram[..(k * k)].CopyTo(_gram);
        _statistics = null;
    }

    /// <summary>Loads the K x K <paramref name="gram"/> with row and column <paramref name="leftOut"/> removed, at <paramref name="scale"/>.</summary>
    internal void LoadLeavingOut(ReadOnlySpan<double> gram, int k, int leftOut, double? scale, double examples)
    {
        _scale = scale;
        ExamplesPerGradient = examples;
        int m = k - 1;
        for (int a = 0, r = 0; a < k; a++)
        {
            if (a == leftOut) continue;
            for (int b = 0, c = 0; b < k; b++)
                if (b != leftOut) _gram[r * m + c++] = gram[a * k + b];
            r++;
        }

        K = m;
        _statistics = null;
    }
}

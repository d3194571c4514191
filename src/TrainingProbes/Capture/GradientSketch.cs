using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// CountSketch of parameter-shaped vectors into d numbers per segment, on the segment's device (Charikar, Chen and
/// Farach-Colton 2002; as feature hashing, Weinberger et al. 2009). Coordinate x_i goes to bucket h(i) with sign s(i):
/// <c>(S x)_b = sum_{i: h(i) = b} s(i) x_i</c>. S is linear, and for pairwise independent signs
/// <c>E[&lt;S a, S b&gt;] = &lt;a, b&gt;</c>: every Gram matrix, hence every first-order indicator, is estimated from K
/// sketches of d numbers instead of K copies of the parameters.
/// <para>
/// The hash is computed from the index, not stored per coordinate. Coordinate j of chunk c (chunks of
/// <see cref="TableLength"/> coordinates) of watched parameter q has <c>h = (H[j] + r(q, c)) mod d</c> and
/// <c>s = S[j] sigma(q, c)</c>: H and S are one random table of <see cref="TableLength"/> buckets and signs per device,
/// and the shift r and sign sigma of each chunk come from a SplitMix64 hash of (q, c). Distinct coordinates then have
/// independent sign products (unbiased), collide with probability 1/d, and coordinates at the same offset of two
/// chunks (which a layer's periodic structure could align) collide only when their chunk shifts agree.
/// </para>
/// <para>
/// Variance, for a fully random hash (the chunked one adds at most a term of the same order): for unit vectors with
/// <c>&lt;a, b&gt; = rho</c>, <c>Var &lt;S a, S b&gt; = (1 + rho^2 - 2 sum_i a_i^2 b_i^2) / d &lt;= (1 + rho^2) / d</c>, and a
/// cosine estimated from sketches has a standard deviation of about <c>(1 - rho^2) / sqrt(d)</c>. The default
/// d = 2^16 gives at most 1/256 = 0.004, so an error of 0.02 is five standard deviations.
/// </para>
/// <para>
/// What the chunked hash adds to a fully random one: two offsets that collide in one chunk collide in every chunk (the
/// table repeats); two chunks that draw the same shift (about n^2 / 2d pairs among n chunks: none below about 3e7
/// coordinates, about 100 at 1e9) collide offset by offset, with one sign for the pair; and the seed is fixed, so the
/// same gradients give the same error in every window and every run.
/// </para>
/// Each sketch is float32 (whatever the parameters' dtype), accumulated in a [2d] scratch per geometry and folded
/// (buckets b and b + d add) into its row.
/// </summary>
internal sealed class GradientSketch : IDisposable
{
    /// <summary>Coordinates per chunk, the length of the random bucket and sign tables (12 bytes each).</summary>
    public const int TableLength = 1 << 18;

    private const ulong Seed = 0x7261_696E_5072_6F62;   // fixed: sketches of the same vector agree across windows and sessions

    private readonly GradientWindow _window;
    private readonly Geometry[] _geometries;
    private readonly int _euclidean;       // index in _geometries, or -1
    private readonly int _adaptive;        // index in _geometries, or -1
    private readonly Scalar _eta;
    private readonly Scalar _plus = 1.0.ToScalar();    // the chunk signs, as index_add_'s alpha
    private readonly Scalar _minus = (-1.0).ToScalar();
    private readonly List<Tensor> _owned = [];
    private readonly Tensor[] _buckets;    // per segment: int64 [C] in [0, d)
    private readonly Tensor[] _signs;      // per segment: float32 [C], +-1
    private readonly Tensor[] _chunk;      // per segment: float32 [C] work space
    private readonly Tensor[] _scale;      // per segment: float32 [C] work space for D (adaptive)
    private readonly Tensor[][] _scratch;  // per geometry, per segment: float32 [2d]
    private readonly Tensor[][] _low;      // views of the scratch: [0, d)
    private readonly Tensor[][] _high;     // and [d, 2d)

    /// <param name="window">The watched parameters and their segments.</param>
    /// <param name="dimension">d, buckets per sketch.</param>
    /// <param name="geometries">The geometries sketched: euclidean (g) and adaptive (D g, D = |theta| + eta).</param>
    /// <param name="eta">Adaptive eta.</param>
    public GradientSketch(GradientWindow window, int dimension, IReadOnlyList<Geometry> geometries, double eta)
    {
        if (geometries.Any(g => g is not (Geometry.Euclidean or Geometry.Adaptive)))
            throw new ArgumentException("Sketches are taken in the euclidean and adaptive geometries only.", nameof(geometries));
        _window = window;
        _geometries = [.. geometries];
        _euclidean = Array.IndexOf(_geometries, Geometry.Euclidean);
        _adaptive = Array.IndexOf(_geometries, Geometry.Adaptive);
        Dimension = dimension;
        _eta = eta.ToScalar();
        int segments = window.Segments.Count;
        _buckets = new Tensor[segments];
        _signs = new Tensor[segments];
        _chunk = new Tensor[segments];
        _scale = new Tensor[segments];
        Windows = new Tensor[_geometries.Length][];
        _scratch = new Tensor[_geometries.Length][];
        _low = new Tensor[_geometries.Length][];
        _high = new Tensor[_geometries.Length][];

        using var scope = torch.NewDisposeScope();
        var rng = new Random(unchecked((int)Seed));
        var bucketTable = new long[TableLength];
        var signTable = new float[TableLength];
        for (int j = 0; j < TableLength; j++)
        {
            bucketTable[j] = rng.NextInt64(dimension);
            signTable[j] = rng.Next(2) == 0 ? -1f : 1f;
        }

        for (int s = 0; s < segments; s++)
        {
            var device = window.Segments[s].Device;
            _buckets[s] = Own(torch.tensor(bucketTable, device: device));
            _signs[s] = Own(torch.tensor(signTable, device: device));
            _chunk[s] = Own(torch.empty(TableLength, ScalarType.Float32, device));
            _scale[s] = Own(torch.empty(TableLength, ScalarType.Float32, device));
        }

        for (int g = 0; g < _geometries.Length; g++)
        {
            Windows[g] = new Tensor[segments];
            _scratch[g] = new Tensor[segments];
            _low[g] = new Tensor[segments];
            _high[g] = new Tensor[segments];
            for (int s = 0; s < segments; s++)
            {
                var device = window.Segments[s].Device;
                Windows[g][s] = Own(torch.zeros([window.K, dimension], ScalarType.Float32, device));
                _scratch[g][s] = Own(torch.zeros(2L * dimension, ScalarType.Float32, device));
                _low[g][s] = Own(_scratch[g][s].narrow(0, 0, dimension));
                _high[g][s] = Own(_scratch[g][s].narrow(0, dimension, dimension));
            }
        }
    }

    /// <summary>d, buckets per sketch.</summary>
    public int Dimension { get; }

    /// <summary>Per geometry, per segment: the [K, d] float32 sketches of the window's K gradients.</summary>
    public Tensor[][] Windows { get; }

    /// <summary>The index of <paramref name="geometry"/> in <see cref="Windows"/>, or -1.</summary>
    public int IndexOf(Geometry geometry) => Array.IndexOf(_geometries, geometry);

    /// <summary>
    /// Sketches one gradient per watched parameter (null: a zero gradient) into row <paramref name="slot"/> of every
    /// geometry's window. The adaptive geometry scales by the parameters' current values. Call inside a dispose scope and
    /// with gradients disabled.
    /// </summary>
    public void Store(int slot, Func<int, Tensor?> gradientOf)
    {
        for (int g = 0; g < _geometries.Length; g++)
            foreach (var scratch in _scratch[g]) scratch.zero_();

        var parameters = _window.Parameters;
        for (int q = 0; q < parameters.Count; q++)
        {
            var gradient = gradientOf(q);
            if (gradient is null || gradient.IsInvalid) continue;
            var p = parameters[q];
            Add(p.Segment, q, gradient.reshape(-1),
                _euclidean < 0 ? null : _scratch[_euclidean][p.Segment],
                _adaptive < 0 ? null : _scratch[_adaptive][p.Segment], _adaptive < 0 ? null : p.Parameter.detach().reshape(-1));
        }

        for (int g = 0; g < _geometries.Length; g++)
            for (int s = 0; s < _window.Segments.Count; s++)
                Fold(g, s, Windows[g][s][slot]);
    }

    /// <summary>
    /// Sketches the watched parameters' current values (euclidean) into <paramref name="targets"/>, one float32 [d]
    /// tensor per segment. Call inside a dispose scope and with gradients disabled.
    /// </summary>
    public void SketchParameters(Tensor[] targets)
    {
        var scratch = _scratch[0];   // any geometry's scratch serves as work space
        foreach (var t in scratch) t.zero_();
        var parameters = _window.Parameters;
        for (int q = 0; q < parameters.Count; q++)
            Add(parameters[q].Segment, q, parameters[q].Parameter.detach().reshape(-1), scratch[parameters[q].Segment], null, null);
        for (int s = 0; s < targets.Length; s++) Fold(0, s, targets[s]);
    }

    /// <summary>
    /// Adds the sketch of <paramref name="flat"/> (watched parameter <paramref name="ordinal"/>) into the [2d] scratch
    /// <paramref name="plain"/>, and the sketch of D x (D = |theta| + eta) into <paramref name="scaled"/>; either may be
    /// null. Each chunk is copied and signed once for both (a sign flip is exact, so the order does not round).
    /// </summary>
    private void Add(int segment, int ordinal, Tensor flat, Tensor? plain, Tensor? scaled, Tensor? theta)
    {
        long n = flat.numel();
        for (long c = 0, offset = 0; offset < n; c++, offset += TableLength)
        {
            long length = Math.Min(TableLength, n - offset);
            var (shift, negative) = ChunkHash(ordinal, c, Dimension);
            var buckets = Head(_buckets[segment], length);
            var alpha = negative ? _minus : _plus;
            var values = Head(_chunk[segment], length).copy_(flat.narrow(0, offset, length)).mul_(Head(_signs[segment], length));
            plain?.narrow(0, shift, Dimension).index_add_(0, buckets, values, alpha);
            if (scaled is null) continue;
            values.mul_(Statistics.Whitening.AdaptiveD(theta!.narrow(0, offset, length), _eta, Head(_scale[segment], length)));
            scaled.narrow(0, shift, Dimension).index_add_(0, buckets, values, alpha);
        }
    }

    /// <summary>The first <paramref name="length"/> elements of a [TableLength] tensor (itself when whole).</summary>
    private static Tensor Head(Tensor table, long length) => length == TableLength ? table : table.narrow(0, 0, length);

    /// <summary>Folds geometry <paramref name="g"/>'s [2d] scratch of segment <paramref name="s"/> into <paramref name="target"/> [d]: buckets b and b + d add.</summary>
    private void Fold(int g, int s, Tensor target) => target.copy_(_low[g][s]).add_(_high[g][s], _plus);

    /// <summary>
    /// The memory a session with <see cref="WindowStorage.Sketch"/> and the built-in probes adds, in bytes, for
    /// <paramref name="parameters"/> float32 parameters: 4 per parameter (the one-theta probe's copy of theta), and per
    /// window (the step window and the one-theta one) K x d x 4 per geometry, its [2d] scratch per geometry and its
    /// hash tables and work space (<see cref="TableLength"/> x 20: buckets 8, signs 4, two float32 work spaces 4 each),
    /// the drift probe's two sketches of theta, and the K step batches the one-theta probe keeps
    /// (<paramref name="batchBytes"/>).
    /// </summary>
    public static long SessionBytes(long parameters, int k, int dimension, int geometries, long batchBytes = 0) =>
        4 * parameters
        + 2 * (geometries * ((long)k * dimension * 4 + 2L * dimension * 4) + TableLength * 20L)
        + 2L * dimension * 4
        + batchBytes;

    /// <summary>The bucket shift in [0, d) and the sign of chunk <paramref name="chunk"/> of parameter <paramref name="ordinal"/> (SplitMix64).</summary>
    internal static (long Shift, bool Negative) ChunkHash(int ordinal, long chunk, int dimension)
    {
        ulong z = Seed + (((ulong)(uint)ordinal << 40) ^ (ulong)chunk) * 0x9E37_79B9_7F4A_7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D0_49BB_1331_11EBUL;
        z ^= z >> 31;
        return ((long)((z >> 1) % (ulong)dimension), (z & 1) != 0);
    }

    private Tensor Own(Tensor tensor)
    {
        tensor.DetachFromDisposeScope();
        _owned.Add(tensor);
        return tensor;
    }

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
        _eta.Dispose();
        _plus.Dispose();
        _minus.Dispose();
    }
}

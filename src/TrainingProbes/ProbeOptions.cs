using Microsoft.Extensions.Logging;
using static TorchSharp.torch;
using TrainingProbes.Stopping;

namespace TrainingProbes;

/// <summary>
/// Settings of a <see cref="ProbeSession"/>. Each property checks its value when it is set, so a wrong
/// value fails where it is written; settings that depend on each other are checked when the session is created.
/// </summary>
public sealed class ProbeOptions
{
    private int _windowSize = 8;
    private int _interval = 100;
    private Geometry? _geometries;
    private double _fisherDecay = 0.9;
    private double _adaptiveEta;
    private double _gsnrEpsilon;
    private double _regretQuantile = 0.9;
    private int _historyCapacity = 1024;
    private string? _runId;
    private string? _worker;
    private int _layerMetrics;
    private double? _overheadBudget = 0.05;
    private string? _checkpointPath;

    /// <summary>
    /// K, the number of micro-batches a window splits the closing step's minibatch into (at least 2, default 8): the
    /// default indicators compare the K micro-batch gradients at the step's parameters, and report what they imply for
    /// minibatches of the trainer's size. A batch of b examples gives micro-batches of b / K (the remainder of b / K is
    /// left out). With <see cref="StepStatistics"/>, also the number of step gradients of the step family's windows.
    /// </summary>
    public int WindowSize
    {
        get => _windowSize;
        init => _windowSize = value is >= 2 and <= MaxWindowSize
            ? value
            : throw new ArgumentOutOfRangeException(nameof(WindowSize), value,
                $"WindowSize (K) must be from 2 to {MaxWindowSize}: pairwise indicators need two gradients, and the K x K Gram matrices of a larger window " +
                "do not fit the statistics' sums. Use 8 to 32 for stable values.");
    }

    /// <summary>
    /// N, a window opens every N steps (default 100) when <see cref="OverheadBudget"/> is null. With a budget (the
    /// default) the session chooses the interval from what windows cost, and this is not used.
    /// </summary>
    public int Interval
    {
        get => _interval;
        init => _interval = value >= 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Interval), value,
                "Interval (N) must be at least 1 (a window every N steps), and at least WindowSize with StepStatistics.");
    }

    /// <summary>
    /// Whether the step family runs (default false): the first-order family of the trainer's own K consecutive step
    /// gradients, each at its own theta, published as <c>step.*</c>. They describe the optimizer's trajectory, not
    /// generalization, and cost a K x P buffer of step gradients; a window then spans K steps.
    /// </summary>
    public bool StepStatistics { get; init; }

    /// <summary>Largest interval the overhead budget may choose.</summary>
    public const int MaxInterval = 1_000_000;

    /// <summary>The largest <see cref="WindowSize"/>: the statistics keep K x K Gram matrices per geometry and per layer.</summary>
    public const int MaxWindowSize = 4096;

    /// <summary>
    /// The probes' cost as a fraction of the training time (default 0.05: training runs at most about 5% slower). After
    /// each window the session measures what the probes cost and chooses the next interval so that, on average, they
    /// cost this fraction; <see cref="Interval"/> is then only the first interval. Null keeps the interval fixed at
    /// <see cref="Interval"/>.
    /// </summary>
    public double? OverheadBudget
    {
        get => _overheadBudget;
        init => _overheadBudget = value is null or (> 0 and < 1)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(OverheadBudget), value,
                "OverheadBudget is a fraction of the training time in (0, 1), for example 0.05; null keeps the interval fixed.");
    }

    /// <summary>
    /// Geometries in which the first-order family is computed (default all three; euclidean and adaptive with
    /// <see cref="WindowStorage.Sketch"/>, which cannot keep the fisher geometry's per-coordinate average).
    /// </summary>
    public Geometry Geometries
    {
        get => _geometries ?? DefaultGeometries(Storage);
        init => _geometries = value != Geometry.None && (value & ~Geometry.All) == 0
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Geometries), value,
                "Geometries must name at least one of Euclidean, Fisher, Adaptive (combine them with |).");
    }

    /// <summary>The geometries of a session that does not set them: all three, or those a sketch can hold.</summary>
    internal static Geometry DefaultGeometries(WindowStorage storage) =>
        storage == WindowStorage.Sketch ? Geometry.Euclidean | Geometry.Adaptive : Geometry.All;

    /// <summary>
    /// How a window keeps its K gradients (default <see cref="WindowStorage.Full"/>): in full precision, in bfloat16
    /// (half the memory), or as CountSketches of <see cref="SketchDimension"/> numbers (4 bytes per watched parameter
    /// in all, for models too large for K copies; what it cannot compute is listed on <see cref="WindowStorage.Sketch"/>).
    /// </summary>
    public WindowStorage Storage
    {
        get => _storage;
        init => _storage = Enum.IsDefined(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Storage), value, "Storage is Full, BFloat16 or Sketch.");
    }

    private WindowStorage _storage;

    /// <summary>A copy of these options with another <see cref="Storage"/> (the session's choice for a large model).</summary>
    internal ProbeOptions With(WindowStorage storage)
    {
        var copy = (ProbeOptions)MemberwiseClone();
        copy._storage = storage;
        return copy;
    }

    /// <summary>
    /// d, the numbers each gradient is compressed to with <see cref="WindowStorage.Sketch"/> (default 65,536 = 2^16),
    /// from 1,024 to 2^24. A cosine estimated from sketches has a standard deviation of about (1 - cosine^2) / sqrt(d):
    /// at most 0.004 at the default, so its error stays under 0.02 (five standard deviations). Memory: K x d x 4 bytes
    /// per window and geometry.
    /// </summary>
    public int SketchDimension
    {
        get => _sketchDimension;
        init => _sketchDimension = value is >= 1024 and <= 1 << 24
            ? value
            : throw new ArgumentOutOfRangeException(nameof(SketchDimension), value,
                "SketchDimension (d) is from 1,024 to 16,777,216; the default 65,536 keeps a cosine's error under 0.02.");
    }

    private int _sketchDimension = 1 << 16;

    /// <summary>
    /// Decay of the running average of squared gradients that defines the diagonal Fisher, per window,
    /// in [0, 1) (default 0.9). The average is bias-corrected as in Adam; 0 uses the current window only.
    /// </summary>
    public double FisherDecay
    {
        get => _fisherDecay;
        init => _fisherDecay = value is >= 0 and < 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(FisherDecay), value, "FisherDecay must be in [0, 1), for example 0.9.");
    }

    /// <summary>
    /// Raises each coordinate's diagonal Fisher to at least this fraction of the mean Fisher of its parameter tensor
    /// (default 1e-4), in [0, 1); 0 is no floor. Coordinates that almost never receive a gradient (pixels that are
    /// rarely lit, say) otherwise get an enormous whitening 1/sqrt(F) that dominates the Fisher geometry, above all
    /// the finite-radius measures of <see cref="FixedPointProbe"/> (on a trained MNIST MLP, Fisher sharpness 1.1e8
    /// without a floor). 1e-4 is the smallest floor, on that evidence, at which those measures stop depending on it,
    /// and it moves the first-order Fisher values by a few percent. A floor keeps the invariance to rescaling a whole
    /// parameter tensor (the symmetry of ReLU networks), but not to arbitrary per-coordinate rescaling: set 0 for that.
    /// </summary>
    public double FisherFloor
    {
        get => _fisherFloor;
        init => _fisherFloor = value is >= 0 and < 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(FisherFloor), value, "FisherFloor must be in [0, 1), for example 1e-4; 0 means no floor.");
    }

    private double _fisherFloor = 1e-4;

    /// <summary>
    /// eta of the adaptive geometry <c>D = |theta| + eta</c> (default 0). Any eta &gt; 0 breaks the exact
    /// invariance to rescaling of the parameters.
    /// </summary>
    public double AdaptiveEta
    {
        get => _adaptiveEta;
        init => _adaptiveEta = value >= 0 && double.IsFinite(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(AdaptiveEta), value, "AdaptiveEta must be a finite number >= 0 (0 keeps the adaptive geometry invariant).");
    }

    /// <summary>
    /// epsilon added to the per-coordinate variance in the GSNR (default 0, which keeps GSNR exactly invariant;
    /// coordinates with zero variance are left out).
    /// </summary>
    public double GsnrEpsilon
    {
        get => _gsnrEpsilon;
        init => _gsnrEpsilon = value >= 0 && double.IsFinite(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(GsnrEpsilon), value, "GsnrEpsilon must be a finite number >= 0.");
    }

    /// <summary>Quantile of the pairwise regret published as <see cref="Indicators.RegretUpper"/>, in (0, 1) (default 0.9).</summary>
    public double RegretQuantile
    {
        get => _regretQuantile;
        init => _regretQuantile = value is > 0 and < 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(RegretQuantile), value, "RegretQuantile must be strictly between 0 and 1, for example 0.9.");
    }

    /// <summary>Number of window snapshots kept in <see cref="ProbeSession.History"/> (default 1024, at least 1).</summary>
    public int HistoryCapacity
    {
        get => _historyCapacity;
        init => _historyCapacity = value >= 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(HistoryCapacity), value, "HistoryCapacity must be at least 1.");
    }

    /// <summary>
    /// Selects parameters by their dotted name (as <c>named_parameters()</c> gives it); null selects all.
    /// Parameters that do not require a gradient are always skipped.
    /// </summary>
    public Func<string, bool>? ParameterFilter { get; init; }

    /// <summary>Identifies the run in metrics and logs; generated from the start time when null.</summary>
    public string? RunId
    {
        get => _runId;
        init => _runId = value is null || !string.IsNullOrWhiteSpace(value)
            ? value
            : throw new ArgumentException("RunId must not be empty or white space; leave it null to generate one.", nameof(RunId));
    }

    /// <summary>
    /// Names the worker in metrics (attribute <c>worker</c>), for example the rank in distributed training, so that
    /// several machines reporting the same <see cref="RunId"/> stay apart; null adds no attribute.
    /// </summary>
    public string? Worker
    {
        get => _worker;
        init => _worker = value is null || !string.IsNullOrWhiteSpace(value)
            ? value
            : throw new ArgumentException("Worker must not be empty or white space; leave it null for a single worker.", nameof(Worker));
    }

    /// <summary>
    /// Publishes per-layer values (gradient norm, cosine and relative regret per geometry, and GSNR, with attribute
    /// <c>layer</c> = the parameter's name) for at most this many parameters, the first ones in
    /// <c>named_parameters()</c> order among the watched ones (use <see cref="ParameterFilter"/> to choose).
    /// 0 (the default) publishes whole-model values only. At most 256, to keep the number of series bounded.
    /// </summary>
    public int LayerMetrics
    {
        get => _layerMetrics;
        init => _layerMetrics = value is >= 0 and <= 256
            ? value
            : throw new ArgumentOutOfRangeException(nameof(LayerMetrics), value,
                "LayerMetrics is the number of parameters with per-layer metrics: 0 (off) to 256. Each adds about 10 series.");
    }

    /// <summary>
    /// Where each window is shown (default <see cref="Console.Out"/>); null writes nothing. On a terminal (the console,
    /// not redirected, with ANSI support) a small panel per window: the step, the loss, the default indicators with
    /// their standard errors and a trend over the last windows, the overhead against its budget and the stopping rules'
    /// state. Anywhere else (a redirected output, a CI log, a file or any other writer) one plain line per window.
    /// </summary>
    public TextWriter? Output { get; init; } = Console.Out;

    /// <summary>Probes added to the built-in ones; their values join the same snapshots and metrics.</summary>
    public IReadOnlyList<TrainingProbe> Probes { get; init; } = [];

    /// <summary>What the session acquires at start and disposes at end (<see cref="Session.SessionResources"/>): TRAININGPROBES_PROMETHEUS's server.</summary>
    internal IReadOnlyList<Func<ProbeSession, IDisposable>> SessionResources { get; init; } = [];

    /// <summary>
    /// Rules evaluated on every value they monitor when it is published (indicators at each window, values the
    /// trainer reports with <see cref="ProbeSession.Report"/> when reported): early stopping, warnings, checkpoints.
    /// Give each rule to one session only (rules keep state). Default: <see cref="DefaultStoppingRule"/>, which acts
    /// only when the trainer reports <c>val.loss</c>; <c>[]</c> stops on nothing.
    /// </summary>
    public IReadOnlyList<StoppingRule> Stopping { get; init; } = [DefaultStoppingRule()];

    /// <summary>
    /// The default rule, a new instance per call: stop when the validation loss the trainer reports as <c>val.loss</c>
    /// has not improved for 5 reports. No rule on the probes alone held across the evidence matrix's configurations
    /// (docs/EVIDENCE.md); this one was chosen there, and the console explains its stop with the probes' smoothed values.
    /// </summary>
    public static StoppingRule DefaultStoppingRule() => new EarlyStopping("val.loss") { Patience = 5, IsDefault = true };

    /// <summary>
    /// A file the best weights are written to each time a <see cref="RuleAction.Checkpoint"/> rule sees an
    /// improvement: <c>.pt</c> (a PyTorch state_dict) or <c>.safetensors</c>. Null keeps them in memory only, on the CPU.
    /// </summary>
    public string? CheckpointPath
    {
        get => _checkpointPath;
        init => _checkpointPath = value is null || (Path.GetExtension(value).ToLowerInvariant() is ".pt" or ".pth" or ".safetensors" && Directory.Exists(Path.GetDirectoryName(Path.GetFullPath(value))))
            ? value
            : throw new ArgumentException(
                $"CheckpointPath '{value}' must end in .pt, .pth or .safetensors and be in an existing folder.", nameof(CheckpointPath));
    }

    /// <summary>
    /// The loss function, (output, target) -> the scalar mean loss of a batch, with which the session evaluates the
    /// window's step batches again at one theta (the default indicators). The one-line form can pass it instead:
    /// <c>model.Probe(loss, optimizer, input, target, lossFunction.call)</c>.
    /// </summary>
    public Func<Tensor, Tensor, Tensor>? Loss { get; init; }

    /// <summary>The model's forward function for those evaluations; null calls the model itself (a <c>Module&lt;Tensor, Tensor&gt;</c>).</summary>
    public Func<Tensor, Tensor>? Forward { get; init; }

    /// <summary>
    /// Windows over which the default values are also smoothed and published as <c>&lt;name&gt;.smoothed</c> with their
    /// standard error (default 32; 0 publishes none). Cosine, regret, relative regret, flatness, noise, the norms,
    /// disparity and the norm test are computed from the windows' pooled Gram moments (a jackknife over the windows gives
    /// the error); the others are means of the windows' values. One window sees one minibatch, so its values are noisy
    /// (a cosine's standard error is typically 0.2 to 0.4): read and stop on the smoothed values, which describe the last
    /// n windows rather than the latest step. Each value's between-window spread over the same windows is published as
    /// <c>&lt;name&gt;.spread</c>: the run-level uncertainty that the window's own standard error leaves out.
    /// </summary>
    public int SmoothingWindows
    {
        get => _smoothingWindows;
        init => _smoothingWindows = value == 0 || value is >= 2 and <= 1000 ? value
            : throw new ArgumentOutOfRangeException(nameof(SmoothingWindows), value, "SmoothingWindows is 0 (off) or a window count from 2 to 1000, for example 32.");
    }

    private int _smoothingWindows = 32;

    /// <summary>
    /// Steps a window stays in the smoothed values and the spread (default 1,000; null: as many as
    /// <see cref="SmoothingWindows"/> holds, however old). A window this many steps or more before the latest is left out,
    /// so a smoothed value never describes a part of the run long past, whatever the schedule's pace.
    /// </summary>
    public int? SmoothingSteps
    {
        get => _smoothingSteps;
        init => _smoothingSteps = value is null or >= 1 ? value
            : throw new ArgumentOutOfRangeException(nameof(SmoothingSteps), value, "SmoothingSteps is a number of steps, at least 1 (for example 1000), or null for no limit.");
    }

    private int? _smoothingSteps = 1000;

    /// <summary>
    /// Whether a window's statistics run on a worker thread while training goes on (default true): the probes take what
    /// they need from the model when the window closes, the statistics and the transfer of their few numbers run on the
    /// worker, and the snapshot is published at the first <see cref="ProbeSession.Step"/> after (or at
    /// <see cref="ProbeSession.Flush"/>). False computes and publishes on the training thread at the window's last step.
    /// </summary>
    public bool BackgroundStatistics { get; init; } = true;

    /// <summary>Whether the built-in probes (gradient statistics at one theta and step to step, drift, loss) run (default true).</summary>
    public bool BuiltInProbes { get; init; } = true;

    /// <summary>Receives probe failures and session events; null logs nothing.</summary>
    public ILoggerFactory? LoggerFactory { get; init; }

    /// <summary>
    /// The clock the overhead budget measures training and probe time with (default <see cref="TimeProvider.System"/>);
    /// a fake one makes the window schedule reproducible in tests.
    /// </summary>
    public TimeProvider TimeProvider
    {
        get => _timeProvider;
        init => _timeProvider = value ?? throw new ArgumentNullException(nameof(TimeProvider), "TimeProvider cannot be null; leave it unset for the system clock.");
    }

    private TimeProvider _timeProvider = TimeProvider.System;

    /// <summary>
    /// Whether a probe failure (and a stopping rule on a name no probe publishes) throws a
    /// <see cref="ProbeFailureException"/> from the session call where it is found, instead of being logged, counted and
    /// listed in <see cref="ProbeSnapshot.Failures"/> while training goes on. Off by default: a probe must never stop
    /// training. Turn it on in tests and while writing a probe. <c>TRAININGPROBES_STRICT=true</c> sets it.
    /// </summary>
    public bool Strict { get; init; } = StrictByDefault;

    /// <summary>The default of <see cref="Strict"/>: the test suites set it so that every session they build is strict.</summary>
    internal static bool StrictByDefault { get; set; }

    /// <summary>
    /// Default options, overridden by the <c>TRAININGPROBES_*</c> environment variables where set (the table in
    /// docs/REFERENCE.md: window size, interval, geometries, run id, worker, layer metrics, overhead budget, storage,
    /// sketch dimension, background, output, strict, Prometheus endpoint, stopping rules, checkpoint path). The one-line
    /// <c>model.Probe(loss)</c> uses these when no session was attached explicitly.
    /// </summary>
    /// <exception cref="ArgumentException">A variable holds a value that cannot be used; the message names it.</exception>
    public static ProbeOptions FromEnvironment() => FromEnvironment(Environment.GetEnvironmentVariable);

    /// <summary>What <see cref="FromEnvironment()"/> read, by variable (null when unset); null for options made in code.</summary>
    internal IReadOnlyDictionary<string, string?>? EnvironmentValues { get; set; }

    /// <summary>Options from the variables <paramref name="read"/> returns (tests pass a dictionary's lookup).</summary>
    internal static ProbeOptions FromEnvironment(Func<string, string?> read) => Configuration.EnvironmentOptions.FromEnvironment(read);

    /// <summary>Checks the options that depend on each other (see <see cref="Configuration.OptionsValidation"/>).</summary>
    internal void ValidateTogether() => Configuration.OptionsValidation.Validate(this);
}

using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>
/// <c>y = x w + b</c> in float64, plus a parameter that requires a gradient but is not used in the forward
/// pass (watched, its gradient counts as zero) unless <see cref="UseUnused"/> is set (then <c>y = x w + b + sum(unused)</c>),
/// and a frozen parameter (not watched).
/// </summary>
internal sealed class LinearRegressionModel : nn.Module<Tensor, Tensor>
{
    public const string WeightName = "linear.weight";
    public const string BiasName = "linear.bias";
    public const string UnusedName = "unused";
    public const string FrozenName = "frozen";

#pragma warning disable IDE0044 // RegisterComponents finds the components through these fields.
    private Linear linear;
    private Parameter unused;
    private Parameter frozen;
#pragma warning restore IDE0044

    public LinearRegressionModel(int inputs, double[] unusedValues) : base(nameof(LinearRegressionModel))
    {
        linear = nn.Linear(inputs, 1, dtype: ScalarType.Float64);
        unused = nn.Parameter(torch.tensor(unusedValues, dtype: ScalarType.Float64));
        // Large, so that a drift or a whitening that wrongly included it would be far off.
        frozen = nn.Parameter(torch.full(3, 1000.0, dtype: ScalarType.Float64), requires_grad: false);
        RegisterComponents();
    }

    public Linear Linear => linear;

    /// <summary>Whether the next forward passes use the otherwise unused parameter.</summary>
    public bool UseUnused { get; set; }

    public override Tensor forward(Tensor input) => UseUnused ? linear.forward(input) + unused.sum() : linear.forward(input);
}

/// <summary>The data and settings of one linear-regression run, generated from a fixed seed in plain C#.</summary>
internal sealed class RegressionData
{
    public RegressionData(int inputs, int batch, int steps, int seed)
    {
        Inputs = inputs;
        Batch = batch;
        var random = new Random(seed);
        var truth = Enumerable.Range(0, inputs).Select(_ => Normal(random)).ToArray();
        X = new double[steps][];
        Y = new double[steps][];
        for (int s = 0; s < steps; s++)
        {
            X[s] = new double[batch * inputs];
            Y[s] = new double[batch];
            for (int r = 0; r < batch; r++)
            {
                double y = 0.5;
                for (int c = 0; c < inputs; c++)
                {
                    double x = Normal(random);
                    X[s][r * inputs + c] = x;
                    y += truth[c] * x;
                }
                Y[s][r] = y + 0.7 * Normal(random);   // noisy targets: minibatch gradients disagree
            }
        }
        UnusedValues = Enumerable.Range(0, 3).Select(_ => Normal(random)).ToArray();
    }

    public int Inputs { get; }
    public int Batch { get; }
    public double[][] X { get; }
    public double[][] Y { get; }
    public double[] UnusedValues { get; }

    private static double Normal(Random random) =>
        Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
}

/// <summary>What a hand replay expects of one window.</summary>
internal sealed record ExpectedWindow(
    IReadOnlyDictionary<Geometry, Dictionary<string, double>> PerGeometry,
    IReadOnlyDictionary<Geometry, Dictionary<string, double>> PerGeometryErrors,
    double Gsnr,
    double GsnrError,
    double Drift,
    double Loss,
    double FirstMicroBatchSum);

/// <summary>
/// Replays SGD on the linear regression in plain doubles: gradients by the closed form
/// <c>grad_w = (2/b) X^T r</c>, <c>grad_b = (2/b) sum r</c> with <c>r = X w + b - y</c>, and every indicator of each window.
/// The flattened parameter vector is <c>[w (d), b, unused (3)]</c>; the unused parameter's gradient is zero on the
/// steps that do not use it, and <c>grad_b</c> per element on the steps that do.
/// </summary>
internal static class RegressionReplay
{
    public static List<ExpectedWindow> Run(
        RegressionData data, double[] initialWeight, double initialBias, double learningRate, int steps, ProbeOptions options,
        Func<int, bool>? usesUnused = null)
    {
        int d = data.Inputs, b = data.Batch, k = options.WindowSize, n = options.Interval;
        int parameterCount = d + 1 + data.UnusedValues.Length;
        var w = (double[])initialWeight.Clone();
        double bias = initialBias;
        var unused = (double[])data.UnusedValues.Clone();
        var fisher = new ReferenceFisher(parameterCount, options.FisherDecay);

        var windows = new List<ExpectedWindow>();
        var gradients = new List<double[]>();
        var losses = new List<double>();
        double[]? previousClose = null;   // theta at the last window's close: the drift is measured from there

        for (int step = 0; step < steps; step++)
        {
            var x = data.X[step];
            var y = data.Y[step];
            bool extra = usesUnused?.Invoke(step) ?? false;
            var gradW = new double[d];
            double gradB = 0, loss = 0;
            for (int r = 0; r < b; r++)
            {
                double residual = bias + (extra ? unused.Sum() : 0) - y[r];
                for (int c = 0; c < d; c++) residual += x[r * d + c] * w[c];
                loss += residual * residual / b;
                gradB += 2.0 / b * residual;
                for (int c = 0; c < d; c++) gradW[c] += 2.0 / b * residual * x[r * d + c];
            }

            // Micro-batch 0 of the step's batch split into K (floor(b / K) examples), at the step's theta: what
            // ProbeWindowContext.Gradients gives for the window's closing step.
            int perMicro = b / k;
            double microSum = 0;
            for (int r = 0; r < perMicro; r++)
            {
                double residual = bias + (extra ? unused.Sum() : 0) - y[r];
                for (int c = 0; c < d; c++) residual += x[r * d + c] * w[c];
                double unit = 2.0 / perMicro * residual;
                microSum += unit * (1 + (extra ? unused.Length : 0));
                for (int c = 0; c < d; c++) microSum += unit * x[r * d + c];
            }

            int phase = step % n;
            if (phase < k)
            {
                var theta = Flatten(w, bias, unused);
                if (phase == 0)
                {
                    gradients.Clear();
                    losses.Clear();
                }
                var gradUnused = Enumerable.Repeat(extra ? gradB : 0.0, unused.Length).ToArray();
                gradients.Add(Flatten(gradW, gradB, gradUnused));
                losses.Add(loss);
                if (phase == k - 1)
                {
                    windows.Add(CloseWindow(gradients, losses, previousClose, theta, fisher, options, microSum));
                    previousClose = theta;
                }
            }

            for (int c = 0; c < d; c++) w[c] -= learningRate * gradW[c];
            bias -= learningRate * gradB;
            if (extra)
                for (int e = 0; e < unused.Length; e++) unused[e] -= learningRate * gradB;
        }

        return windows;
    }

    private static ExpectedWindow CloseWindow(
        List<double[]> g, List<double> losses, double[]? previousClose, double[] thetaLast, ReferenceFisher fisher, ProbeOptions options,
        double firstMicroBatchSum)
    {
        var whitened = new Dictionary<Geometry, IReadOnlyList<double[]>>
        {
            [Geometry.Euclidean] = g,
            [Geometry.Fisher] = ReferenceIndicators.Whiten(g, fisher.NextWindow(g)),
            [Geometry.Adaptive] = ReferenceIndicators.Whiten(g, ReferenceIndicators.AdaptiveWhitening(thetaLast, options.AdaptiveEta)),
        };
        var perGeometry = whitened.ToDictionary(kv => kv.Key, kv => ReferenceIndicators.FirstOrder(kv.Value, options.RegretQuantile));
        // Jackknife over the K gradients, each leave-one-out family recomputed from the gradient vectors themselves.
        var errors = whitened.ToDictionary(kv => kv.Key, kv => ReferenceIndicators.FirstOrderNames.ToDictionary(name => name,
            name => g.Count < 3 ? double.NaN : ReferenceIndicators.Jackknife(kv.Value, subset => ReferenceIndicators.FirstOrder(subset, options.RegretQuantile)[name])));
        return new ExpectedWindow(
            perGeometry,
            errors,
            ReferenceIndicators.Gsnr(g, options.GsnrEpsilon),
            g.Count < 5 ? double.NaN : ReferenceIndicators.GsnrLinearisedError(g, options.GsnrEpsilon),
            previousClose is null ? double.NaN : ReferenceIndicators.Drift(previousClose, thetaLast),
            losses.Average(),
            firstMicroBatchSum);
    }

    private static double[] Flatten(double[] w, double b, double[] unused) => [.. w, b, .. unused];
}

/// <summary>Runs the real TorchSharp training loop on <see cref="RegressionData"/> with a probe session attached.</summary>
internal static class RegressionTraining
{
    /// <summary>The exponent of the squared error, a scalar kept alive (see TrainingProbes.Interop.Scalars).</summary>
    public static readonly Scalar Two = 2.ToScalar();

    public static (double[] Weight, double Bias) InitialParameters(LinearRegressionModel model) =>
        (model.Linear.weight!.data<double>().ToArray(), model.Linear.bias!.data<double>().ToArray()[0]);

    public static void Train(
        LinearRegressionModel model, ProbeSession session, torch.optim.Optimizer optimizer, RegressionData data, int steps,
        Func<int, bool>? usesUnused = null, bool passBatch = false)
    {
        for (int step = 0; step < steps; step++)
        {
            using var scope = torch.NewDisposeScope();
            model.UseUnused = usesUnused?.Invoke(step) ?? false;
            optimizer.zero_grad();
            var x = torch.tensor(data.X[step], dtype: ScalarType.Float64).reshape(data.Batch, data.Inputs);
            var y = torch.tensor(data.Y[step], dtype: ScalarType.Float64).reshape(data.Batch, 1);
            var loss = (model.forward(x) - y).square().mean();
            loss.backward();
            if (passBatch) session.Step(loss, x, y);
            else session.Step(loss);
            optimizer.step();
        }
    }
}

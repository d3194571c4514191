using TorchSharp;
using TrainingProbes.Optimizers;
using static TorchSharp.torch;

namespace TrainingProbes.TestSupport;

/// <summary>
/// A seeded synthetic classification task: each batch is <see cref="Batch"/> rows of standard-normal inputs with
/// <see cref="Features"/> columns and uniformly random labels in [0, <see cref="Classes"/>), drawn in that order (inputs,
/// then labels) from the generator given. Two runs that start a generator with one seed see the same batches.
/// </summary>
/// <param name="Features">Input columns.</param>
/// <param name="Classes">Label values.</param>
/// <param name="Batch">Rows per batch.</param>
/// <param name="DType">The inputs' dtype, passed to randn (which draws differently per dtype); null: the default (float32).</param>
public sealed record Classification(int Features = 5, int Classes = 3, int Batch = 16, ScalarType? DType = null)
{
    /// <summary>One batch from <paramref name="generator"/>, in the current dispose scope.</summary>
    public (Tensor X, Tensor Y) Draw(Generator generator)
    {
        var x = DType is { } dtype
            ? torch.randn([Batch, Features], dtype: dtype, generator: generator)
            : torch.randn([Batch, Features], generator: generator);
        var y = torch.randint(0, Classes, [Batch], generator: generator);
        return (x, y);
    }

    /// <summary>A step's batch from a generator of its own, seeded <paramref name="seed"/> + <paramref name="step"/>: batches that depend only on the step index (a resumed run sees those of an uninterrupted one).</summary>
    public (Tensor X, Tensor Y) AtStep(int step, int seed)
    {
        using var generator = new Generator((ulong)(seed + step));
        return Draw(generator);
    }
}

/// <summary>
/// The tests' training loop: one place for what about forty copies used to spell out. Each step runs in a dispose scope
/// of its own (its batch, loss and graph are freed when it ends) and does, in this order: draw the batch,
/// <c>optimizer.zero_grad()</c>, loss of <c>model.call(x)</c>, <c>backward()</c>, the caller's <c>onStep(loss, x, y)</c>
/// (where a session or <c>model.Probe</c> sees the step), <c>optimizer.step()</c>. Tests whose loop differs on purpose (an
/// unusual call order, accumulation, injected faults, other threads) keep their own.
/// </summary>
public static class Trainer
{
    /// <summary>Mean cross-entropy of logits against integer labels, the loss most tests train on.</summary>
    public static Tensor CrossEntropy(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

    /// <summary>
    /// Linear(<paramref name="inputs"/>, <paramref name="hidden"/>), ReLU, Linear(<paramref name="hidden"/>,
    /// <paramref name="classes"/>), initialised after <c>torch.manual_seed(seed)</c>.
    /// </summary>
    public static nn.Module<Tensor, Tensor> Mlp(int seed, int inputs = 5, int hidden = 8, int classes = 3)
    {
        torch.manual_seed(seed);
        return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes));
    }

    /// <summary>An <see cref="Mlp"/> (5-8-3 unless told) and plain SGD on its parameters (<see cref="GcSafeSgd"/>, learning rate 0.05 unless told).</summary>
    public static (nn.Module<Tensor, Tensor> Model, optim.Optimizer Optimizer) SmallModel(
        int seed = 1, int inputs = 5, int hidden = 8, int classes = 3, double learningRate = 0.05)
    {
        var model = Mlp(seed, inputs, hidden, classes);
        return (model, new GcSafeSgd(model.parameters(), learningRate));
    }

    /// <summary>
    /// Trains <paramref name="steps"/> steps on batches of <paramref name="task"/> (the default 5 features, 3 classes,
    /// batch 16 when null) drawn from <paramref name="generator"/>, which goes on where it stands: a test may call this
    /// again with the same generator to continue.
    /// </summary>
    /// <param name="model">What is trained.</param>
    /// <param name="optimizer">Its optimizer.</param>
    /// <param name="steps">How many steps.</param>
    /// <param name="generator">Where the batches are drawn from.</param>
    /// <param name="onStep">Called after backward, before the optimizer step, with (loss, x, y).</param>
    /// <param name="task">The batches' shape; null: <c>new Classification()</c>.</param>
    /// <param name="loss">The loss; null: <see cref="CrossEntropy"/>.</param>
    public static void Train(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, int steps, Generator generator,
        Action<Tensor, Tensor, Tensor>? onStep = null, Classification? task = null, Func<Tensor, Tensor, Tensor>? loss = null)
    {
        ArgumentNullException.ThrowIfNull(generator);
        task ??= new Classification();
        Train(model, optimizer, 0, steps, _ => task.Draw(generator), onStep, loss);
    }

    /// <summary>
    /// Trains <paramref name="steps"/> steps with a fresh generator seeded <paramref name="seed"/>; otherwise as
    /// <see cref="Train(nn.Module{Tensor, Tensor}, optim.Optimizer, int, Generator, Action{Tensor, Tensor, Tensor}?, Classification?, Func{Tensor, Tensor, Tensor}?)"/>.
    /// </summary>
    public static void Train(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, int steps, int seed,
        Action<Tensor, Tensor, Tensor>? onStep = null, Classification? task = null, Func<Tensor, Tensor, Tensor>? loss = null)
    {
        using var generator = new Generator((ulong)seed);
        Train(model, optimizer, steps, generator, onStep, task, loss);
    }

    /// <summary>One step on a batch of <paramref name="task"/> drawn from <paramref name="generator"/>: for tests that do something between steps.</summary>
    public static void Step(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, Generator generator,
        Action<Tensor, Tensor, Tensor>? onStep = null, Classification? task = null, Func<Tensor, Tensor, Tensor>? loss = null)
    {
        ArgumentNullException.ThrowIfNull(generator);
        task ??= new Classification();
        Train(model, optimizer, 0, 1, _ => task.Draw(generator), onStep, loss);
    }

    /// <summary>
    /// The loop itself: steps <paramref name="from"/> to <paramref name="to"/> (exclusive), each on the batch
    /// <paramref name="batch"/> makes for its index, inside the step's dispose scope.
    /// </summary>
    /// <param name="model">What is trained.</param>
    /// <param name="optimizer">Its optimizer.</param>
    /// <param name="from">The first step's index.</param>
    /// <param name="to">One past the last step's index.</param>
    /// <param name="batch">The (x, y) of a step index.</param>
    /// <param name="onStep">Called after backward, before the optimizer step, with (loss, x, y).</param>
    /// <param name="loss">The loss; null: <see cref="CrossEntropy"/>.</param>
    public static void Train(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, int from, int to, Func<int, (Tensor X, Tensor Y)> batch,
        Action<Tensor, Tensor, Tensor>? onStep = null, Func<Tensor, Tensor, Tensor>? loss = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(optimizer);
        ArgumentNullException.ThrowIfNull(batch);
        loss ??= CrossEntropy;
        for (int step = from; step < to; step++)
        {
            using var scope = torch.NewDisposeScope();
            var (x, y) = batch(step);
            optimizer.zero_grad();
            var value = loss(model.call(x), y);
            value.backward();
            onStep?.Invoke(value, x, y);
            optimizer.step();
        }
    }
}

// QuickStart: a plain TorchSharp training loop with one added line,
// `if (model.Probe(loss, optimizer, x, y, lossFunction.call).ShouldStop) break;`. Given the step's batch and the loss
// function, the session measures its indicators on the window's batches at one theta.
// It trains a small MLP on a synthetic classification task it generates itself, and the probe session prints the
// gradient indicators of each window to the console. Under `dotnet run`, Properties/launchSettings.json also serves
// them at http://127.0.0.1:9464/metrics for Prometheus while it runs. It reports no validation loss, so the library's
// default rule (a val.loss plateau) never stops it; TRAININGPROBES_STOP sets other rules.
using TorchSharp;
using static TorchSharp.torch;

torch.manual_seed(7);
const int Features = 20, Classes = 4, Samples = 16384, BatchSize = 128, Steps = 8000;

// Data: a random teacher network labels gaussian inputs; 10% of labels are flipped to make it noisy.
var inputs = torch.randn(Samples, Features);
Tensor labels;
using (var teacher = nn.Sequential(nn.Linear(Features, 32), nn.Tanh(), nn.Linear(32, Classes)))
using (torch.no_grad())
{
    labels = teacher.call(inputs).argmax(1);
    var flip = torch.rand(Samples) < 0.1;
    labels = torch.where(flip, torch.randint(0, Classes, [Samples]), labels);
}

var model = nn.Sequential(
    nn.Linear(Features, 256), nn.ReLU(),
    nn.Linear(256, 256), nn.ReLU(),
    nn.Linear(256, Classes));
var optimizer = torch.optim.SGD(model.parameters(), learningRate: 0.05, momentum: 0.9);
var lossFunction = nn.CrossEntropyLoss();

int step = 0;
for (; step < Steps; step++)
{
    using var scope = torch.NewDisposeScope();
    var batch = torch.randint(0, Samples, [BatchSize]);
    var (x, y) = (inputs[batch], labels[batch]);
    optimizer.zero_grad();
    var loss = lossFunction.call(model.call(x), y);
    loss.backward();
    if (model.Probe(loss, optimizer, x, y, lossFunction.call).ShouldStop) break;
    optimizer.step();
}

var session = TrainingProbes.ProbeSession.Get(model)!;
bool stoppedEarly = session.ShouldStop;   // before Flush: a rule that fires on the last window did not stop this loop
session.Flush();   // the last window's statistics may still be running beside training
Console.WriteLine($"done: {step} steps{(stoppedEarly ? " (stopped early)" : "")}, {session.History.Count} windows, {session.FailureCount} probe failures.");
session.Dispose();

using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.FaultScenarios;

/// <summary>
/// Reproductions of TorchSharp 0.107.0's fault (docs/KNOWN-ISSUES.md): a <see cref="Scalar"/> made by an implicit
/// conversion is unreachable once TorchSharp has read its handle, so a garbage collection during the native call can
/// finalize it and free the native scalar while the call reads it. Each reproduction runs the faulty call with three
/// threads allocating garbage until it fails (or a time limit), then the same work with the scalars kept alive for as
/// many calls, which must not fail. They pass while the fault is there; once TorchSharp keeps its scalars alive they
/// fail, with a message that says so.
/// </summary>
internal static class UpstreamFaults
{
    // c10 checks a scalar's type tag when it reads it: a freed (recycled) scalar fails toFloat ("Expected false to be
    // true", Scalar.h:140) or type() ("Unknown scalar type", Scalar.h:339), both raised from c10/core/Scalar.h.
    private const string RaisedFrom = "c10/core/Scalar.h";

    [Reproduction("a tensor call with an implicit scalar, t.add_(u, alpha: 0.5), with no TrainingProbes code")]
    private static void ImplicitScalarFreedDuringTheCall()
    {
        using var x = zeros(16);
        using var y = ones(16);
        using var alpha = 0.5.ToScalar();
        Reproduce("x.add_(y, alpha: 0.5)", () => x.add_(y, alpha: 0.5), "x.add_(y, alpha) with a kept scalar", () => x.add_(y, alpha), TimeSpan.FromSeconds(120));
    }

    [Reproduction("a bare TorchSharp training loop (MLP, optim.SGD with momentum) with no TrainingProbes code")]
    private static void SgdStepFreesItsLearningRate()
    {
        var batches = Batches();
        var plain = Loop(p => optim.SGD(p, 0.01, momentum: 0.9), batches);
        var safe = Loop(p => new GcSafeSgd(p, 0.01, momentum: 0.9), batches);
        Reproduce("optim.SGD's step", plain, "GcSafeSgd's step", safe, TimeSpan.FromSeconds(150));
    }

    /// <summary>64 batches made before the garbage threads start (making them uses implicit scalars too).</summary>
    private static List<(Tensor X, Tensor Y)> Batches() =>
        Enumerable.Range(0, 64).Select(i => Data.Batch(i)).Select(b => (b.X.DetachFromDisposeScope(), b.Y.DetachFromDisposeScope())).ToList();

    /// <summary>One training step per call; every tensor of a step is in a dispose scope, so only the optimizer's scalars are exposed.</summary>
    private static Action Loop(Func<IEnumerable<TorchSharp.Modules.Parameter>, optim.Optimizer> optimizerOf, List<(Tensor X, Tensor Y)> batches)
    {
        var model = new Net(3);
        var optimizer = optimizerOf(model.parameters());
        int step = 0;
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            var (x, y) = batches[step++ % batches.Count];
            optimizer.zero_grad();
            Data.Loss(model.call(x), y).backward();
            optimizer.step();
        };
    }

    /// <summary>
    /// Runs <paramref name="faulty"/> under garbage pressure until it throws TorchSharp's error (or <paramref name="limit"/>),
    /// then <paramref name="safe"/> as many times (at least 200,000 calls or 20 s, whichever comes first), which must not throw.
    /// </summary>
    private static void Reproduce(string faultyName, Action faulty, string safeName, Action safe, TimeSpan limit)
    {
        using (var pressure = new GarbageThreads(3))
        {
            var (calls, elapsed, error) = RunUntilError(faulty, long.MaxValue, limit);
            if (error is null)
                throw new ReproductionFailedException($"{faultyName} ran {calls:N0} times in {elapsed.TotalSeconds:F0} s under garbage pressure without TorchSharp's error: " +
                    "if TorchSharp now keeps its scalars alive (check its release notes), update docs/KNOWN-ISSUES.md, the README's summary and GcSafeSgd.");
            Console.WriteLine($"REPRODUCED: {faultyName} failed after {calls:N0} calls ({elapsed.TotalSeconds:F2} s, {pressure.Collections} collections): " +
                $"{error.GetType().Name}: {error.Message.Split('\n')[0]}\n  where: {Where(error)}");
            Check.That(error is ExternalException && error.Message.Contains(RaisedFrom, StringComparison.Ordinal), $"an unexpected error: {error}");

            long controlCalls = Math.Max(calls, 200_000);
            var (safeCalls, safeElapsed, safeError) = RunUntilError(safe, controlCalls, TimeSpan.FromSeconds(20));
            Check.That(safeError is null, $"{safeName} failed too, after {safeCalls:N0} calls: {safeError}");
            Console.WriteLine($"CONTROL: {safeName} ran {safeCalls:N0} calls ({safeElapsed.TotalSeconds:F1} s, {pressure.Collections} collections in all) without an error");
        }
    }

    /// <summary>The TorchSharp frames of the error's stack, innermost first: where the freed scalar was read.</summary>
    private static string Where(Exception error) => string.Join(" <- ", (error.StackTrace ?? "")
        .Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
        .Where(frame => frame.StartsWith("at TorchSharp.", StringComparison.Ordinal))
        .Select(frame => frame[3..].Split(" in ")[0])
        .Take(4));

    private static (long Calls, TimeSpan Elapsed, Exception? Error) RunUntilError(Action call, long maxCalls, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        long calls = 0;
        try
        {
            using var noGrad = torch.no_grad();
            while (calls < maxCalls && ((calls & 255) != 0 || clock.Elapsed < limit))
            {
                using (torch.enable_grad()) call();
                calls++;
            }
        }
        catch (Exception ex)
        {
            return (calls, clock.Elapsed, ex);
        }

        return (calls, clock.Elapsed, null);
    }
}

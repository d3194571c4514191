using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Capture;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Curvature;

/// <summary>
/// The curvature of a fixed-point window (<see cref="FixedPointOptions.Curvature"/>): the top Hessian eigenvalue of the
/// pooled loss and of each minibatch's (contrastive curvature), the Hutchinson trace, and the top eigenvalue of
/// <c>D Hbar D</c> in the invariant geometries, with D from the window's <see cref="Whitening"/>. Every power iteration
/// starts from the previous window's top eigenvector (<see cref="FixedPointOptions.WarmStart"/>). Each estimate says
/// whether it converged: the snapshot carries <c>curvature.lambda_max.converged</c> and <c>.residual</c> per geometry
/// and <c>curvature.trace.converged</c>, and an estimate that did not converge is logged. The Hessian is taken over
/// the watched parameters that still require a gradient at the window (a parameter frozen since attach is a constant
/// of the loss); a parameter the loss does not use contributes a zero block, so the estimates equal those of the
/// model without it.
/// </summary>
internal sealed class CurvatureWindow(
    FixedPointOptions options, ILogger logger, string runId, Parameter[] parameters, GradientWindow buffer, Whitening whitening,
    Generator generator, Func<(Tensor Input, Tensor Target), Tensor> lossAt) : IDisposable
{
    private Tensor[]? _eigenvector;

    /// <summary>The warm start: the last window's top eigenvector of the pooled Hessian, or null before the first.</summary>
    public Tensor[]? Eigenvector => _eigenvector;

    /// <summary>Sets the warm start (a restored state).</summary>
    public void LoadEigenvector(Tensor[] eigenvector)
    {
        using var noGrad = torch.no_grad();
        _eigenvector ??= parameters.Select(p => torch.zeros_like(p).DetachFromDisposeScope()).ToArray();
        for (int i = 0; i < eigenvector.Length; i++) _eigenvector[i].copy_(eigenvector[i]);
    }

    /// <summary>Estimates and reports the window's curvature; <paramref name="run"/> numbers the random streams.</summary>
    public void Estimate(ProbeWindowContext window, List<(Tensor Input, Tensor Target)> batches, int run)
    {
        var power = new PowerIterationOptions { MaxIterations = options.PowerIterations, Tolerance = options.PowerTolerance };
        var trace = new HutchinsonOptions { MaxSamples = options.TraceSamples, MinSamples = Math.Min(10, options.TraceSamples), RelativeTolerance = options.TraceTolerance };
        using var grad = torch.enable_grad();

        // Each estimate draws its random vectors from its own stream (the probe's seed and the estimate's index), so
        // that how many draws one estimate needed (data dependent) never changes what the next one draws.
        int stream = 0;
        Generator Stream() => generator.manual_seed((long)(options.Seed + (ulong)(run * 64 + stream++)));

        // Warm start: every power iteration starts from the previous window's top eigenvector of the pooled Hessian
        // (zero before the first window, which starts from a random vector); when theta moved little it is nearly
        // converged already.
        if (options.WarmStart) _eigenvector ??= parameters.Select(p => torch.zeros_like(p).DetachFromDisposeScope()).ToArray();

        // Only the watched parameters that still require a gradient (one frozen after attach is a constant of the
        // loss): the Hessian is taken over them, and every parameter-shaped vector is narrowed to them.
        var trainable = WatchedGradients.Trainable(parameters, "FixedPointProbe curvature");
        bool all = trainable.Length == parameters.Length;
        Tensor[] watched = all ? parameters : trainable.Select(i => (Tensor)parameters[i]).ToArray();
        Tensor[]? Narrow(Tensor[]? full) => full is null || all ? full : trainable.Select(i => full[i]).ToArray();
        var eigenvector = Narrow(_eigenvector);
        if (!all && _eigenvector is not null)
            using (torch.no_grad())
                for (int i = 0; i < parameters.Length; i++)
                    if (!trainable.Contains(i)) _eigenvector[i].zero_();   // a frozen block is no part of this window's eigenvector

        // Per minibatch: lambda_max(H_i), largest algebraic.
        double sumLambda = 0;
        int unconverged = 0;
        foreach (var batch in batches)
        {
            using var scope = torch.NewDisposeScope();
            using var op = new HessianOperator(lossAt(batch), watched);
            var estimate = CurvatureEstimators.TopEigenvalues(op, power, Stream(), start: eigenvector).LargestAlgebraic;
            sumLambda += estimate.Eigenvalue;
            if (!estimate.Converged) unconverged++;
        }

        if (unconverged > 0)
            logger.LogWarning(
                "TrainingProbes run {RunId}: {Count} of {Minibatches} minibatch Hessian eigenvalues did not converge in {Iterations} power iterations; curvature.contrastive uses them as they are. Raise FixedPointOptions.PowerIterations.",
                runId, unconverged, batches.Count, options.PowerIterations);

        using var pooledScope = torch.NewDisposeScope();
        var pooled = torch.stack(batches.Select(lossAt).Select(l => l.reshape([])).ToArray()).mean();
        using var pooledOperator = new HessianOperator(pooled, watched);
        var top = CurvatureEstimators.TopEigenvalues(pooledOperator, power, Stream(), start: eigenvector, final: eigenvector);
        var hutchinson = CurvatureEstimators.Hutchinson(pooledOperator, trace, Stream());
        ReportEigenvalue(window, top.LargestAlgebraic, Geometry.Euclidean);
        window.Report(Indicators.CurvatureLambdaMaxMagnitude, top.LargestMagnitude.Eigenvalue, Geometry.Euclidean);
        window.Report(Indicators.CurvatureContrastive, sumLambda / batches.Count / top.LargestAlgebraic.Eigenvalue, Geometry.Euclidean);
        window.Report(Indicators.CurvatureTrace, hutchinson.Trace, Geometry.Euclidean);
        window.Report(Indicators.CurvatureTraceHalfWidth, hutchinson.HalfWidth, Geometry.Euclidean);
        window.Report(Indicators.CurvatureTraceConverged, hutchinson.Converged ? 1 : 0, Geometry.Euclidean);
        if (!hutchinson.Converged)
            logger.LogWarning(
                "TrainingProbes run {RunId}: the Hessian trace {Trace} did not reach its tolerance in {Samples} samples (95% half-width {HalfWidth}); raise FixedPointOptions.TraceSamples.",
                runId, hutchinson.Trace, hutchinson.Samples, hutchinson.HalfWidth);

        // Invariant curvature: the top eigenvalue of D Hbar D.
        foreach (var geometry in new[] { Geometry.Fisher, Geometry.Adaptive })
        {
            if (!options.Geometries.HasFlag(geometry)) continue;
            var scaling = new Tensor[parameters.Length];
            for (int s = 0; s < buffer.Segments.Count; s++)
            {
                var d = whitening.Segment(geometry, s)!;
                for (int p = 0; p < buffer.Parameters.Count; p++)
                {
                    var parameter = buffer.Parameters[p];
                    if (parameter.Segment == s)
                        scaling[p] = d.narrow(0, parameter.Offset, parameter.Count).view(parameter.Shape).to(parameter.Parameter.dtype);
                }
            }

            using var scaled = new HessianOperator(pooled, watched, Narrow(scaling));
            ReportEigenvalue(window, CurvatureEstimators.TopEigenvalues(scaled, power, Stream()).LargestAlgebraic, geometry);
        }
    }

    /// <summary>Reports a top eigenvalue with its iterations, convergence and residual; logs it when it did not converge.</summary>
    private void ReportEigenvalue(ProbeWindowContext window, PowerIterationResult estimate, Geometry geometry)
    {
        window.Report(Indicators.CurvatureLambdaMax, estimate.Eigenvalue, geometry);
        window.Report(Indicators.CurvatureIterations, estimate.Iterations, geometry);
        window.Report(Indicators.CurvatureConverged, estimate.Converged ? 1 : 0, geometry);
        window.Report(Indicators.CurvatureResidual, estimate.Residual, geometry);
        if (!estimate.Converged)
            logger.LogWarning(
                "TrainingProbes run {RunId}: the top eigenvalue {Eigenvalue} ({Geometry}) did not converge in {Iterations} power iterations (relative residual {Residual}); raise FixedPointOptions.PowerIterations or PowerTolerance.",
                runId, estimate.Eigenvalue, geometry.ToName(), estimate.Iterations, estimate.Residual);
    }

    public void Dispose()
    {
        if (_eigenvector is not null) foreach (var t in _eigenvector) t.Dispose();
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Curvature;

/// <summary>Options of <see cref="CurvatureEstimators.Hutchinson"/>.</summary>
internal sealed record HutchinsonOptions
{
    /// <summary>Samples always drawn before the stopping rule is looked at (at least 2).</summary>
    public int MinSamples { get; init; } = 10;

    /// <summary>Samples at most.</summary>
    public int MaxSamples { get; init; } = 100;

    /// <summary>Stop when the confidence half-width is at most this fraction of |trace estimate|.</summary>
    public double RelativeTolerance { get; init; } = 1e-2;

    /// <summary>Stop when the confidence half-width is at most this (covers a trace near zero).</summary>
    public double AbsoluteTolerance { get; init; }

    /// <summary>Normal quantile of the confidence interval (1.96: 95 %).</summary>
    public double Z { get; init; } = 1.96;

    /// <summary>Throws <see cref="ArgumentException"/> when an option is out of range.</summary>
    public void Validate()
    {
        if (MinSamples < 2)
        {
            throw new ArgumentException($"MinSamples must be at least 2 (a standard deviation needs two samples), not {MinSamples}.");
        }

        if (MaxSamples < MinSamples)
        {
            throw new ArgumentException($"MaxSamples ({MaxSamples}) must be at least MinSamples ({MinSamples}).");
        }

        if (!(RelativeTolerance >= 0) || double.IsInfinity(RelativeTolerance))
        {
            throw new ArgumentException($"RelativeTolerance must be finite and non-negative, not {RelativeTolerance}.");
        }

        if (!(AbsoluteTolerance >= 0) || double.IsInfinity(AbsoluteTolerance))
        {
            throw new ArgumentException($"AbsoluteTolerance must be finite and non-negative, not {AbsoluteTolerance}.");
        }

        if (!(Z > 0) || double.IsInfinity(Z))
        {
            throw new ArgumentException($"Z must be finite and positive, not {Z}.");
        }
    }
}

/// <summary>Options of <see cref="CurvatureEstimators.PowerIteration"/> and <see cref="CurvatureEstimators.TopEigenvalues"/>.</summary>
internal sealed record PowerIterationOptions
{
    /// <summary>Iterations (operator applications) at most.</summary>
    public int MaxIterations { get; init; } = 100;

    /// <summary>Stop when the relative change of the eigenvalue estimate between iterations is below this (PyHessian: 1e-3).</summary>
    public double Tolerance { get; init; } = 1e-3;

    /// <summary>Throws <see cref="ArgumentException"/> when an option is out of range.</summary>
    public void Validate()
    {
        if (MaxIterations < 1)
        {
            throw new ArgumentException($"MaxIterations must be at least 1, not {MaxIterations}.");
        }

        if (!(Tolerance >= 0) || double.IsInfinity(Tolerance))
        {
            throw new ArgumentException($"Tolerance must be finite and non-negative, not {Tolerance}.");
        }
    }
}

/// <summary>A Hutchinson trace estimate.</summary>
/// <param name="Trace">Mean of the probe values <c>z^T A z</c>.</param>
/// <param name="StandardError">Sample standard deviation over sqrt(samples).</param>
/// <param name="HalfWidth">Confidence half-width, <c>Z * StandardError</c>.</param>
/// <param name="Samples">Probes drawn (operator applications).</param>
/// <param name="Converged">True when the tolerance was met; false when stopped at MaxSamples or by a non-finite value.</param>
internal sealed record HutchinsonResult(double Trace, double StandardError, double HalfWidth, int Samples, bool Converged);

/// <summary>A power-iteration eigenvalue estimate.</summary>
/// <param name="Eigenvalue">The eigenvalue estimate of the operator itself (the shift added back).</param>
/// <param name="Iterations">Iterations done (operator applications).</param>
/// <param name="Converged">True when the relative change fell below the tolerance.</param>
/// <param name="Residual"><c>||A v - lambda v|| / |lambda|</c> at the final unit vector v (absolute when lambda is 0).</param>
internal sealed record PowerIterationResult(double Eigenvalue, int Iterations, bool Converged, double Residual);

/// <summary>The two top eigenvalues of a symmetric operator.</summary>
/// <param name="LargestMagnitude">The eigenvalue of largest absolute value (with its sign).</param>
/// <param name="LargestAlgebraic">The largest eigenvalue (the same result when the former is non-negative).</param>
internal sealed record TopEigenvaluesResult(PowerIterationResult LargestMagnitude, PowerIterationResult LargestAlgebraic);

/// <summary>
/// Stochastic trace and eigenvalue estimators over a <see cref="HessianOperator"/>. Random vectors come only from the
/// given generator (on the parameters' device): the global generator is never touched, so training stays
/// bit-identical. They are drawn only on the blocks where the Hessian may be non-zero
/// (<see cref="HessianOperator.DrawnBlocks"/>): a parameter the loss does not use changes no estimate. One scalar
/// crosses to the host per operator application.
/// </summary>
internal static class CurvatureEstimators
{
    /// <summary>
    /// Hutchinson's trace estimator with Rademacher probes: mean of <c>z^T A z</c>, stopping once at least
    /// <see cref="HutchinsonOptions.MinSamples"/> were drawn and the confidence half-width is at most
    /// <c>max(RelativeTolerance * |mean|, AbsoluteTolerance)</c>, or at <see cref="HutchinsonOptions.MaxSamples"/>.
    /// </summary>
    public static HutchinsonResult Hutchinson(HessianOperator op, HutchinsonOptions options, Generator generator)
    {
        ArgumentNullException.ThrowIfNull(op);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        CheckGenerator(op, generator);

        double mean = 0, m2 = 0, standardError = double.NaN, halfWidth = double.NaN;
        int n = 0;
        bool converged = false;
        while (n < options.MaxSamples)
        {
            double sample;
            using (var scope = torch.NewDisposeScope())
            {
                var z = TensorListAlgebra.Rademacher(op.Parameters, generator, op.DrawnBlocks);
                var az = op.Apply(z);
                sample = TensorListAlgebra.ToHost(TensorListAlgebra.Dot(z, az))[0];
            }

            n++;
            double delta = sample - mean;
            mean += delta / n;
            m2 += delta * (sample - mean);
            if (!double.IsFinite(sample))
            {
                break;
            }

            if (n >= 2)
            {
                standardError = Math.Sqrt(Math.Max(m2, 0) / (n - 1) / n);
                halfWidth = options.Z * standardError;
            }

            if (n >= options.MinSamples && halfWidth <= Math.Max(options.RelativeTolerance * Math.Abs(mean), options.AbsoluteTolerance))
            {
                converged = true;
                break;
            }
        }

        return new HutchinsonResult(mean, standardError, halfWidth, n, converged);
    }

    /// <summary>
    /// Power iteration on <c>A - shift I</c> from a random Gaussian start: the eigenvalue of largest magnitude of the
    /// shifted operator by the Rayleigh quotient <c>v . (A - shift I) v</c> of the unit iterate, stopping when its
    /// relative change is below <see cref="PowerIterationOptions.Tolerance"/> or at
    /// <see cref="PowerIterationOptions.MaxIterations"/>. Returns the eigenvalue of <c>A</c> (shift added back).
    /// </summary>
    /// <param name="op">The operator.</param>
    /// <param name="options">Iterations and tolerance.</param>
    /// <param name="generator">Draws the random start when there is no <paramref name="start"/>.</param>
    /// <param name="shift">Shift subtracted from the operator.</param>
    /// <param name="start">A start vector shaped like the parameters (for example the previous window's eigenvector: a
    /// warm start needs few iterations when theta moved little); null or zero starts from a random Gaussian vector.</param>
    /// <param name="final">Receives the final unit iterate when given (tensors shaped like the parameters).</param>
    public static PowerIterationResult PowerIteration(HessianOperator op, PowerIterationOptions options, Generator generator, double shift = 0,
        IReadOnlyList<Tensor>? start = null, IReadOnlyList<Tensor>? final = null)
    {
        ArgumentNullException.ThrowIfNull(op);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        CheckGenerator(op, generator);
        if (!double.IsFinite(shift))
        {
            throw new ArgumentException($"The shift must be finite, not {shift}.", nameof(shift));
        }

        Tensor[]? v = null;
        try
        {
            using (var scope = torch.NewDisposeScope())
            {
                Tensor[] first;
                Tensor norm;
                if (start is not null && TensorListAlgebra.ToHost(TensorListAlgebra.Norm(start))[0] is > 0 and < double.PositiveInfinity)
                {
                    first = start.Select(t => t.detach().clone()).ToArray();
                    norm = TensorListAlgebra.Norm(first);
                }
                else
                {
                    first = TensorListAlgebra.Gaussian(op.Parameters, generator, op.DrawnBlocks);
                    norm = TensorListAlgebra.Norm(first);
                }

                TensorListAlgebra.Divide(first, norm);
                v = TensorListAlgebra.DetachFromScope(first);
            }

            double previous = double.NaN, estimate = double.NaN, residual = double.NaN;
            bool converged = false;
            int iterations = 0;
            while (iterations < options.MaxIterations)
            {
                iterations++;
                using var scope = torch.NewDisposeScope();
                var w = op.Apply(v);
                if (shift != 0)
                {
                    TensorListAlgebra.Axpy(-shift, v, w);
                }

                var mu = TensorListAlgebra.Dot(v, w);
                var normW = TensorListAlgebra.Norm(w);
                var r = w.Select(t => t.clone()).ToArray();
                TensorListAlgebra.Axpy(mu.neg(), v, r);
                var host = TensorListAlgebra.ToHost(mu, normW, TensorListAlgebra.Norm(r));
                estimate = host[0];
                double lambda = estimate + shift;
                residual = lambda != 0 ? host[2] / Math.Abs(lambda) : host[2];
                if (!double.IsFinite(estimate) || !double.IsFinite(host[1]))
                {
                    break;
                }

                if (host[1] == 0)
                {
                    // (A - shift I) v = 0 exactly: v is an eigenvector of eigenvalue 0 of the shifted operator (the
                    // operator is zero, or the start fell in its null space).
                    converged = true;
                    break;
                }

                converged = iterations > 1 && Math.Abs(estimate - previous) <= options.Tolerance * Math.Abs(estimate);
                previous = estimate;
                TensorListAlgebra.Divide(w, normW);
                var next = TensorListAlgebra.DetachFromScope(w);
                TensorListAlgebra.DisposeAll(v);
                v = next;
                if (converged)
                {
                    break;
                }
            }

            if (final is not null)
                using (torch.no_grad())
                    for (int i = 0; i < final.Count; i++) final[i].copy_(v[i]);
            return new PowerIterationResult(estimate + shift, iterations, converged, residual);
        }
        finally
        {
            TensorListAlgebra.DisposeAll(v);
        }
    }

    /// <summary>
    /// The eigenvalue of largest magnitude (power iteration) and the largest algebraic one: the former when it is
    /// non-negative, otherwise the top eigenvalue of <c>A - lambda_m I</c> (all of whose eigenvalues are
    /// non-negative) plus <c>lambda_m</c>.
    /// </summary>
    public static TopEigenvaluesResult TopEigenvalues(HessianOperator op, PowerIterationOptions options, Generator generator,
        IReadOnlyList<Tensor>? start = null, IReadOnlyList<Tensor>? final = null)
    {
        var magnitude = PowerIteration(op, options, generator, start: start, final: final);
        if (!double.IsFinite(magnitude.Eigenvalue) || magnitude.Eigenvalue >= 0)
        {
            return new TopEigenvaluesResult(magnitude, magnitude);
        }

        var algebraic = PowerIteration(op, options, generator, shift: magnitude.Eigenvalue);
        return new TopEigenvaluesResult(magnitude, algebraic);
    }

    private static void CheckGenerator(HessianOperator op, Generator generator)
    {
        ArgumentNullException.ThrowIfNull(generator);
        if (generator.device.type != op.Device.type)
        {
            throw new ArgumentException($"The generator is on {generator.device} but the parameters are on {op.Device}: use a generator on the parameters' device.", nameof(generator));
        }
    }
}

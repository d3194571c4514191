using TorchSharp;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// Smoothed values and spreads hold windows for at most <see cref="ProbeOptions.SmoothingSteps"/> steps: a window that
/// many steps or more before the latest leaves the mean, the pooled moments and the spread, even for a series the latest
/// window left undefined, so a smoothed value never describes a part of the run long past.
/// </summary>
public sealed class SmoothingSpanTests
{
    [Fact]
    public void The_smoother_leaves_out_windows_a_span_or_more_before_the_latest()
    {
        var smoother = new WindowSmoother(series: 1, windows: 8, span: 100);
        smoother.Add(0, 10, 0.5, step: 0);
        smoother.Add(0, 1, 0.1, step: 50);
        smoother.Add(0, 2, 0.2, step: 120);
        var (mean, error) = smoother.Add(0, 3, 0.2, step: 130);   // step 0 is 130 steps back: out
        Assert.Equal(2.0, mean, 12);
        Assert.Equal(Math.Sqrt(0.01 + 0.04 + 0.04) / 3, error, 12);
        Assert.Equal(Math.Sqrt((1.0 + 1.0) / (2 * 2)), smoother.Spread(0), 12);

        // A later window that leaves the series undefined still moves the span: nothing recent, nothing shown.
        var (stale, staleError) = smoother.Add(0, double.NaN, double.NaN, step: 300);
        Assert.True(double.IsNaN(stale) && double.IsNaN(staleError));
        Assert.True(double.IsNaN(smoother.Spread(0)));
    }

    [Fact]
    public void The_moment_pool_pools_and_leaves_out_only_windows_within_the_span()
    {
        var pool = new MomentPool(series: 1, windows: 4, span: 100);
        pool.Add(0, d: 9, s: 9, step: 0);
        pool.Add(0, d: 1, s: 0.1, step: 60);
        pool.Add(0, d: 3, s: 0.3, step: 110);
        Assert.Equal(2, pool.Count(0));                            // step 0 is out
        var (d, s) = pool.Pooled(0);
        Assert.Equal(2.0, d, 12);
        Assert.Equal(0.2, s, 12);
        Assert.Equal((3.0, 0.3), pool.Pooled(0, leftOut: 0));      // leaves out the first window in the span (step 60)
        Assert.Equal((1.0, 0.1), pool.Pooled(0, leftOut: 1));

        pool.Add(0, d: double.NaN, s: double.NaN, step: 500);     // undefined, but it is the latest window
        Assert.Equal(0, pool.Count(0));
        Assert.True(double.IsNaN(pool.Pooled(0).D));
    }

    [Fact]
    public void A_sessions_smoothed_values_describe_the_windows_of_the_last_SmoothingSteps_steps()
    {
        var history = SmallRun.History(seed: 5, learningRate: 0.05, steps: 2_000, loss => new ProbeOptions
        {
            Interval = 300, OverheadBudget = null, Output = null, Loss = loss, SmoothingSteps = 1000, Geometries = Geometry.Euclidean,
        });
        var last = history[^1];
        var recent = history.Where(w => last.Step - w.Step < 1000).ToList();
        Assert.InRange(recent.Count, 2, history.Count - 2);            // the span leaves out some windows, not all

        // Coherence is smoothed as a mean of the windows' values; the cosine from the windows' pooled moments.
        double expected = recent.Average(w => w.Get(Indicators.Coherence, Geometry.Euclidean));
        Assert.Equal(expected, last.Get(Indicators.Coherence + Indicators.SmoothedSuffix, Geometry.Euclidean), 12);
        double all = history.TakeLast(32).Average(w => w.Get(Indicators.Coherence, Geometry.Euclidean));
        Assert.NotEqual(all, last.Get(Indicators.Coherence + Indicators.SmoothedSuffix, Geometry.Euclidean), 6);

        // The pooled cosine, s / (s + t_b) over the recent windows' mean moments: each window publishes its norm
        // sqrt(s + t_b) and its noise t_b, so s and s + t_b come back from them.
        double a2Mean = recent.Average(w => Math.Pow(w.Get(Indicators.GradientNorm, Geometry.Euclidean), 2));
        double sMean = a2Mean - recent.Average(w => w.Get(Indicators.GradientNoise, Geometry.Euclidean));
        Assert.Equal(sMean / a2Mean, last.Get(Indicators.Cosine + Indicators.SmoothedSuffix, Geometry.Euclidean), 9);
    }
}

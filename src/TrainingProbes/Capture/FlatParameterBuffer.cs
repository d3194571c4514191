using TorchSharp;
using static TorchSharp.torch;

namespace TrainingProbes.Capture;

/// <summary>
/// Parameter-shaped state laid out like the window's segments (one flat [Count] tensor per segment),
/// allocated once and owned by whoever created it.
/// </summary>
internal sealed class FlatParameterBuffer : IDisposable
{
    private readonly ParameterLayout _window;
    private readonly Tensor[] _views;

    public FlatParameterBuffer(ParameterLayout window, ScalarType? minimum)
    {
        _window = window;
        using var scope = torch.NewDisposeScope();
        Segments = window.Segments
            .Select(s => torch.zeros(s.Count, dtype: Widen(s.DType, minimum), device: s.Device).DetachFromDisposeScope())
            .ToArray();
        _views = window.Parameters
            .Select(p => Segments[p.Segment].narrow(0, p.Offset, p.Count).view(p.Shape).DetachFromDisposeScope())
            .ToArray();
    }

    private static ScalarType Widen(ScalarType type, ScalarType? minimum) =>
        minimum is ScalarType.Float32 && type is not (ScalarType.Float32 or ScalarType.Float64) ? ScalarType.Float32
        : minimum is ScalarType.Float64 ? ScalarType.Float64
        : type;

    /// <summary>One flat tensor per segment of the window.</summary>
    public Tensor[] Segments { get; }

    /// <summary>Copies the current values of the watched parameters into the buffer (no host transfer).</summary>
    public void LoadParameters()
    {
        var parameters = _window.Parameters;
        for (int i = 0; i < parameters.Count; i++)
            _views[i].copy_(parameters[i].Parameter);
    }

    /// <summary>Copies the buffer back into the watched parameters, exactly (no gradient is recorded).</summary>
    public void StoreToParameters()
    {
        using var noGrad = torch.no_grad();
        var parameters = _window.Parameters;
        for (int i = 0; i < parameters.Count; i++)
            parameters[i].Parameter.copy_(_views[i]);
    }

    /// <summary>
    /// Exchanges the buffer's values with the watched parameters', exactly, through a work space of at most
    /// <see cref="SwapChunk"/> elements: one copy of theta is enough to visit another theta and come back.
    /// </summary>
    public void SwapWithParameters()
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var parameters = _window.Parameters;
        // Every work space first (one per segment: its parameters share a device and a dtype), so that nothing is
        // exchanged when one cannot be allocated.
        var segments = _window.Segments;
        var work = new Tensor[segments.Count];
        for (int s = 0; s < work.Length; s++)
            work[s] = torch.empty(Math.Min(SwapChunk, parameters.Where(p => p.Segment == s).Max(p => p.Count)), segments[s].DType, segments[s].Device);

        int done = 0;
        long reached = 0;   // elements of parameter `done` exchanged so far
        try
        {
            for (; done < parameters.Count; done++)
            {
                reached = 0;
                Swap(done, work, long.MaxValue, ref reached);
            }
        }
        catch
        {
            // Exchange back exactly what was exchanged, then report the failure.
            long ignored = 0;
            for (int i = 0; i < done; i++) Swap(i, work, long.MaxValue, ref ignored);
            if (done < parameters.Count) Swap(done, work, reached, ref ignored);
            throw;
        }
    }

    /// <summary>Exchanges the first <paramref name="limit"/> elements of parameter <paramref name="index"/> with the buffer, counting them in <paramref name="reached"/>.</summary>
    private void Swap(int index, Tensor[] work, long limit, ref long reached)
    {
        var parameter = _window.Parameters[index].Parameter;
        if (!parameter.is_contiguous())
        {
            if (limit < parameter.numel()) return;   // exchanged whole or not at all
            var saved = parameter.detach().clone();
            parameter.copy_(_views[index]);
            _views[index].copy_(saved);
            reached = parameter.numel();
            return;
        }

        var mine = _views[index].view(-1);
        var theirs = parameter.detach().view(-1);
        long n = Math.Min(theirs.numel(), limit);
        var space = work[_window.Parameters[index].Segment];
        for (long offset = 0; offset < n; offset += SwapChunk)
        {
            long length = Math.Min(SwapChunk, n - offset);
            var a = theirs.narrow(0, offset, length);
            var b = mine.narrow(0, offset, length);
            var t = space.narrow(0, 0, length).copy_(a);
            a.copy_(b);
            b.copy_(t);
            reached = offset + length;
        }
    }

    /// <summary>Elements per step of <see cref="SwapWithParameters"/>.</summary>
    public const long SwapChunk = 1 << 20;

    /// <summary>The view of parameter <paramref name="index"/> (in the window's order) in this buffer.</summary>
    public Tensor View(int index) => _views[index];

    public void Dispose()
    {
        foreach (var view in _views) view.Dispose();
        foreach (var segment in Segments) segment.Dispose();
    }
}

using Microsoft.Extensions.Logging;
using TorchSharp;
using TrainingProbes.Capture;
using static TorchSharp.torch;

namespace TrainingProbes.Session;

/// <summary>
/// The session's window data, one copy of each: the watched parameters' layout, the window's parameters (theta, copied
/// when a window closes: the adaptive geometry and the drift read it), the micro-batch gradients of the closing step
/// (the default indicators), and, only with <see cref="ProbeOptions.StepStatistics"/>, the ring of the trainer's K step
/// gradients. Probes read these; none allocates gradients of its own.
/// </summary>
internal sealed class SessionWindows : IStatefulPart, IDisposable
{
    /// <summary>The share of the device's available memory a window's K x P buffer may take before the session sketches it.</summary>
    public const double MemoryShare = 0.25;

    private readonly ProbeOptions _options;
    private readonly ILogger _logger;
    private readonly TextWriter? _output;
    private WindowStorage? _storage;

    public SessionWindows(nn.Module model, ProbeOptions options, ILogger logger)
    {
        _options = options;
        _logger = logger;
        _output = options.Output;
        Layout = new ParameterLayout(model, options.ParameterFilter);
        try
        {
            Theta = Layout.CreateFlatBuffer();
            MicroBatches = new MicroBatchWindow(Layout, model, options.WindowSize, () => GradientWindow.For(Layout, WithStorage(), options.WindowSize));
            if (options.StepStatistics) Steps = GradientWindow.For(Layout, WithStorage(), options.WindowSize);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public ParameterLayout Layout { get; }

    /// <summary>The parameters as of the last window's close (zeros before the first).</summary>
    public FlatParameterBuffer Theta { get; } = null!;

    /// <summary>Whether <see cref="Theta"/> holds a window's parameters yet.</summary>
    public bool ThetaLoaded { get; private set; }

    /// <summary>The K micro-batch gradients of the closing step's batch, at its parameters.</summary>
    public MicroBatchWindow MicroBatches { get; } = null!;

    /// <summary>The trainer's K step gradients (with <see cref="ProbeOptions.StepStatistics"/>), or null.</summary>
    public GradientWindow? Steps { get; }

    /// <summary>Steps per window: K with the step ring, else the closing step alone.</summary>
    public int Length => Steps is null ? 1 : _options.WindowSize;

    /// <summary>Copies the parameters as the window's theta.</summary>
    public void LoadTheta()
    {
        using var noGrad = torch.no_grad();
        Theta.LoadParameters();
        ThetaLoaded = true;
    }

    /// <summary>
    /// The options with the storage the K x P buffers use: <see cref="ProbeOptions.Storage"/>, or sketches when a full
    /// buffer would take more than <see cref="MemoryShare"/> of the memory available on its device (said once).
    /// </summary>
    private ProbeOptions WithStorage()
    {
        _storage ??= ChooseStorage();
        return _storage == _options.Storage ? _options : _options.With(_storage.Value);
    }

    private WindowStorage ChooseStorage()
    {
        if (_options.Storage != WindowStorage.Full) return _options.Storage;
        foreach (var segment in Layout.Segments)
        {
            long bytes = _options.WindowSize * segment.Count * segment.DType.ElementSize();
            if (DeviceMemory.Available(segment.Device) is not { } available || bytes <= MemoryShare * available) continue;
            string message = string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"[probes] A window of K = {_options.WindowSize} gradients of {segment.Count:N0} parameters would take {bytes / 1048576.0:N0} MiB, more than " +
                $"{MemoryShare:P0} of the {available / 1048576.0:N0} MiB available on {segment.Device}: the session keeps CountSketches of them instead " +
                $"(Storage = Sketch, {_options.SketchDimension:N0} numbers each). Set ProbeOptions.Storage to choose.");
            _output?.WriteLine(message);
            _logger.LogWarning("{Message}", message);
            return WindowStorage.Sketch;
        }

        return WindowStorage.Full;
    }

    public string StateKey => "windows";

    /// <summary>Saves the last window's theta, from which the next window's drift is measured.</summary>
    public void Save(SessionStateWriter state)
    {
        state.Set("theta_loaded", ThetaLoaded);
        for (int s = 0; s < Theta.Segments.Length; s++) state.SetTensor($"theta.{s}", Theta.Segments[s]);
    }

    public Action Prepare(SessionStateReader state)
    {
        bool loaded = state.Get<bool>("theta_loaded");
        var saved = Theta.Segments.Select((t, s) => state.GetTensor($"theta.{s}", t.shape, t.dtype)).ToArray();
        return () =>
        {
            using (torch.no_grad())
                for (int s = 0; s < saved.Length; s++) Theta.Segments[s].copy_(saved[s]);
            ThetaLoaded = loaded;
        };
    }

    public void Dispose()
    {
        MicroBatches?.Dispose();
        Steps?.Dispose();
        Theta?.Dispose();
    }
}

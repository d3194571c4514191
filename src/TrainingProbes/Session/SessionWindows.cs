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
    private readonly Func<Device, long?> _available;
    private WindowStorage? _storage;

    /// <param name="model">The model.</param>
    /// <param name="options">The session's options.</param>
    /// <param name="logger">Where the storage choice is logged.</param>
    /// <param name="available">The memory available on a device (<see cref="DeviceMemory.Available"/>; tests pass their own).</param>
    public SessionWindows(nn.Module model, ProbeOptions options, ILogger logger, Func<Device, long?>? available = null)
    {
        _options = options;
        _available = available ?? DeviceMemory.Available;
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
    /// The storage of the K x P buffers (the step ring, and the micro-batch passes when the taps cannot serve):
    /// <see cref="ProbeOptions.Storage"/>, or sketches when a full buffer would take more than <see cref="MemoryShare"/>
    /// of the memory available on its device (said once, when first chosen).
    /// </summary>
    public WindowStorage BufferStorage => _storage ??= ChooseStorage();

    private ProbeOptions WithStorage() => BufferStorage == _options.Storage ? _options : _options.With(BufferStorage);

    private WindowStorage ChooseStorage()
    {
        if (_options.Storage != WindowStorage.Full) return _options.Storage;
        foreach (var segment in Layout.Segments)
        {
            long bytes = _options.WindowSize * segment.Count * segment.DType.ElementSize();
            if (_available(segment.Device) is not { } available || bytes <= MemoryShare * available) continue;
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

using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TrainingProbes.Session;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Session;

/// <summary>
/// The storage of the K x P buffers: the one asked for, except that a full buffer larger than a quarter of the memory
/// available on its device becomes CountSketches, said once to the console.
/// </summary>
public sealed class WindowStorageChoiceTests
{
    private static nn.Module<Tensor, Tensor> Model()
    {
        torch.manual_seed(3);
        return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4));   // 754 parameters
    }

    private static (WindowStorage Storage, string Said, bool StepsSketched) Choose(WindowStorage asked, long available)
    {
        var output = new StringWriter();
        var options = new ProbeOptions { WindowSize = 8, StepStatistics = true, Output = output, Storage = asked, SketchDimension = 1024 };
        using var windows = new SessionWindows(Model(), options, NullLogger.Instance, _ => available);
        // The step ring is made at construction with the chosen storage.
        return (windows.BufferStorage, output.ToString(), windows.Steps!.Sketch is not null);
    }

    [Fact]
    public void A_full_buffer_over_a_quarter_of_the_available_memory_becomes_sketches_and_says_so()
    {
        long buffer = 8L * 754 * 4;   // K x P float32
        var (storage, said, sketched) = Choose(WindowStorage.Full, available: 4 * buffer - 1);
        Assert.Equal(WindowStorage.Sketch, storage);
        Assert.True(sketched);
        Assert.Contains("CountSketches", said);
        Assert.Contains("Set ProbeOptions.Storage", said);
        Assert.Single(said.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void A_full_buffer_within_a_quarter_stays_full_and_nothing_is_said()
    {
        long buffer = 8L * 754 * 4;
        var (storage, said, sketched) = Choose(WindowStorage.Full, available: 4 * buffer);
        Assert.Equal(WindowStorage.Full, storage);
        Assert.False(sketched);
        Assert.Equal("", said);
    }

    [Fact]
    public void A_storage_the_user_chose_is_kept_whatever_the_memory()
    {
        var (storage, said, _) = Choose(WindowStorage.BFloat16, available: 1);
        Assert.Equal(WindowStorage.BFloat16, storage);
        Assert.Equal("", said);
    }
}

using TorchSharp;
using TrainingProbes.Checkpoints;
using static TorchSharp.torch;
using static TrainingProbes.Tests.Checkpoints.CheckpointTestSupport;

namespace TrainingProbes.Tests.Checkpoints;

public sealed class WeightSnapshotTests
{
    [Fact]
    public void Restore_after_training_brings_back_parameters_and_batch_norm_buffers_bit_for_bit()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        TrainSteps(model, 1, seed: 2);   // running statistics away from their initial values
        var captured = State(model);

        using var snapshot = WeightSnapshot.Capture(model, step: 7, value: 0.25);
        Assert.Equal(7, snapshot.Step);
        Assert.Equal(0.25, snapshot.Value);
        Assert.Equal(model.state_dict().Keys, snapshot.Names);
        Assert.Contains("1.running_mean", snapshot.Names);
        Assert.Contains("1.running_var", snapshot.Names);
        Assert.Contains("1.num_batches_tracked", snapshot.Names);

        TrainSteps(model, 3, seed: 3);
        var trained = State(model);
        foreach (var name in new[] { "0.weight", "2.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked" })
        {
            var before = captured.Single(e => e.Name == name).Bytes;
            var after = trained.Single(e => e.Name == name).Bytes;
            Assert.False(before.AsSpan().SequenceEqual(after), $"training did not change {name}");
        }

        var parameters = model.parameters().ToArray();
        snapshot.RestoreTo(model);

        AssertBitEqual(captured, model);
        // In place: the module keeps its Parameter objects (an optimizer's references stay valid) and their gradients.
        Assert.Equal(parameters.Length, model.parameters().Count());
        Assert.All(model.parameters().Zip(parameters), pair => Assert.Same(pair.Second, pair.First));
        Assert.All(model.parameters(), p => Assert.True(p.requires_grad));
    }

    [Fact]
    public void A_second_capture_into_the_same_snapshot_allocates_no_tensor()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        using var snapshot = WeightSnapshot.Capture(model, 1, 1.0);
        var tensors = snapshot.Tensors.ToArray();
        var handles = tensors.Select(t => t.Handle).ToArray();

        TrainSteps(model, 2, seed: 4);
        var expected = State(model);

        var statistics = DisposeScopeManager.Statistics;
        long created = statistics.CreatedInScopeCount + statistics.CreatedOutsideScopeCount;
        long live = statistics.ThreadTotalLiveCount;

        snapshot.CaptureInto(model, 2, 0.5);

        Assert.Equal(created, statistics.CreatedInScopeCount + statistics.CreatedOutsideScopeCount);
        Assert.Equal(live, statistics.ThreadTotalLiveCount);
        Assert.Equal(tensors.Length, snapshot.Tensors.Count);
        Assert.All(snapshot.Tensors.Zip(tensors), pair => Assert.Same(pair.Second, pair.First));
        Assert.Equal(handles, snapshot.Tensors.Select(t => t.Handle));
        Assert.Equal(2, snapshot.Step);
        Assert.Equal(0.5, snapshot.Value);
        for (int i = 0; i < expected.Count; i++)
            Assert.True(expected[i].Bytes.AsSpan().SequenceEqual(Bytes(snapshot.Tensors[i])), expected[i].Name);
    }

    [Fact]
    public void The_copies_are_independent_cpu_tensors_without_gradients()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        using var snapshot = WeightSnapshot.Capture(model, 0, 0);
        var state = model.state_dict();

        Assert.Equal(state.Count, snapshot.Tensors.Count);
        for (int i = 0; i < snapshot.Tensors.Count; i++)
        {
            var copy = snapshot.Tensors[i];
            var original = state[snapshot.Names[i]];
            Assert.Equal(DeviceType.CPU, copy.device_type);
            Assert.False(copy.requires_grad);
            Assert.Equal(original.dtype, copy.dtype);
            Assert.Equal(original.shape, copy.shape);
            Assert.NotEqual(original.Handle, copy.Handle);
            Assert.True(copy.is_contiguous());
        }

        // A copy, not an alias: changing the module leaves the snapshot as it was.
        var before = snapshot.Tensors.Select(Bytes).ToArray();
        using (torch.no_grad())
            foreach (var p in model.parameters()) p.add_(1.0);
        Assert.Equal(before, snapshot.Tensors.Select(Bytes).ToArray());
    }

    [Fact]
    public void A_snapshot_taken_inside_a_dispose_scope_outlives_it()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        var captured = State(model);
        WeightSnapshot snapshot;
        using (torch.NewDisposeScope())
            snapshot = WeightSnapshot.Capture(model, 3, 0.1);
        using (snapshot)
        {
            Assert.All(snapshot.Tensors, t => Assert.False(t.IsInvalid));
            TrainSteps(model, 1, seed: 5);
            using (torch.NewDisposeScope())
                snapshot.CaptureInto(model, 4, 0.2);   // reuse path inside a scope
            TrainSteps(model, 1, seed: 6);
            var second = snapshot.Tensors.Select(Bytes).ToArray();
            Assert.All(snapshot.Tensors, t => Assert.False(t.IsInvalid));
            snapshot.RestoreTo(model);
            Assert.Equal(second, State(model).Select(s => s.Bytes).ToArray());
            Assert.NotEqual(captured.Select(s => s.Bytes), second);
        }
    }

    [Fact]
    public void Restoring_into_a_different_architecture_names_the_mismatch_and_changes_nothing()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        using var snapshot = WeightSnapshot.Capture(model, 5, 0.3);

        using var wider = Mlp(ScalarType.Float32, seed: 2, hidden: 6);
        var widerBefore = State(wider);
        var shape = Assert.Throws<InvalidOperationException>(() => snapshot.RestoreTo(wider));
        Assert.Contains("0.weight", shape.Message);
        Assert.Contains("[5, 4]", shape.Message);
        Assert.Contains("[6, 4]", shape.Message);
        Assert.Contains("1.running_mean", shape.Message);
        AssertBitEqual(widerBefore, wider);

        torch.manual_seed(3);
        using var noNorm = nn.Sequential(nn.Linear(4, 5), nn.Identity(), nn.Linear(5, 3));
        var noNormBefore = State(noNorm);
        var names = Assert.Throws<InvalidOperationException>(() => snapshot.RestoreTo(noNorm));
        Assert.Contains("Not in the model", names.Message);
        Assert.DoesNotContain("Missing from", names.Message);   // the module lacks the norm's entries; it has none the snapshot lacks
        Assert.Contains("1.weight", names.Message);
        Assert.Contains("1.num_batches_tracked", names.Message);
        AssertBitEqual(noNormBefore, noNorm);
    }

    [Fact]
    public void Capturing_a_different_module_reallocates_and_follows_its_names()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        using var snapshot = WeightSnapshot.Capture(model, 1, 1);
        var first = snapshot.Tensors.ToArray();

        using var other = Mlp(ScalarType.Float64, seed: 2, hidden: 6);
        snapshot.CaptureInto(other, 2, 2);

        Assert.All(first, t => Assert.True(t.IsInvalid));   // the old copies were freed
        Assert.Equal(other.state_dict().Values.Select(t => t.dtype), snapshot.Tensors.Select(t => t.dtype));
        Assert.Contains(ScalarType.Float64, snapshot.Tensors.Select(t => t.dtype));
        Assert.Equal(other.state_dict().Keys, snapshot.Names);
        using var target = Mlp(ScalarType.Float64, seed: 9, hidden: 6);
        snapshot.RestoreTo(target);
        AssertBitEqual(State(other), target);
    }

    [Fact]
    public void A_disposed_snapshot_refuses_to_work()
    {
        using var model = Mlp(ScalarType.Float32, seed: 1);
        var snapshot = WeightSnapshot.Capture(model, 1, 1);
        var tensors = snapshot.Tensors.ToArray();
        snapshot.Dispose();
        snapshot.Dispose();   // idempotent

        Assert.All(tensors, t => Assert.True(t.IsInvalid));
        Assert.Throws<ObjectDisposedException>(() => snapshot.RestoreTo(model));
        Assert.Throws<ObjectDisposedException>(() => snapshot.CaptureInto(model, 2, 2));
        Assert.Throws<ArgumentNullException>(() => WeightSnapshot.Capture(null!, 0, 0));
    }
}

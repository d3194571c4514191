namespace TrainingProbes.Checkpoints;

/// <summary>The on-disk formats <see cref="CheckpointFile"/> writes and reads.</summary>
public enum CheckpointFormat
{
    /// <summary>A PyTorch state_dict archive (the zip format of <c>torch.save</c>): <c>.pt</c>, <c>.pth</c> or <c>.bin</c>.</summary>
    PyTorch,

    /// <summary>A safetensors file (https://github.com/huggingface/safetensors): <c>.safetensors</c>.</summary>
    Safetensors,
}

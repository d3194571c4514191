namespace TrainingProbes.Checkpoints;

/// <summary>The on-disk formats <see cref="CheckpointFile"/> writes and reads.</summary>
public enum CheckpointFormat
{
    /// <summary>
    /// A PyTorch state_dict archive (the zip format of <c>torch.save</c>): <c>torch.load(path)</c> returns a dict
    /// of tensors that <c>model.load_state_dict</c> accepts. File extensions <c>.pt</c>, <c>.pth</c> or <c>.bin</c>.
    /// </summary>
    PyTorch,

    /// <summary>
    /// A safetensors file (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a
    /// JSON header, then the raw little-endian tensor data. File extension <c>.safetensors</c>.
    /// </summary>
    Safetensors,
}

using System.IO.Compression;
using static TorchSharp.torch;

namespace TrainingProbes.Benchmarks;

/// <summary>Reads MNIST in the IDX layout (gzip-compressed, big-endian header).</summary>
internal static class Mnist
{
    public static string DefaultDirectory =>
        Environment.GetEnvironmentVariable("TRAININGPROBES_MNIST")
        ?? Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../../../shared/datasets/mnist-10k"));

    /// <summary>Images as float32 [n, 784] scaled to [0, 1], labels as int64 [n].</summary>
    public static (Tensor Images, Tensor Labels) Load(string directory)
    {
        var images = ReadIdx(Path.Combine(directory, "images-idx3-ubyte.gz"), 0x00000803, out int[] imageShape);
        var labels = ReadIdx(Path.Combine(directory, "labels-idx1-ubyte.gz"), 0x00000801, out int[] labelShape);
        if (imageShape[0] != labelShape[0])
            throw new InvalidDataException($"{imageShape[0]} images but {labelShape[0]} labels in {directory}.");
        int n = imageShape[0], pixels = imageShape[1] * imageShape[2];
        var x = tensor(images.Select(b => b / 255f).ToArray(), [n, pixels]);
        var y = tensor(labels.Select(b => (long)b).ToArray(), [n]);
        return (x, y);
    }

    private static byte[] ReadIdx(string path, int magic, out int[] shape)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"MNIST file not found: {path}. Set TRAININGPROBES_MNIST to the folder holding the IDX files.", path);
        using var stream = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var reader = new BinaryReader(stream);
        int found = ReadBigEndian(reader);
        if (found != magic) throw new InvalidDataException($"{path}: magic 0x{found:x8}, expected 0x{magic:x8}.");
        shape = new int[magic & 0xff];
        for (int i = 0; i < shape.Length; i++) shape[i] = ReadBigEndian(reader);
        int count = shape.Aggregate(1, (a, b) => a * b);
        var data = reader.ReadBytes(count);
        if (data.Length != count) throw new InvalidDataException($"{path}: expected {count} bytes of data, got {data.Length}.");
        return data;
    }

    private static int ReadBigEndian(BinaryReader reader)
    {
        var b = reader.ReadBytes(4);
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3];
    }
}

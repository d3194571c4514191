using System.IO.Compression;
using static TorchSharp.torch;

namespace TrainingProbes.Examples;

/// <summary>
/// Reads MNIST in the IDX layout (big-endian header, gzip-compressed or raw): the 10,000 digits the repository
/// ships in <c>data/mnist-10k</c> (<c>images-idx3-ubyte.gz</c>, <c>labels-idx1-ubyte.gz</c>), or a full MNIST
/// download in its own names (<c>train-images-idx3-ubyte[.gz]</c>, <c>train-labels-idx1-ubyte[.gz]</c>).
/// </summary>
internal static class Mnist
{
    /// <summary>Environment variable naming the folder that holds the IDX files.</summary>
    public const string EnvironmentVariable = "TRAININGPROBES_MNIST";

    /// <summary>The data's folder in the repository, relative to the folder that holds <c>TrainingProbes.sln</c>.</summary>
    public const string RepositoryFolder = "data/mnist-10k";

    // Names tried in order: the repository's copy, then the full MNIST training files (gzip-compressed or not).
    private static readonly string[] ImageNames = ["images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images.idx3-ubyte"];
    private static readonly string[] LabelNames = ["labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte", "train-labels.idx1-ubyte"];

    // A full MNIST download's test files (the repository's copy has none).
    private static readonly string[] TestImageNames = ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"];
    private static readonly string[] TestLabelNames = ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"];

    /// <summary>
    /// The folder named by <c>TRAININGPROBES_MNIST</c> when it is set; otherwise, for a program run from a checkout
    /// of this repository, its <c>data/mnist-10k</c> (found by walking up from the program's folder to the one that
    /// holds <c>TrainingProbes.sln</c>); failing both, <c>mnist-10k</c> in the current directory (where
    /// <see cref="Load"/> then reports the missing files and how to point at them).
    /// </summary>
    public static string DefaultDirectory
    {
        get
        {
            var configured = Environment.GetEnvironmentVariable(EnvironmentVariable);
            if (!string.IsNullOrWhiteSpace(configured)) return Path.GetFullPath(configured);
            for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
                if (File.Exists(Path.Combine(folder.FullName, "TrainingProbes.sln")))
                    return Path.GetFullPath(Path.Combine(folder.FullName, RepositoryFolder));
            return Path.GetFullPath("mnist-10k");
        }
    }

    /// <summary>
    /// Takes <c>--data &lt;folder&gt;</c> out of a program's arguments: the folder it names, or
    /// <see cref="DefaultDirectory"/> when the option is absent.
    /// </summary>
    /// <param name="args">The program's arguments; the option and its value are removed.</param>
    /// <exception cref="ArgumentException"><c>--data</c> is the last argument, with no folder after it.</exception>
    public static string DirectoryFromArguments(List<string> args)
    {
        ArgumentNullException.ThrowIfNull(args);
        int index = args.IndexOf("--data");
        if (index < 0) return DefaultDirectory;
        if (index + 1 >= args.Count)
            throw new ArgumentException($"--data needs a folder after it: the one that holds {ImageNames[0]} and {LabelNames[0]} (or MNIST's train-*-ubyte files).", nameof(args));
        string folder = args[index + 1];
        args.RemoveRange(index, 2);
        return Path.GetFullPath(folder);
    }

    /// <summary>Images as [n, 784] scaled to [0, 1] in <paramref name="dtype"/>, labels as int64 [n], on the CPU.</summary>
    /// <param name="directory">The folder holding the two IDX files.</param>
    /// <param name="count">Only the first this-many digits (all when null).</param>
    /// <param name="dtype">Floating dtype of the images (float32 by default).</param>
    /// <exception cref="FileNotFoundException">A file is missing; the message says how to point at the data.</exception>
    /// <exception cref="InvalidDataException">A file is not in the IDX layout, or the two files disagree.</exception>
    public static (Tensor Images, Tensor Labels) Load(string directory, int? count = null, ScalarType dtype = ScalarType.Float32) =>
        LoadPair(directory, ImageNames, LabelNames, count, dtype);

    /// <summary>True when <paramref name="directory"/> holds a full MNIST download's test images (<c>t10k-images-idx3-ubyte[.gz]</c>).</summary>
    /// <param name="directory">The data folder.</param>
    public static bool HasTestSet(string directory) =>
        TestImageNames.Any(name => File.Exists(Path.Combine(directory, name)));

    /// <summary>The 10,000 test digits of a full MNIST download (<c>t10k-*-ubyte[.gz]</c>), as <see cref="Load(string, int?, ScalarType)"/> returns them.</summary>
    /// <param name="directory">The folder holding the two IDX files.</param>
    /// <param name="dtype">Floating dtype of the images (float32 by default).</param>
    /// <exception cref="FileNotFoundException">A file is missing; the message says how to point at the data.</exception>
    /// <exception cref="InvalidDataException">A file is not in the IDX layout, or the two files disagree.</exception>
    public static (Tensor Images, Tensor Labels) LoadTest(string directory, ScalarType dtype = ScalarType.Float32) =>
        LoadPair(directory, TestImageNames, TestLabelNames, null, dtype);

    private static (Tensor Images, Tensor Labels) LoadPair(string directory, string[] imageNames, string[] labelNames, int? count, ScalarType dtype)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (count is < 0) throw new ArgumentOutOfRangeException(nameof(count), count, "count must be at least 0.");
        if (dtype is not (ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64))
            throw new ArgumentException($"dtype must be a floating type, not {dtype}.", nameof(dtype));

        var images = ReadIdx(directory, imageNames, 0x00000803, out int[] imageShape);
        var labels = ReadIdx(directory, labelNames, 0x00000801, out int[] labelShape);
        if (imageShape[0] != labelShape[0])
            throw new InvalidDataException($"{imageShape[0]} images but {labelShape[0]} labels in {directory}: the image and label files must come from the same MNIST set.");
        int available = imageShape[0], pixels = imageShape[1] * imageShape[2];
        if (count > available)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"{directory} holds only {available} digits.");
        int n = count ?? available;

        using var bytes = tensor(images.AsSpan(0, n * pixels).ToArray(), [n, pixels]);
        var x = bytes.to_type(dtype).div_(255.0);
        var y = tensor(labels.AsSpan(0, n).ToArray().Select(b => (long)b).ToArray(), [n]);
        return (x, y);
    }

    private static byte[] ReadIdx(string directory, string[] names, int magic, out int[] shape)
    {
        string expected = magic == 0x00000803
            ? "an IDX file of MNIST images (magic 0x00000803: unsigned bytes, 3 dimensions [n, 28, 28]), raw or gzip-compressed"
            : "an IDX file of MNIST labels (magic 0x00000801: unsigned bytes, 1 dimension [n]), raw or gzip-compressed";
        string? path = names.Select(name => Path.Combine(directory, name)).FirstOrDefault(File.Exists);
        if (path is null)
            throw new FileNotFoundException(
                $"MNIST file not found: none of {string.Join(", ", names)} is in {directory} (expected {expected}). Pass the folder that holds them " +
                $"(--data <folder>, or set {EnvironmentVariable}); a checkout of this repository has 10,000 digits in {RepositoryFolder}.",
                Path.Combine(directory, names[0]));
        try
        {
            using var file = File.OpenRead(path);
            using Stream stream = path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(file, CompressionMode.Decompress) : file;
            using var reader = new BinaryReader(stream);
            int found = ReadBigEndian(reader, path, expected);
            if (found != magic) throw new InvalidDataException($"{path}: magic 0x{found:x8}, expected {expected}.");
            shape = new int[magic & 0xff];
            for (int i = 0; i < shape.Length; i++) shape[i] = ReadBigEndian(reader, path, expected);
            if (shape.Any(d => d < 0)) throw new InvalidDataException($"{path}: negative size in the IDX header, expected {expected}.");
            int count = shape.Aggregate(1, (a, b) => checked(a * b));
            var data = reader.ReadBytes(count);
            if (data.Length != count) throw new InvalidDataException($"{path}: expected {count} bytes of data after the header, got {data.Length} (truncated?); expected {expected}.");
            return data;
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or OverflowException or IOException && e is not FileNotFoundException
                                  && !e.Message.StartsWith(path, StringComparison.Ordinal))
        {
            // A damaged gzip stream throws without naming the file.
            throw new InvalidDataException($"{path}: cannot be read ({e.Message}); expected {expected}.", e);
        }
    }

    private static int ReadBigEndian(BinaryReader reader, string path, string expected)
    {
        var b = reader.ReadBytes(4);
        if (b.Length != 4) throw new InvalidDataException($"{path}: the IDX header is truncated; expected {expected}.");
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3];
    }
}

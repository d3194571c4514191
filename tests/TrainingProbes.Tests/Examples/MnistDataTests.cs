using System.IO.Compression;
using System.Security.Cryptography;
using TrainingProbes.Examples;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Examples;

/// <summary>
/// The digits travel with the repository (a user's clone has nothing beside it), match their published checksums,
/// and the loader also reads a full MNIST download in MNIST's own file names.
/// </summary>
public sealed class MnistDataTests
{
    private static string RepositoryData
    {
        get
        {
            for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
                if (File.Exists(Path.Combine(folder.FullName, "TrainingProbes.sln")))
                    return Path.Combine(folder.FullName, Mnist.RepositoryFolder);
            throw new InvalidOperationException("The tests run outside a checkout of the repository.");
        }
    }

    [Fact]
    public void The_default_folder_is_the_repositorys_data_folder()
    {
        // TRAININGPROBES_MNIST, when a user sets it, wins over the repository's copy.
        var configured = Environment.GetEnvironmentVariable(Mnist.EnvironmentVariable);
        string expected = string.IsNullOrWhiteSpace(configured) ? Path.GetFullPath(RepositoryData) : Path.GetFullPath(configured);
        Assert.Equal(expected, Mnist.DefaultDirectory);
    }

    [Fact]
    public void The_repositorys_files_match_SHA256SUMS()
    {
        var lines = File.ReadAllLines(Path.Combine(RepositoryData, "SHA256SUMS")).Where(l => l.Length > 0).ToArray();
        Assert.Equal(2, lines.Length);
        foreach (var line in lines)
        {
            var parts = line.Split("  ", 2);
            using var stream = File.OpenRead(Path.Combine(RepositoryData, parts[1]));
            Assert.Equal(parts[0], Convert.ToHexStringLower(SHA256.HashData(stream)));
        }
    }

    [Fact]
    public void The_repositorys_digits_are_10000_with_the_documented_class_counts()
    {
        var (images, labels) = Mnist.Load(RepositoryData);
        using (images)
        using (labels)
        {
            Assert.Equal([10000L, 784L], images.shape);
            Assert.Equal(0.0, images.min().item<float>());
            Assert.Equal(1.0, images.max().item<float>());
            using var counts = labels.bincount(null, 10);
            // The class counts the data's README documents.
            Assert.Equal([1001L, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978], counts.data<long>().ToArray());
        }
    }

    [Theory]
    [InlineData("train-images-idx3-ubyte", "train-labels-idx1-ubyte")]
    [InlineData("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")]
    public void A_full_MNIST_download_is_read_in_its_own_file_names(string imageFile, string labelFile)
    {
        var folder = Directory.CreateTempSubdirectory("trainingprobes-mnist-").FullName;
        try
        {
            // Three 28x28 digits whose pixels encode their position, written in the IDX layout by hand.
            var pixels = Enumerable.Range(0, 3 * 784).Select(i => (byte)(i % 251)).ToArray();
            WriteIdx(Path.Combine(folder, imageFile), 0x00000803, [3, 28, 28], pixels);
            WriteIdx(Path.Combine(folder, labelFile), 0x00000801, [3], [7, 0, 9]);

            var (images, labels) = Mnist.Load(folder, dtype: ScalarType.Float64);
            using (images)
            using (labels)
            {
                Assert.Equal([3L, 784L], images.shape);
                Assert.Equal([7L, 0, 9], labels.data<long>().ToArray());
                var read = images.data<double>().ToArray();
                for (int i = 0; i < pixels.Length; i++) Assert.Equal(pixels[i] / 255.0, read[i], 15);
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_folder_without_the_files_says_which_names_it_looked_for_and_how_to_point_elsewhere()
    {
        var folder = Directory.CreateTempSubdirectory("trainingprobes-mnist-").FullName;
        try
        {
            var error = Assert.Throws<FileNotFoundException>(() => Mnist.Load(folder));
            Assert.Contains(folder, error.Message);
            Assert.Contains("train-images-idx3-ubyte.gz", error.Message);
            Assert.Contains("--data", error.Message);
            Assert.Contains(Mnist.EnvironmentVariable, error.Message);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void The_data_option_is_taken_out_of_the_arguments()
    {
        var args = new List<string> { "budget", "--data", "/somewhere/mnist", "12" };
        Assert.Equal(Path.GetFullPath("/somewhere/mnist"), Mnist.DirectoryFromArguments(args));
        Assert.Equal(["budget", "12"], args);

        var noOption = new List<string> { "budget" };
        Assert.Equal(Mnist.DefaultDirectory, Mnist.DirectoryFromArguments(noOption));

        var error = Assert.Throws<ArgumentException>(() => Mnist.DirectoryFromArguments(["intervals", "--data"]));
        Assert.Contains("needs a folder", error.Message);
    }

    private static void WriteIdx(string path, int magic, int[] shape, byte[] data)
    {
        using var file = File.Create(path);
        using Stream stream = path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(file, CompressionLevel.Fastest) : file;
        void BigEndian(int value) => stream.Write([(byte)(value >> 24), (byte)(value >> 16), (byte)(value >> 8), (byte)value]);
        BigEndian(magic);
        foreach (int d in shape) BigEndian(d);
        stream.Write(data);
    }
}

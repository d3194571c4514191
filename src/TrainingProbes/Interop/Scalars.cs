using TorchSharp;

namespace TrainingProbes.Interop;

/// <summary>
/// TorchSharp scalars that stay alive for as long as the native calls that read them.
/// <para>
/// A <see cref="Scalar"/> is a managed wrapper with a finalizer around a native <c>c10::Scalar</c>, and TorchSharp's
/// methods pass only its handle to native code, with no <c>GC.KeepAlive</c> after the call. A scalar made by an implicit
/// conversion (<c>t.mul_(0.5)</c>, <c>t + 1</c>, <c>t / k</c>), or inside TorchSharp (<c>add_(Tensor)</c> passes an
/// implicit alpha of 1, <c>square()</c> calls <c>pow(2)</c>), is unreachable as soon as its handle is read: a garbage
/// collection on any thread during the native call can finalize it and free the native scalar while the call reads it.
/// Under collections forced by other threads this fails within seconds with "Expected false to be true" from
/// <c>c10::Scalar::toFloat</c> (see the README's known issues). Every scalar TrainingProbes passes to TorchSharp is one
/// of these constants, a field of an object that outlives the call, or a member of a <see cref="ScalarScope"/>;
/// <c>NativeLifetimeTests</c> reads the compiled code to check it.
/// </para>
/// </summary>
internal static class Scalars
{
    // Rooted for the process's lifetime: never finalized. A few bytes of native memory each.
    public static readonly Scalar Zero = 0.ToScalar();
    public static readonly Scalar One = 1.ToScalar();
    public static readonly Scalar MinusOne = (-1).ToScalar();
    public static readonly Scalar Two = 2.ToScalar();
}

/// <summary>
/// Scalars made for one block of code and kept alive until it ends: <c>using var scalars = new ScalarScope();</c> then
/// <c>t.mul_(scalars[0.5])</c>. The scope holds every scalar it made, so none can be finalized before
/// <see cref="Dispose"/>, which frees them all (none is left to the finalizer).
/// </summary>
internal sealed class ScalarScope : IDisposable
{
    private readonly List<Scalar> _made = new(8);

    /// <summary>A float64 scalar of <paramref name="value"/>, alive until this scope is disposed.</summary>
    public Scalar this[double value]
    {
        get
        {
            var scalar = value.ToScalar();
            _made.Add(scalar);
            return scalar;
        }
    }

    public void Dispose()
    {
        foreach (var scalar in _made) scalar.Dispose();
        _made.Clear();
    }
}

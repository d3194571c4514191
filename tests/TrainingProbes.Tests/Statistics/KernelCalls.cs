using System.Reflection;
using System.Reflection.Emit;
using System.Runtime.InteropServices;
using TrainingProbes.Statistics;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// <see cref="WindowKernel"/>'s pointer API called from a test project compiled without unsafe code: the gradients and
/// the state live in pinned managed arrays, their addresses travel as <see cref="nint"/>, and three small dynamic
/// methods pass them on as the kernel's pointers (in IL a pointer is a native int).
/// </summary>
internal static class KernelCalls
{
    private delegate double AccumulateCall(WindowKernel kernel, nint rows, long count, ref WindowKernel.State state, double[] sums);

    private delegate double SumOfSquaresCall(WindowKernel kernel, nint rows, long count);

    private delegate WindowKernel.State StateCall(nint fisher, double decay, double floor, double bias, nint theta, float eta, double storedEpsilon);

    private static readonly AccumulateCall AccumulateMethod = Emit<AccumulateCall>(il =>
    {
        il.Emit(OpCodes.Ldarg_0);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldarg_2);
        il.Emit(OpCodes.Ldarg_3);
        il.Emit(OpCodes.Ldarg_S, (byte)4);
        il.Emit(OpCodes.Newobj, typeof(Span<double>).GetConstructor([typeof(double[])])!);
        il.Emit(OpCodes.Callvirt, typeof(WindowKernel).GetMethod(nameof(WindowKernel.Accumulate))!);
        il.Emit(OpCodes.Ret);
    });

    private static readonly SumOfSquaresCall SumOfSquaresMethod = Emit<SumOfSquaresCall>(il =>
    {
        il.Emit(OpCodes.Ldarg_0);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldarg_2);
        il.Emit(OpCodes.Callvirt, typeof(WindowKernel).GetMethod(nameof(WindowKernel.SumOfSquares))!);
        il.Emit(OpCodes.Ret);
    });

    private static readonly StateCall StateMethod = Emit<StateCall>(il =>
    {
        var state = il.DeclareLocal(typeof(WindowKernel.State));
        il.Emit(OpCodes.Ldloca_S, state);
        il.Emit(OpCodes.Initobj, typeof(WindowKernel.State));
        string[] properties =
        [
            "Fisher", "Decay", "Floor", "Bias", "Theta", "Eta", "StoredEpsilon",   // the order of StateCall's arguments
        ];
        for (int i = 0; i < properties.Length; i++)
        {
            il.Emit(OpCodes.Ldloca_S, state);
            il.Emit(OpCodes.Ldarg_S, (byte)i);
            il.Emit(OpCodes.Call, typeof(WindowKernel.State).GetProperty(properties[i])!.SetMethod!);
        }

        il.Emit(OpCodes.Ldloc, state);
        il.Emit(OpCodes.Ret);
    });

    private static T Emit<T>(Action<ILGenerator> body) where T : Delegate
    {
        var invoke = typeof(T).GetMethod("Invoke")!;
        var method = new DynamicMethod(typeof(T).Name, invoke.ReturnType, invoke.GetParameters().Select(p => p.ParameterType).ToArray(),
            typeof(KernelCalls).Module, skipVisibility: true);
        body(method.GetILGenerator());
        return (T)method.CreateDelegate(typeof(T));
    }

    /// <summary><see cref="WindowKernel.Accumulate"/> of the block whose row i starts at <c>rows[i]</c> (a pinned array of addresses).</summary>
    public static double Accumulate(WindowKernel kernel, Pinned<nint> rows, long count, WindowKernel.State state, double[] sums) =>
        AccumulateMethod(kernel, rows.Address(0), count, ref state, sums);

    /// <summary><see cref="WindowKernel.SumOfSquares"/> of the block whose row i starts at <c>rows[i]</c>.</summary>
    public static double SumOfSquares(WindowKernel kernel, Pinned<nint> rows, long count) => SumOfSquaresMethod(kernel, rows.Address(0), count);

    /// <summary>A kernel state whose F and theta start at the given addresses (0: none).</summary>
    public static WindowKernel.State State(nint fisher, double decay, double floor, double bias, nint theta, float eta, double storedEpsilon) =>
        StateMethod(fisher, decay, floor, bias, theta, eta, storedEpsilon);
}

/// <summary>A managed array allocated pinned (it never moves), and the addresses of its elements.</summary>
internal sealed class Pinned<T>(int length) where T : unmanaged
{
    public T[] Values { get; } = GC.AllocateArray<T>(length, pinned: true);

    public nint Address(long index) => Marshal.UnsafeAddrOfPinnedArrayElement(Values, (int)index);
}

/// <summary>A [K, P] float32 block in one pinned array, and the row addresses the kernel reads from column <c>start</c> on.</summary>
internal sealed class PinnedBlock
{
    public PinnedBlock(double[,] g)
    {
        K = g.GetLength(0);
        P = g.GetLength(1);
        Data = new Pinned<float>(K * P);
        for (int i = 0; i < K; i++)
            for (int c = 0; c < P; c++) Data.Values[i * P + c] = (float)g[i, c];
    }

    public int K { get; }

    public int P { get; }

    public Pinned<float> Data { get; }

    /// <summary>The K row addresses of columns [start, P).</summary>
    public Pinned<nint> Rows(long start)
    {
        var rows = new Pinned<nint>(K);
        for (int i = 0; i < K; i++) rows.Values[i] = Data.Address(i * P + start);
        return rows;
    }
}

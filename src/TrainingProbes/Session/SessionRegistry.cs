using System.Runtime.CompilerServices;
using static TorchSharp.torch;

namespace TrainingProbes.Session;

/// <summary>
/// Which session watches which model, for <see cref="ProbeSession.Get"/> and the one-line call. A weak table: the
/// entry lives as long as the model, and a session its user drops is collected with its model.
/// </summary>
internal static class SessionRegistry
{
    private static readonly ConditionalWeakTable<nn.Module, ProbeSession> Sessions = new();

    /// <summary>Creates a session with <paramref name="create"/> and registers it, unless the model has a live one.</summary>
    public static ProbeSession Add(nn.Module model, Func<ProbeSession> create)
    {
        lock (Sessions)
        {
            if (Sessions.TryGetValue(model, out var existing) && !existing.IsDisposed)
                throw new InvalidOperationException(
                    $"This model already has a probe session (run {existing.RunId}). Dispose it before attaching another, or reuse it.");
            var session = create();
            Sessions.AddOrUpdate(model, session);
            return session;
        }
    }

    /// <summary>The model's live session, or null.</summary>
    public static ProbeSession? Get(nn.Module model) =>
        Sessions.TryGetValue(model, out var session) && !session.IsDisposed ? session : null;

    /// <summary>The model's live session, created with <paramref name="create"/> on first use.</summary>
    public static ProbeSession GetOrAdd(nn.Module model, Func<ProbeSession> create)
    {
        if (Get(model) is { } session) return session;
        lock (Sessions)
        {
            if (Get(model) is { } raced) return raced;
            session = create();
            Sessions.AddOrUpdate(model, session);
            return session;
        }
    }

    /// <summary>Forgets <paramref name="session"/> if it is still the model's one.</summary>
    public static void Remove(nn.Module model, ProbeSession session)
    {
        lock (Sessions)
            if (Sessions.TryGetValue(model, out var current) && ReferenceEquals(current, session)) Sessions.Remove(model);
    }
}

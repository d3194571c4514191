namespace TrainingProbes.Reporting;

/// <summary>A geometry's name as the metrics and rules write it (<c>euclidean</c>, <c>fisher</c>, <c>adaptive</c>).</summary>
internal static class GeometryNames
{
    public static string ToName(this Geometry geometry) => geometry.ToString().ToLowerInvariant();
}

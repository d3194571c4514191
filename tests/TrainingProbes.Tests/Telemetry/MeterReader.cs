using System.Diagnostics.Metrics;

namespace TrainingProbes.Tests.Telemetry;

/// <summary>Reads the TrainingProbes meter's observable gauges with a plain <see cref="MeterListener"/>: (instrument, unit, value, run id).</summary>
internal static class MeterReader
{
    public static List<(string Instrument, string? Unit, double Value, string? RunId, string? Geometry)> Collect()
    {
        var measurements = new List<(string, string?, double, string?, string?)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == TrainingProbesMeter.Name) l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
        {
            string? run = null, geometry = null;
            foreach (var tag in tags)
            {
                if (tag.Key == TrainingProbesMeter.RunIdAttribute) run = tag.Value as string;
                if (tag.Key == TrainingProbesMeter.GeometryAttribute) geometry = tag.Value as string;
            }

            lock (measurements) measurements.Add((instrument.Name, instrument.Unit, value, run, geometry));
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return measurements;
    }
}

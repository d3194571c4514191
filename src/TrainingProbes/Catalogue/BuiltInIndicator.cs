namespace TrainingProbes;

/// <summary>
/// A built-in indicator: one file each under Catalogue/Indicators, holding its name constant, its definition (unit,
/// direction, how it is computed) and its formula and citation. <see cref="IndicatorCatalogue.BuiltIn"/> finds them
/// by reflection, so adding one is adding its file (and its row in docs/REFERENCE.md, which a test checks).
/// </summary>
/// <param name="family">Which part of the library publishes it.</param>
/// <param name="order">Its place within its family in the catalogue (instrument and table order); ties are broken by name.</param>
/// <param name="definition">The definition.</param>
internal abstract class BuiltInIndicator(IndicatorFamily family, int order, IndicatorDefinition definition)
{
    public IndicatorFamily Family { get; } = family;

    public int Order { get; } = order;

    public IndicatorDefinition Definition { get; } = definition;

    /// <summary>Every concrete built-in indicator of this assembly, in catalogue order.</summary>
    public static IndicatorDefinition[] Discover() =>
        typeof(BuiltInIndicator).Assembly.GetTypes()
            .Where(t => t.IsSubclassOf(typeof(BuiltInIndicator)) && !t.IsAbstract)
            .Select(t => (BuiltInIndicator)Activator.CreateInstance(t)!)
            .OrderBy(i => i.Family).ThenBy(i => i.Order).ThenBy(i => i.Definition.Name, StringComparer.Ordinal)
            .Select(i => i.Definition)
            .ToArray();
}

/// <summary>Which part of the library computes a built-in indicator.</summary>
internal enum IndicatorFamily
{
    /// <summary>From a window's Gram matrix, per geometry (<see cref="IndicatorDefinition.FromGram"/>).</summary>
    FirstOrder,

    /// <summary>From per-coordinate sums over the window (<see cref="IndicatorDefinition.PerCoordinate"/>).</summary>
    PerCoordinate,

    /// <summary>The run's own values: loss, learning rate, drift, overhead.</summary>
    Run,

    /// <summary>At one theta and a finite radius (FixedPointProbe).</summary>
    FiniteRadius,

    /// <summary>Hessian measures (FixedPointProbe).</summary>
    Curvature,

    /// <summary>Instruments that are not snapshot values.</summary>
    Instrument,
}

"""The live loss plot: a table node that grows with each progress event and a Slicer plot chart of it.

Plain MRML (table, plot series and plot chart nodes), so it is Qt-free and testable; in Slicer the
widget shows the chart in the view layout (``slicer.modules.plots.logic().ShowChartInLayout``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .services import mark_owned

ITERATION = "iteration"
_COLORS = ((0.16, 0.47, 0.71), (0.84, 0.15, 0.16), (0.17, 0.63, 0.17), (1.0, 0.5, 0.05), (0.58, 0.4, 0.74),
           (0.55, 0.34, 0.29))
LOSS_TABLE = "lossTable"
LOSS_CHART = "lossChart"
LOSS_SERIES = "lossSeries"


class LossPlot:
    """A loss table (``iteration`` plus one column per loss) and a chart with one line per loss."""

    def __init__(self, scene: Any, title: str = "PLCLSegmentation training loss") -> None:
        import slicer

        self.scene = scene
        self.table = slicer.vtkMRMLTableNode()
        self.table.SetName(scene.GenerateUniqueName("PLCLSegmentation loss"))
        mark_owned(self.table, LOSS_TABLE)
        self.table = scene.AddNode(self.table)
        self.chart = slicer.vtkMRMLPlotChartNode()
        self.chart.SetName(scene.GenerateUniqueName("PLCLSegmentation loss chart"))
        self.chart.SetTitle(title)
        self.chart.SetXAxisTitle("iteration")
        self.chart.SetYAxisTitle("loss")
        mark_owned(self.chart, LOSS_CHART)
        self.chart = scene.AddNode(self.chart)
        self.series: dict[str, Any] = {}
        self._arrays: dict[str, Any] = {}
        self._rows = 0
        self._add_column(ITERATION)

    @property
    def nodes(self) -> list[Any]:
        return [self.chart, *self.series.values(), self.table]

    @property
    def rows(self) -> int:
        return self._rows

    def _add_column(self, name: str) -> Any:
        import vtk

        array = vtk.vtkFloatArray()
        array.SetName(name)
        for _ in range(self._rows):
            array.InsertNextValue(math.nan)
        self.table.GetTable().AddColumn(array)
        self._arrays[name] = array
        return array

    def _add_series(self, name: str) -> None:
        import slicer

        series = slicer.vtkMRMLPlotSeriesNode()
        series.SetName(name)
        mark_owned(series, LOSS_SERIES)
        series = self.scene.AddNode(series)
        series.SetAndObserveTableNodeID(self.table.GetID())
        series.SetXColumnName(ITERATION)
        series.SetYColumnName(name)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetColor(*_COLORS[len(self.series) % len(_COLORS)])
        self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
        self.series[name] = series

    def append(self, points: Iterable[tuple[int, dict[str, float]]]) -> int:
        """Add one row per (iteration, {loss name: value}); returns the number of rows added."""
        added = 0
        was_modifying = self.table.StartModify()
        try:
            for iteration, losses in points:
                for name in losses:
                    if name not in self._arrays:
                        self._add_column(name)
                for name, array in self._arrays.items():
                    value = iteration if name == ITERATION else losses.get(name, math.nan)
                    array.InsertNextValue(float(value) if value is not None else math.nan)
                self._rows += 1
                added += 1
            if added:
                for name in self._arrays:
                    if name != ITERATION and name not in self.series:
                        self._add_series(name)
                self.table.GetTable().Modified()
                self.table.Modified()
        finally:
            self.table.EndModify(was_modifying)
        return added

    def values(self, name: str) -> list[float]:
        array = self._arrays[name]
        return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]


CURVE_TABLE = "volumeCurveTable"
CURVE_CHART = "volumeCurveChart"
CURVE_SERIES = "volumeCurveSeries"
#: Node attribute naming the record (parameters.VolumeRecord.key) a volume curve belongs to.
CURVE_RECORD_ATTRIBUTE = "PLCLSegmentation.Record"


def add_volume_curve(scene: Any, add: Any, record_key: str, title: str, x_title: str, x_values: list[float],
                     curves: dict[str, list[float]], colors: dict[str, tuple[float, float, float]]) -> Any:
    """A table (x, then one column of millilitres per class) and a chart with one line per class: the
    volume of each structure over the frames of a sequence. ``add`` adds a node to the scene (a
    transaction's, so that a failed import removes them again). Returns the chart node."""
    import slicer
    import vtk

    table = slicer.vtkMRMLTableNode()
    table.SetName(scene.GenerateUniqueName(f"{title} volumes"))
    mark_owned(table, CURVE_TABLE)
    columns = {x_title: x_values, **curves}
    for name, values in columns.items():
        array = vtk.vtkFloatArray()
        array.SetName(name)
        for value in values:
            array.InsertNextValue(float(value) if value is not None else math.nan)
        table.GetTable().AddColumn(array)
    chart = slicer.vtkMRMLPlotChartNode()
    chart.SetName(scene.GenerateUniqueName(f"{title} volume curve"))
    chart.SetTitle(f"{title}: volume over time")
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle("volume (ml)")
    mark_owned(chart, CURVE_CHART)
    for node in (table, chart):
        node.SetAttribute(CURVE_RECORD_ATTRIBUTE, record_key)
    table, chart = add(table), add(chart)
    for index, name in enumerate(curves):
        series = slicer.vtkMRMLPlotSeriesNode()
        series.SetName(name)
        mark_owned(series, CURVE_SERIES)
        series.SetAttribute(CURVE_RECORD_ATTRIBUTE, record_key)
        series = add(series)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(x_title)
        series.SetYColumnName(name)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetColor(*colors.get(name, _COLORS[index % len(_COLORS)]))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart

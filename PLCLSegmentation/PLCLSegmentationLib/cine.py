"""The logic's part for volume sequences (cine MRI): records, a run's inputs, and its results.

A sequence is one record (parameters.VolumeRecord with ``cine``) whose frames carry their own role:
frames the user annotated (each with its own segmentation: a segmentation node drawn on that frame,
or the item of a segmentation sequence), frames accepted after review, and predicted frames. For a
run the whole sequence goes to the engine as one 4D file: its training frames as
``--labeled-frame FILE FRAME LABEL``, a sequence without any as ``--unlabeled FILE``. Its result is
one segmentation sequence (every frame: the annotations as given, the others predicted) and one
uncertainty sequence, synchronised in the sequence's browser, and a plot of each structure's volume
over time (the engine's ``sequences`` entry of summary.json).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plots, review, scene_io, sequences
from .engine.protocol import frame_name
from .parameters import (
    ANNOTATED,
    EXCLUDED,
    PREDICTED,
    REVIEWED,
    SEQUENCE,
    UNANNOTATED,
    FrameRecord,
    ModuleState,
    VolumeRecord,
)
from .run_results import RunResults
from .scene_io import SceneTransaction, SegmentClass
from .services import OWNER_ATTRIBUTE, PLCLError, SlicerServices, is_owned


def refresh(state: ModuleState, scene: Any, records: list[VolumeRecord]) -> tuple[list[VolumeRecord], set[str]]:
    """Bring the sequence records up to date: forget those whose browser or sequence is gone, add one
    record per new volume sequence, drop frames whose annotation was deleted. Returns the records
    left and the IDs of the browsers' proxy nodes (not volumes of their own)."""
    found = sequences.volume_sequences(scene)
    by_proxy = {s.proxy.GetID(): s for s in found}
    proxies = sequences.proxy_ids(scene)
    kept, changed = [], []
    for record in records:
        current = by_proxy.get(record.volume.GetID())
        if record.is_sequence:
            if current is None or record.sequence is None or record.browser is None \
                    or current.sequence.GetID() != record.sequence.GetID():
                state.remove(record.key)  # its browser or sequence was deleted: start afresh
                continue
            if _prune_frames(record):
                changed.append(record)
        elif record.volume.GetID() in proxies:  # a volume that became a browser's proxy
            state.remove(record.key)
            continue
        kept.append(record)
    if changed:
        state.save(*changed)
    known = {r.volume.GetID() for r in kept if r.is_sequence}
    for item in found:
        if item.proxy.GetID() not in known:
            record = VolumeRecord(key=state.new_key(), role=UNANNOTATED, volume=item.proxy, cine=True,
                                  browser=item.browser, sequence=item.sequence)
            state.save(record)
            kept.append(record)
    return kept, proxies


def _prune_frames(record: VolumeRecord) -> bool:
    count = sequences.frame_count(record.sequence)
    before = dict(record.frames)
    ours = record.segmentation is not None and is_owned(record.segmentation)
    record.frames = {i: f for i, f in record.frames.items()
                     if i < count and (f.source is not None if f.role == ANNOTATED else ours)}
    if not ours:
        record.segmentation = None
    role = record.sequence_role()
    changed = record.frames.keys() != before.keys() or role != record.role
    record.role = role
    return changed


def current_frame(record: VolumeRecord) -> int:
    frame = int(record.browser.GetSelectedItemNumber())
    return max(0, frame)


def set_frame_annotation(scene: Any, record: VolumeRecord, frame: int, segmentation: Any,
                         segment_ids: Sequence[str] | None) -> None:
    """Frame ``frame`` of the sequence is annotated by ``segmentation``: a segmentation node drawn on
    it, or the proxy node of a segmentation sequence of the same browser (its item at that frame)."""
    sequences.check_frame(record.sequence, frame)
    source = segmentation
    if is_owned(segmentation):
        raise PLCLError(f"'{segmentation.GetName()}' is this module's result: accept the frame instead.")
    found = sequences.browser_of(scene, segmentation)
    if found is not None:
        browser, sequence = found
        if browser.GetID() != record.browser.GetID() or not sequences.is_segmentation_sequence(sequence):
            raise PLCLError(f"'{segmentation.GetName()}' belongs to another sequence browser than '{record.name}'.")
        # With "save changes" off (Slicer's default) the painting stays in the proxy, never in the frame.
        if not browser.GetSaveChanges(sequence):
            raise PLCLError(f"'{sequence.GetName()}' does not keep what is painted (its browser's \"save changes\" is "
                            "off): turn it on in the Sequences module, paint the frame, then add it.")
        source = sequence
    else:
        # A plain segmentation node does not follow the browser: one node for two frames would train both
        # on whatever was painted last.
        other = next((f for f in annotated_by(record, segmentation) if f != frame), None)
        if other is not None:
            raise PLCLError(f"'{segmentation.GetName()}' already annotates frame {other} of '{record.name}': use one "
                            "segmentation per frame, or a segmentation sequence in the sequence browser.")
    node = sequences.frame_segmentation(source, record.sequence, frame)
    ids = list(segment_ids) if segment_ids else scene_io.segment_ids(node)
    if not ids:
        raise PLCLError(f"Segmentation '{segmentation.GetName()}' has no segment at frame {frame}.")
    scene_io.classes_from_segments(node, ids)  # checks the IDs and names
    record.frames[frame] = FrameRecord(ANNOTATED, source, ids)
    record.role = ANNOTATED


def annotated_by(record: VolumeRecord, node: Any) -> list[int]:
    """The frames of ``record`` that the plain segmentation node ``node`` annotates."""
    return [f for f, info in sorted(record.frames.items())
            if info.role == ANNOTATED and info.source is not None and node is not None
            and info.source.GetID() == node.GetID()]


def remove_frame(record: VolumeRecord, frame: int) -> None:
    """Frame ``frame`` is no longer training data (the user's segmentation is left as it is; an accepted
    frame is a prediction again)."""
    info = record.frames.get(frame)
    if info is None or not info.is_training:
        raise PLCLError(f"Frame {frame} of '{record.name}' is not annotated.")
    forget_training(record, [frame])


def forget_training(record: VolumeRecord, frames: Sequence[int]) -> None:
    """The ``frames`` are no longer training data: annotated ones are forgotten, accepted ones are
    predictions again (their segmentation stays in the result sequence)."""
    for frame in frames:
        info = record.frames.get(frame)
        if info is not None and info.role == REVIEWED:
            record.frames[frame] = FrameRecord(PREDICTED, segment_ids=info.segment_ids)
        elif info is not None and info.role == ANNOTATED:
            del record.frames[frame]
    if record.role != EXCLUDED:
        record.role = record.sequence_role()


def annotation_node(record: VolumeRecord, frame: int) -> Any:
    """The segmentation node that holds the training annotation of ``frame``."""
    info = record.frames.get(frame)
    if info is None or not info.is_training:
        raise PLCLError(f"Frame {frame} of '{record.name}' is not annotated.")
    if info.role == REVIEWED:
        if record.segmentation is None:
            raise PLCLError(f"The accepted segmentation of '{record.name}' was deleted.")
        return sequences.frame_segmentation(record.segmentation, record.sequence, frame)
    return sequences.frame_segmentation(info.source, record.sequence, frame)


def annotation_placement(record: VolumeRecord, frame: int) -> Any:
    """The node of the scene whose parent transform applies to the annotation of ``frame``: a segmentation
    node itself, or the proxy of the segmentation sequence that holds it (the module's results: the
    record's)."""
    info = record.frames.get(frame)
    source = info.source if info is not None and info.role == ANNOTATED else record.segmentation
    if sequences.is_segmentation_sequence(source):
        return record.browser.GetProxyNode(source)
    return source


def slices_text(record: VolumeRecord) -> str:
    """Which frames of a sequence are annotated, for the panel."""
    count = sequences.frame_count(record.sequence) if record.sequence is not None else 0
    frames = record.training_frames()
    if not frames:
        return f"{count} frames"
    return f"frames {', '.join(str(i) for i in frames)} of {count} (whole frames)"


@dataclass
class FrameRow:
    """A training frame as the panel lists it: frame name, its segmentation, segments, how it is used."""

    frame: int
    cells: list[str]


def annotated_rows(record: VolumeRecord) -> list[FrameRow]:
    count = sequences.frame_count(record.sequence)
    rows = []
    for frame in record.training_frames():
        info = record.frames[frame]
        try:
            node = annotation_node(record, frame)
            source = info.source if info.role == ANNOTATED else record.segmentation
            segmentation = node.GetSegmentation()
            names = [segmentation.GetSegment(i).GetName() for i in info.segment_ids
                     if segmentation.GetSegment(i) is not None] or \
                [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
            cells = [source.GetName(), ", ".join(names)]
        except PLCLError as error:
            cells = [str(error), ""]
        how = "whole frame" if info.role == ANNOTATED else "accepted prediction, whole frame"
        rows.append(FrameRow(frame, [frame_name(record.name, frame, count), *cells, how]))
    return rows


@dataclass
class Export:
    """What a run got of a sequence: its 4D file, its frame count, its annotated frames' label files.
    What the run brings back for it (run_results.Expected): a segmentation of every frame."""

    key: str
    image: Path
    frames: int
    labels: dict[int, Path] = field(default_factory=dict)
    order: int = 1  # imported after the volumes

    def take(self, services: SlicerServices, transaction: SceneTransaction, record: VolumeRecord | None,
             results: RunResults, warnings: list[str]) -> Imported | None:
        if record is None or record.sequence is None or record.browser is None:
            warnings.append(f"a sequence or its browser was deleted during the run; its result is skipped ({self.key})")
            return None
        if sequences.frame_count(record.sequence) != self.frames:
            warnings.append(f"'{record.name}' got frames added or removed during the run; its result is skipped")
            return None
        return import_results(services, transaction, record, self, results)

    def engine_name(self, summary: dict[str, Any]) -> str:
        """The engine's name of the sequence: its summary entry's (matched by file), else the file's stem
        (the engine names a sequence after its file: KEY.nrrd is KEY)."""
        for entry in summary.get("sequences", []) or []:
            if isinstance(entry, dict) and entry.get("image") and entry.get("name") is not None:
                with contextlib.suppress(OSError):
                    if Path(str(entry["image"])).resolve() == self.image.resolve():
                        return str(entry["name"])
        return self.key


def export(services: SlicerServices, record: VolumeRecord, inputs: Path, classes: Sequence[SegmentClass],
           training: bool) -> Export:
    """Write the sequence as one 4D file and (``training``) each training frame's annotation."""
    image = inputs / "sequences" / f"{record.key}.nrrd"
    count = sequences.write_volume_sequence(record.sequence, image, record.name)
    result = Export(record.key, image, count)
    if not training:
        return result
    for frame in record.training_frames():
        node = annotation_node(record, frame)
        info = record.frames[frame]
        ids = scene_io.match_segments(node, classes, info.segment_ids)
        label = inputs / "labels" / f"{record.key}_frame{frame}.seg.nrrd"
        label.parent.mkdir(exist_ok=True)
        # A frame and a segmentation sequence's item are not in the scene: their proxies carry the transforms.
        scene_io.write_annotation(services, node, ids, sequences.frame_volume(record.sequence, frame), classes,
                                  str(label), segmentation_placed=annotation_placement(record, frame),
                                  volume_placed=record.volume)
        result.labels[frame] = label
    return result


def training_classes_source(records: Sequence[VolumeRecord], role: str) -> tuple[Any, list[str]] | None:
    """(segmentation node, segment IDs) of the first frame of ``role`` (annotated or accepted)."""
    for record in records:
        for frame in record.training_frames():
            info = record.frames[frame]
            if info.role == role:
                node = annotation_node(record, frame)
                return node, info.segment_ids or scene_io.segment_ids(node)
    return None


@dataclass
class Imported:
    """A sequence's new results, in the scene but not yet in its record."""

    record: VolumeRecord
    segmentation: Any  # the segmentation sequence
    uncertainty: Any  # the uncertainty volume sequence
    frames: dict[int, FrameRecord]
    chart: Any = None
    review: dict[str, Any] = field(default_factory=dict)  # each predicted frame's slices to review (review.py)
    kind: str = SEQUENCE

    def apply(self, services: SlicerServices, warnings: list[str]) -> None:
        apply(self, warnings, services)


def import_results(services: SlicerServices, transaction: SceneTransaction, record: VolumeRecord, exported: Export,
                   results: RunResults) -> Imported:
    """Build the segmentation and uncertainty sequences of ``record`` from the run's results (every
    frame: annotated frames from their annotation, the others from the engine's prediction) and add
    them to the record's browser."""
    name, summary, classes = exported.engine_name(results.summary), results.summary, results.classes
    sequence = record.sequence
    count = sequences.frame_count(sequence)
    if count != exported.frames:
        raise PLCLError(f"'{record.name}' has {count} frames, {exported.frames} when the run started.")
    entries = {}
    for entry in summary.get("volumes", []):
        if isinstance(entry, dict) and str(entry.get("sequence")) == name and isinstance(entry.get("frame"), int):
            entries[entry["frame"]] = entry
    segmentation_sequence = sequences.new_sequence(services.scene, sequence, f"{record.name} segmentation",
                                                   sequences.SEGMENTATION_SEQUENCE)
    uncertainty_sequence = sequences.new_sequence(services.scene, sequence, f"{record.name} uncertainty",
                                                  sequences.UNCERTAINTY_SEQUENCE)
    frames: dict[int, FrameRecord] = {}
    slices: dict[str, Any] = {}
    for frame in range(count):
        label = exported.labels.get(frame)
        if label is not None:  # training data of this run: shown as the user gave it
            segmentation = scene_io.read_segmentation(str(label))
            uncertainty = sequences.zero_volume(sequence, frame)
            frames[frame] = record.frames[frame]
        else:
            entry = entries.get(frame, {})
            path = results.path(entry.get("segmentation"))
            if path is None:
                raise PLCLError(f"the engine wrote no segmentation for frame {frame} of '{record.name}'")
            segmentation = scene_io.read_segmentation(str(path))
            if classes:
                scene_io.apply_classes(segmentation, classes)
            uncertainty_path = results.path(entry.get("uncertainty"))
            uncertainty = scene_io.read_volume(str(uncertainty_path)) if uncertainty_path is not None \
                else sequences.zero_volume(sequence, frame)
            score = entry.get("uncertainty_score")
            frames[frame] = FrameRecord(PREDICTED, score=float(score) if score is not None else None,
                                        structures=review.structures_of(entry))
            if review.slices_of(entry):
                slices[review.frame_key(frame)] = review.slices_of(entry)
        sequences.set_frame_segmentation(segmentation_sequence, sequence, frame, segmentation)
        sequences.set_frame_volume(uncertainty_sequence, sequence, frame, uncertainty)
    for frame, info in frames.items():
        if info.role == PREDICTED:
            item = segmentation_sequence.GetDataNodeAtValue(sequence.GetNthIndexValue(frame), True)
            info.fingerprint = scene_io.fingerprint(item)
            info.segment_ids = scene_io.segment_ids(item)
    segmentation_proxy = sequences.add_to_browser(services, transaction, record.browser, segmentation_sequence,
                                                  record.volume, save_changes=True)
    # Drawn on the sequence's volume (the Segment Editor picks it as source volume), as a volume's prediction.
    segmentation_proxy.SetReferenceImageGeometryParameterFromVolumeNode(record.volume)
    uncertainty_proxy = sequences.add_to_browser(services, transaction, record.browser, uncertainty_sequence,
                                                 record.volume, save_changes=False, default_display=False)
    scene_io.style_uncertainty(services, transaction, uncertainty_proxy)
    chart = _volume_curve(services, transaction, record, name, summary, classes)
    return Imported(record, segmentation_sequence, uncertainty_sequence, frames, chart, slices)


def _volume_curve(services: SlicerServices, transaction: SceneTransaction, record: VolumeRecord, name: str,
                  summary: dict[str, Any], classes: Sequence[SegmentClass]) -> Any:
    """The engine's volume curve of the sequence as a chart (none if the engine gave none)."""
    entry = next((s for s in summary.get("sequences", []) if isinstance(s, dict) and str(s.get("name")) == name),
                 None)
    curves = (entry or {}).get("volume_curve_ml")
    count = sequences.frame_count(record.sequence)
    if not isinstance(curves, dict) or not curves:
        return None
    curves = {str(k): [float(v) if v is not None else float("nan") for v in values]
              for k, values in curves.items() if isinstance(values, list) and len(values) == count}
    if not curves:
        return None
    times = sequences.index_numbers(record.sequence)
    unit = record.sequence.GetIndexUnit()
    if times is not None:
        x_title = f"{record.sequence.GetIndexName() or 'time'}" + (f" ({unit})" if unit else "")
    else:
        x_title, times = "frame", [float(i) for i in range(count)]
    colors = {c.name: c.color for c in classes}
    chart = plots.add_volume_curve(services.scene, transaction.add, record.key, record.name, x_title, times, curves,
                                   colors)
    summary_of = (entry or {}).get("volume_summary")
    if isinstance(summary_of, dict):
        chart.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary_of))
    return chart


#: Chart attribute holding the engine's volume summary of the sequence (JSON: class -> max/min/EF).
SUMMARY_ATTRIBUTE = "PLCLSegmentation.VolumeSummary"


def summary_text(chart: Any, frame_names: Sequence[str]) -> str:
    """One line per structure: its largest and smallest volume, with frames, and the ejection fraction."""
    try:
        values = json.loads(chart.GetAttribute(SUMMARY_ATTRIBUTE) or "{}")
    except ValueError:
        return ""
    lines = []
    for name, info in values.items() if isinstance(values, dict) else ():
        try:
            text = (f"{name}: {float(info['max_ml']):.1f} ml ({frame_names[int(info['max_frame'])]}) to "
                    f"{float(info['min_ml']):.1f} ml ({frame_names[int(info['min_frame'])]})")
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        if info.get("ejection_fraction") is not None:
            text += f", ejection fraction {float(info['ejection_fraction']):.0f}%"
        lines.append(text)
    return "\n".join(lines)


def replace_results(services: SlicerServices, record: VolumeRecord, warnings: list[str]) -> None:
    """Remove the sequence's previous results (this module's), unless the user edited a predicted frame
    without accepting it: then that segmentation sequence is kept, out of the browser."""
    scene = services.scene
    old = record.segmentation
    if old is not None and is_owned(old) and old.GetScene() is not None:
        edited = []
        for frame, info in record.frames.items():
            if info.role != PREDICTED or not info.fingerprint:
                continue
            item = old.GetDataNodeAtValue(record.sequence.GetNthIndexValue(frame), True)
            if item is not None and scene_io.fingerprint(item) != info.fingerprint:
                edited.append(frame)
        if edited:
            warnings.append(f"'{old.GetName()}' has frames edited but not accepted ({', '.join(map(str, edited))}); "
                            "it is kept beside the new one, out of the sequence browser")
            proxy = record.browser.GetProxyNode(old)
            record.browser.RemoveSynchronizedSequenceNode(old.GetID())
            if proxy is not None and is_owned(proxy):
                scene_io.remove_node(scene, proxy)
        else:
            sequences.remove_from_browser(scene, record.browser, old)
    if record.uncertainty is not None and is_owned(record.uncertainty):
        sequences.remove_from_browser(scene, record.browser, record.uncertainty)


def remove_old_curves(scene: Any, record_key: str, keep: Any) -> None:
    stale = []
    for node_class in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode"):
        for index in range(scene.GetNumberOfNodesByClass(node_class)):
            node = scene.GetNthNodeByClass(index, node_class)
            if node.GetAttribute(plots.CURVE_RECORD_ATTRIBUTE) == record_key \
                    and node.GetAttribute(OWNER_ATTRIBUTE) in (plots.CURVE_TABLE, plots.CURVE_CHART,
                                                               plots.CURVE_SERIES) \
                    and (keep is None or node.GetID() not in keep):
                stale.append(node)
    for node in stale:
        scene_io.remove_node(scene, node)


def volume_curve(scene: Any, record_key: str) -> Any:
    """The chart of the volume curve of a sequence record, if any."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLPlotChartNode")
        if node.GetAttribute(plots.CURVE_RECORD_ATTRIBUTE) == record_key \
                and node.GetAttribute(OWNER_ATTRIBUTE) == plots.CURVE_CHART:
            return node
    return None


def apply(imported: Imported, warnings: list[str], services: SlicerServices) -> None:
    """The run succeeded: the record takes its new results."""
    record = imported.record
    replace_results(services, record, warnings)
    keep = None
    if imported.chart is not None:
        chart = imported.chart
        keep = {chart.GetID(), *(chart.GetNthPlotSeriesNodeID(i) for i in range(chart.GetNumberOfPlotSeriesNodes()))}
        series = chart.GetNthPlotSeriesNode(0)
        if series is not None and series.GetTableNodeID():
            keep.add(series.GetTableNodeID())
    remove_old_curves(services.scene, record.key, keep)
    record.segmentation, record.uncertainty, record.frames = imported.segmentation, imported.uncertainty, \
        imported.frames
    record.review = imported.review
    scores = [f.score for f in record.frames.values() if f.role == PREDICTED and f.score is not None]
    record.score = max(scores) if scores else None
    if record.role != EXCLUDED:
        record.role = record.sequence_role()


def show_nodes(services: SlicerServices, record: VolumeRecord, frame: int | None,
               with_uncertainty: bool) -> tuple[Any, Any]:
    """Move the browser to ``frame`` (if given); (segmentation proxy, uncertainty proxy or None)."""
    if frame is not None:
        sequences.check_frame(record.sequence, frame)
        record.browser.SetSelectedItemNumber(frame)
        sequences.update_proxies(services, record.browser)
    shown = current_frame(record)
    segmentation = record.browser.GetProxyNode(record.segmentation) if record.segmentation is not None else None
    info = record.frames.get(shown)
    uncertainty = None
    if with_uncertainty and record.uncertainty is not None and info is not None and info.role == PREDICTED:
        uncertainty = record.browser.GetProxyNode(record.uncertainty)
    return segmentation, uncertainty


def accept(services: SlicerServices, record: VolumeRecord, frame: int | None) -> int:
    """The user reviewed (and corrected) the prediction of a frame: it becomes training data, whole."""
    frame = current_frame(record) if frame is None else frame
    info = record.frames.get(frame)
    if info is None or info.role != PREDICTED or record.segmentation is None:
        raise PLCLError(f"Frame {frame} of '{record.name}' has no prediction to accept.")
    if current_frame(record) == frame:  # the latest edits of the proxy are in the sequence
        sequences.save_proxy(services, record.browser, record.browser.GetProxyNode(record.segmentation))
    item = sequences.frame_segmentation(record.segmentation, record.sequence, frame)
    record.frames[frame] = FrameRecord(REVIEWED, None, scene_io.segment_ids(item))
    record.role = ANNOTATED
    return frame

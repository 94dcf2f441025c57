"""Everything the module remembers, kept in the scene so a saved scene reopens where the user left off.

The state lives in the module's parameter node, the singleton ``vtkMRMLScriptedModuleNode`` that
``ScriptedLoadableModuleLogic.getParameterNode()`` also finds (same singleton tag and ``ModuleName``
attribute), so it is saved and loaded with the scene:

* settings are string parameters (budget, device, model path, ...); the Python interpreter is not
  among them: a scene comes from anyone, so the program that runs the engine is an application
  setting of this machine (services.PYTHON_SETTING);
* each volume the module knows is a *record*: its role and scores in the JSON parameter ``volumes``,
  keyed by a short random key, and its nodes as node references ``plclVolume_<key>``,
  ``plclSegmentation_<key>`` and ``plclUncertainty_<key>``. Node references follow node ID changes
  when a scene is imported and disappear when a node is deleted, which strings would not.
* a volume sequence (cine) is one record too: its volume is the browser's proxy volume, with
  ``plclBrowser_<key>`` and ``plclSequence_<key>``; its segmentation and uncertainty are this
  module's sequences synchronised in that browser; each frame the user annotated, accepted or got a
  prediction for is a *frame* of the record (``frames`` in the JSON), the annotation of frame i
  referenced as ``plclFrame_<key>_<i>`` (a segmentation node, or a segmentation sequence).
* a prediction's review (review.py): each structure's estimated Dice in the record (and frame), the
  slices of a predicted volume the user accepted alone (``accepted``), and, in a JSON parameter of
  its own per record (``plclReview_<key>``, read only when needed), its slices least certain first
  and those the user visited.

Qt-free: works with slicer-core in tests and in the Slicer application.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from .engine.protocol import BUDGETS, DEFAULT_BUDGET, DEFAULT_DEVICE, DEVICES
from .services import MODULE_NAME

# Roles of a volume.
ANNOTATED = "annotated"  # the user segmented it: training data
REVIEWED = "reviewed"  # a prediction the user corrected and accepted: training data
PREDICTED = "predicted"  # segmented by the model, waiting for review
UNANNOTATED = "unannotated"  # to be segmented by the next run
EXCLUDED = "excluded"  # ignored

ROLES = (ANNOTATED, REVIEWED, PREDICTED, UNANNOTATED, EXCLUDED)

# Kinds of a record (items.py): one volume, or a volume sequence (cine) in a sequence browser.
VOLUME = "volume"
SEQUENCE = "sequence"
TRAINING_ROLES = (ANNOTATED, REVIEWED)

# Which slices of an annotated volume are annotated (engine: --annotated-slices).
SLICES_AUTO = "auto"  # only the painted ones where unpainted ones lie between them or fewer than half are painted
SLICES_ALL = "all"  # every slice: unpainted slices teach background
SLICES_PAINTED = "painted"  # the painted slices and those marked as background
SLICE_MODES = (SLICES_AUTO, SLICES_ALL, SLICES_PAINTED)
TARGET_ROLES = (UNANNOTATED, PREDICTED)

#: Settings and their defaults (all stored as strings).
SETTINGS: dict[str, str] = {
    "budget": DEFAULT_BUDGET,
    "device": DEFAULT_DEVICE,
    "iterations": "0",  # 0: the budget's own schedule
    "modelPath": "",  # the current model (model.pt)
    "showUncertainty": "true",
    "uncertaintyOpacity": "0.4",
    "classes": "[]",  # the current model's classes: [{value, name, color, terminology}]
    "lastRun": "{}",  # {kind, elapsed_s, out, finished}
}

_VOLUME = "plclVolume_"
_SEGMENTATION = "plclSegmentation_"
_UNCERTAINTY = "plclUncertainty_"
_BROWSER = "plclBrowser_"
_SEQUENCE = "plclSequence_"
_FRAME = "plclFrame_"
_REVIEW = "plclReview_"


@dataclass
class FrameRecord:
    """One frame of a sequence record: annotated by the user, accepted (reviewed) or predicted."""

    role: str  # ANNOTATED, REVIEWED or PREDICTED
    source: Any = None  # annotated: the user's segmentation node, or segmentation sequence, of this frame
    segment_ids: list[str] = field(default_factory=list)  # annotated: the segments to learn
    score: float | None = None  # predicted: uncertainty score
    fingerprint: str = ""  # predicted: of the frame's segmentation when imported
    structures: list[dict[str, Any]] = field(default_factory=list)  # predicted: estimated Dice, worst first

    @property
    def is_training(self) -> bool:
        return self.role in TRAINING_ROLES


@dataclass
class VolumeRecord:
    """One volume the module knows, with its role and nodes."""

    key: str
    role: str
    volume: Any = None  # vtkMRMLScalarVolumeNode
    segmentation: Any = None  # the annotation (annotated, reviewed) or the prediction (predicted)
    uncertainty: Any = None  # vtkMRMLScalarVolumeNode or None
    segment_ids: list[str] = field(default_factory=list)  # annotated: the segments to learn
    score: float | None = None  # uncertainty score of the prediction (higher: less certain)
    fingerprint: str = ""  # of the prediction when imported: tells whether the user edited it
    slices: str = SLICES_AUTO  # annotated: which slices are annotated (SLICE_MODES)
    background: list[int] = field(default_factory=list)  # annotated: slices marked as painted background
    cine: bool = False  # a volume sequence (its nodes below may have been deleted since)
    browser: Any = None  # a sequence: its vtkMRMLSequenceBrowserNode (volume is the browser's proxy volume)
    sequence: Any = None  # a sequence: the volume vtkMRMLSequenceNode
    frames: dict[int, FrameRecord] = field(default_factory=dict)  # a sequence: its frames, by frame index
    structures: list[dict[str, Any]] = field(default_factory=list)  # predicted: estimated Dice, worst first
    accepted: list[int] = field(default_factory=list)  # predicted: slices the user accepted alone (file indices)
    #: predicted: each slice's digest of the prediction when imported (scene_io.slice_digests): which slices
    #: the user edited, so a retrain's new prediction replaces one edited on its accepted slices only.
    slice_digests: list[str] = field(default_factory=list)
    #: New review data (review.py) to store with the record; None: what is stored stays (read it with
    #: ModuleState.review).
    review: dict[str, Any] | None = None

    @property
    def is_sequence(self) -> bool:
        return self.cine

    def training_frames(self) -> list[int]:
        return sorted(i for i, f in self.frames.items() if f.is_training)

    def sequence_role(self) -> str:
        """A sequence's role from its frames: annotated while any frame is training data."""
        if self.role == EXCLUDED and not self.training_frames():
            return EXCLUDED
        if self.training_frames():
            return ANNOTATED
        return PREDICTED if any(f.role == PREDICTED for f in self.frames.values()) else UNANNOTATED

    @property
    def name(self) -> str:
        return self.volume.GetName() if self.volume is not None else "?"

    @property
    def is_training(self) -> bool:
        return self.role in TRAINING_ROLES

    @property
    def is_target(self) -> bool:
        return self.role in TARGET_ROLES

    @property
    def has_accepted_slices(self) -> bool:
        """A prediction of which the user accepted some slices alone: those slices are training data."""
        return self.role == PREDICTED and bool(self.accepted) and not self.cine


class ModuleState:
    """Typed access to the module's parameter node in ``scene`` (created when missing)."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    # --- the node -------------------------------------------------------------------------------
    @property
    def node(self) -> Any:
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node = self.scene.AddNode(node)
        elif node.GetAttribute("ModuleName") != MODULE_NAME:  # removed by a scene close
            node.SetAttribute("ModuleName", MODULE_NAME)
        return node

    # --- settings -------------------------------------------------------------------------------
    def get(self, name: str) -> str:
        if name not in SETTINGS:
            raise KeyError(name)
        node = self.node
        return node.GetParameter(name) if node.HasParameter(name) else SETTINGS[name]

    def set(self, name: str, value: Any) -> None:
        if name not in SETTINGS:
            raise KeyError(name)
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        if isinstance(value, bool):
            text = "true" if value else "false"
        if self.get(name) != text or not self.node.HasParameter(name):
            self.node.SetParameter(name, text)

    @property
    def budget(self) -> str:
        value = self.get("budget")
        return value if value in BUDGETS else SETTINGS["budget"]

    @property
    def device(self) -> str:
        value = self.get("device")
        return value if value in DEVICES else SETTINGS["device"]

    @property
    def iterations(self) -> int:
        try:
            return max(0, int(self.get("iterations")))
        except ValueError:
            return 0

    @property
    def model_path(self) -> str:
        return self.get("modelPath")

    @property
    def show_uncertainty(self) -> bool:
        return self.get("showUncertainty").lower() == "true"

    @property
    def uncertainty_opacity(self) -> float:
        try:
            return min(1.0, max(0.0, float(self.get("uncertaintyOpacity"))))
        except ValueError:
            return float(SETTINGS["uncertaintyOpacity"])

    @property
    def classes(self) -> list[dict[str, Any]]:
        return _json(self.get("classes"), [])

    @property
    def last_run(self) -> dict[str, Any]:
        return _json(self.get("lastRun"), {})

    # --- records --------------------------------------------------------------------------------
    def _table(self) -> dict[str, dict[str, Any]]:
        node = self.node
        return _json(node.GetParameter("volumes"), {}) if node.HasParameter("volumes") else {}

    def records(self) -> list[VolumeRecord]:
        """Every record whose volume is still in the scene, in the order they were added."""
        node = self.node
        result = []
        for key, values in self._table().items():
            volume = node.GetNodeReference(_VOLUME + key)
            if volume is None:
                continue
            frames = {}
            for index, frame in (values.get("frames") or {}).items():
                if not (isinstance(frame, dict) and frame.get("role") in (ANNOTATED, REVIEWED, PREDICTED)):
                    continue
                frames[int(index)] = FrameRecord(
                    frame["role"], node.GetNodeReference(f"{_FRAME}{key}_{int(index)}"),
                    list(frame.get("segments", [])), frame.get("score"), frame.get("fingerprint", ""),
                    _structures(frame.get("structures")))
            result.append(VolumeRecord(
                key=key, role=values.get("role", UNANNOTATED) if values.get("role") in ROLES else UNANNOTATED,
                volume=volume, segmentation=node.GetNodeReference(_SEGMENTATION + key),
                uncertainty=node.GetNodeReference(_UNCERTAINTY + key),
                segment_ids=list(values.get("segments", [])), score=values.get("score"),
                fingerprint=values.get("fingerprint", ""),
                slices=values.get("slices") if values.get("slices") in SLICE_MODES else SLICES_AUTO,
                background=[int(i) for i in values.get("background", []) if isinstance(i, int)],
                cine=bool(values.get("cine")), browser=node.GetNodeReference(_BROWSER + key),
                sequence=node.GetNodeReference(_SEQUENCE + key),
                frames=frames, structures=_structures(values.get("structures")),
                accepted=sorted({int(i) for i in values.get("accepted", []) if isinstance(i, int)}),
                slice_digests=[str(d) for d in values.get("sliceDigests", []) if isinstance(d, str)]))
        return result

    def record_for(self, volume: Any) -> VolumeRecord | None:
        if volume is None:
            return None
        for record in self.records():
            if record.volume.GetID() == volume.GetID():
                return record
        return None

    @staticmethod
    def new_key() -> str:
        return uuid.uuid4().hex[:10]

    def new_record(self, volume: Any, role: str = UNANNOTATED) -> VolumeRecord:
        record = VolumeRecord(key=self.new_key(), role=role, volume=volume)
        self.save(record)
        return record

    def save(self, *records: VolumeRecord) -> None:
        """Write records (in one modification of the node)."""
        node = self.node
        table = self._table()
        was_modifying = node.StartModify()
        try:
            for record in records:
                if record.role not in ROLES:
                    raise ValueError(f"unknown role {record.role!r}")
                old_frames = (table.get(record.key) or {}).get("frames") or {}
                table[record.key] = {"role": record.role, "segments": list(record.segment_ids),
                                     "score": record.score, "fingerprint": record.fingerprint,
                                     "slices": record.slices, "background": sorted(set(record.background)),
                                     "structures": record.structures, "accepted": sorted(set(record.accepted)),
                                     "sliceDigests": list(record.slice_digests)}
                node.SetNodeReferenceID(_VOLUME + record.key, _id(record.volume))
                node.SetNodeReferenceID(_SEGMENTATION + record.key, _id(record.segmentation))
                node.SetNodeReferenceID(_UNCERTAINTY + record.key, _id(record.uncertainty))
                if record.is_sequence:
                    table[record.key]["cine"] = True
                    table[record.key]["frames"] = {
                        str(i): {"role": f.role, "segments": list(f.segment_ids), "score": f.score,
                                 "fingerprint": f.fingerprint, "structures": f.structures}
                        for i, f in sorted(record.frames.items())}
                    node.SetNodeReferenceID(_BROWSER + record.key, _id(record.browser))
                    node.SetNodeReferenceID(_SEQUENCE + record.key, _id(record.sequence))
                for index in {int(i) for i in old_frames} - set(record.frames):
                    node.RemoveNodeReferenceIDs(f"{_FRAME}{record.key}_{index}")
                for index, frame in record.frames.items():
                    node.SetNodeReferenceID(f"{_FRAME}{record.key}_{index}", _id(frame.source))
                if record.review is not None:
                    node.SetParameter(_REVIEW + record.key, json.dumps(record.review))
            node.SetParameter("volumes", json.dumps(table))
        finally:
            node.EndModify(was_modifying)

    def remove(self, key: str) -> None:
        node = self.node
        table = self._table()
        was_modifying = node.StartModify()
        try:
            frames = (table.pop(key, None) or {}).get("frames") or {}
            for prefix in (_VOLUME, _SEGMENTATION, _UNCERTAINTY, _BROWSER, _SEQUENCE):
                node.RemoveNodeReferenceIDs(prefix + key)
            for index in frames:
                node.RemoveNodeReferenceIDs(f"{_FRAME}{key}_{index}")
            node.UnsetParameter(_REVIEW + key)
            node.SetParameter("volumes", json.dumps(table))
        finally:
            node.EndModify(was_modifying)

    def review(self, key: str) -> dict[str, Any]:
        """The stored review data of record ``key`` (review.py reads it); {} if none."""
        node = self.node
        return _json(node.GetParameter(_REVIEW + key), {}) if node.HasParameter(_REVIEW + key) else {}

    def snapshot(self) -> dict[str, Any]:
        """The settings and records, to be merged back after a scene import (see :meth:`merge_import`)."""
        node = self.node
        records = self.records()
        for record in records:
            record.review = self.review(record.key)
        return {"settings": {name: node.GetParameter(name) for name in SETTINGS if node.HasParameter(name)},
                "records": records}

    def merge_import(self, before: dict[str, Any]) -> None:
        """A scene imported with Add Data may carry this module's parameter node: being a singleton, its
        content replaces ours. Keep our settings and records, and add the imported records."""
        node = self.node
        was_modifying = node.StartModify()
        try:
            for name, value in before["settings"].items():
                node.SetParameter(name, value)
            ours = before["records"]
            self.save(*ours)
            volumes = {r.volume.GetID(): r.key for r in ours}
            for record in self.records():  # one record per volume: ours win
                if volumes.get(record.volume.GetID(), record.key) != record.key:
                    self.remove(record.key)
        finally:
            node.EndModify(was_modifying)

    def prune(self) -> None:
        """Forget records whose volume was deleted from the scene."""
        node = self.node
        for key in list(self._table()):
            if node.GetNodeReference(_VOLUME + key) is None:
                self.remove(key)


def _structures(value: Any) -> list[dict[str, Any]]:
    """A stored list of structures (review.py), without entries that are not objects."""
    return [dict(s) for s in value if isinstance(s, dict)] if isinstance(value, list) else []


def _id(node: Any) -> str | None:
    return node.GetID() if node is not None else None


def _json(text: str, default: Any) -> Any:
    try:
        value = json.loads(text) if text else default
    except json.JSONDecodeError:
        return default
    return value if isinstance(value, type(default)) else default

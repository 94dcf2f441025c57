"""What the Qt-free logic needs from Slicer: the scene and a few module logics.

In Slicer, :meth:`SlicerServices.from_slicer` takes them from the running application. In tests,
they are made from ``slicer-core`` (a real MRML scene and real module logics, no Qt).
Nothing here imports ``slicer`` or ``qt`` at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

MODULE_NAME = "PLCLSegmentation"

#: Node attribute marking a node this module created (a prediction, an uncertainty map, a plot...).
#: Nodes without it belong to the user and are never modified or removed.
OWNER_ATTRIBUTE = "PLCLSegmentation.Output"


def _identity(text: str) -> str:
    return text


_translate: Callable[[str], str] | None = None


def tr(text: str) -> str:
    """Translate a user-facing string with Slicer's i18n when it is available (identity otherwise)."""
    global _translate
    if _translate is None:
        try:
            from slicer.i18n import tr as slicer_tr  # only in the Slicer application

            _translate = slicer_tr
        except Exception:  # slicer-core has no i18n module; plain strings then
            _translate = _identity
    return _translate(text)


class PLCLError(RuntimeError):
    """A problem the user can fix, reported as one clear line."""


@dataclass
class SlicerServices:
    """The MRML scene and the module logics the logic works with."""

    scene: Any  # vtkMRMLScene
    segmentations: Any  # vtkSlicerSegmentationsModuleLogic

    @classmethod
    def from_slicer(cls) -> SlicerServices:
        import slicer

        return cls(scene=slicer.mrmlScene, segmentations=slicer.modules.segmentations.logic())

    def subject_hierarchy(self) -> Any:
        import slicer

        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)


def is_owned(node: Any) -> bool:
    """True if this module created ``node``."""
    return node is not None and bool(node.GetAttribute(OWNER_ATTRIBUTE))


def mark_owned(node: Any, kind: str) -> None:
    node.SetAttribute(OWNER_ATTRIBUTE, kind)

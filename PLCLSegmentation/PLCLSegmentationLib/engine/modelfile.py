"""The model file: weights and everything needed to apply them, loaded without running code.

A ``.pt`` file holding only tensors and plain Python values, read with
``torch.load(weights_only=True)``, which refuses pickled objects, so opening a model file
received from someone else cannot execute code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import __version__
from .network import UNet2D
from .volumes import ClassInfo, InputError, atomic_path

FORMAT = "plcl-segmentation-model"
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    """What a model needs besides its weights."""

    classes: list[ClassInfo]  # foreground classes in network order (network index = position + 1)
    target_spacing_mm: float
    patch_size: int
    base_channels: int
    levels: int
    embedding_dim: int
    intensity_percentiles: tuple[float, float]
    inference_tile: int = 256
    inference_overlap: float = 0.25
    largest_component: bool = False
    background_name: str = "background"
    #: World directions of the rows and columns of the training slices; new volumes are sliced to
    #: match (None in models of engine 0.1.0 before it existed: the canonical layout).
    in_plane_reference: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    engine_version: str = __version__

    @property
    def num_classes(self) -> int:
        return len(self.classes) + 1

    def build_network(self) -> UNet2D:
        return UNet2D(self.num_classes, self.base_channels, self.levels, self.embedding_dim)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [c.to_dict() for c in self.classes],
            "target_spacing_mm": float(self.target_spacing_mm),
            "patch_size": int(self.patch_size),
            "architecture": {"name": "unet2d", "base_channels": self.base_channels, "levels": self.levels,
                             "embedding_dim": self.embedding_dim, "in_channels": 1,
                             "num_classes": self.num_classes},
            "normalisation": {"method": "percentile_minmax_clip",
                              "percentiles": [float(p) for p in self.intensity_percentiles]},
            "slicing": "nearest canonical LPS orientation, slices along the coarsest axis, in-plane axes "
                       "turned to match in_plane_reference (world directions of rows and columns)",
            "in_plane_reference": None if self.in_plane_reference is None
            else [[float(x) for x in axis] for axis in self.in_plane_reference],
            "inference_tile": int(self.inference_tile),
            "inference_overlap": float(self.inference_overlap),
            "largest_component": bool(self.largest_component),
            "background_name": self.background_name,
            "training": self.training,
            "engine_version": self.engine_version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        arch = d["architecture"]
        return cls(
            classes=[ClassInfo.from_dict(c) for c in d["classes"]],
            target_spacing_mm=float(d["target_spacing_mm"]),
            patch_size=int(d["patch_size"]),
            base_channels=int(arch["base_channels"]),
            levels=int(arch["levels"]),
            embedding_dim=int(arch["embedding_dim"]),
            intensity_percentiles=tuple(d["normalisation"]["percentiles"]),
            inference_tile=int(d.get("inference_tile", 256)),
            inference_overlap=float(d.get("inference_overlap", 0.25)),
            largest_component=bool(d.get("largest_component", False)),
            background_name=d.get("background_name", "background"),
            in_plane_reference=_frame(d.get("in_plane_reference")),
            training=d.get("training", {}),
            engine_version=d.get("engine_version", "unknown"),
        )


def _frame(value: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    if value is None:
        return None
    row, column = (tuple(float(x) for x in axis) for axis in value)
    if len(row) != 3 or len(column) != 3:
        raise ValueError("in_plane_reference must be two 3-vectors")
    return row, column


def save_model(path: str | os.PathLike[str], model: torch.nn.Module, info: ModelInfo) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info.to_dict(), "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_model(path: str | os.PathLike[str]) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(path, "model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have many types
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise InputError(path, f"is not a readable PLCLSegmentation model file ({message})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, "is not a PLCLSegmentation model file")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(path, f"was written by a newer PLCLSegmentation (model format "
                               f"{payload['format_version']}); please update")
    return ModelInfo.from_dict(payload["info"]), payload["state_dict"]


def load_model(path: str | os.PathLike[str], device: torch.device) -> tuple[UNet2D, ModelInfo]:
    info, state = read_model(path)
    model = info.build_network()
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise InputError(str(path), "weights do not match the architecture the file describes") from None
    return model.to(device).eval(), info

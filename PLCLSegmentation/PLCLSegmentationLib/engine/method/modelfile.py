"""The model file: weights and everything needed to apply them, loaded without running code.

A ``.pt`` file holding only tensors and plain Python values, read with
``torch.load(weights_only=True)``, which refuses pickled objects, so opening a model file
received from someone else cannot execute code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ... import __version__
from ..config import MOST_SLICE_CONTEXT, most_embedding_levels
from ..errors import InputError
from ..files.volumes import ClassInfo, atomic_path
from .components import legacy_objects
from .network import UNet2D
from .preprocess import input_channels

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
    #: Per class (background first), the shares of its outline that border each class in the annotated
    #: slices of the training (quality.neighbour_shares): what a structure's place looks like, for the
    #: quality estimate (None in models before it existed: not used).
    neighbour_shares: tuple[tuple[float, ...], ...] | None = None
    #: Per class (background first), the share of the slices holding any structure that hold it in the annotated
    #: whole volumes of the training (quality.slice_coverage): how far each structure reaches, for the quality
    #: estimate (None in models before it existed, or annotated on a few slices only: not used).
    slice_coverage: tuple[float, ...] | None = None
    #: Decoder levels with a contrastive projection head (TrainConfig.embedding_levels; 1 in files before it).
    embedding_levels: int = 1
    #: Neighbouring slices on each side fed beside each slice (TrainConfig.slice_context; 0 in files before it).
    slice_context: int = 0
    #: Which structures the annotations showed as one object (components.single_objects: all structures
    #: together first, then each class), kept as their largest piece where ``largest_component`` is on; None in
    #: models before it existed: each class's largest piece (components.legacy_objects).
    single_objects: tuple[bool, ...] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    engine_version: str = __version__

    @property
    def num_classes(self) -> int:
        return len(self.classes) + 1

    @property
    def cleanup_objects(self) -> tuple[bool, ...] | None:
        """The structures a prediction keeps as their largest piece (components.keep_largest_components);
        None: no clean-up."""
        if not self.largest_component:
            return None
        return self.single_objects if self.single_objects is not None else legacy_objects(self.num_classes)

    def build_network(self, initialise: bool = True) -> UNet2D:
        """The described network; ``initialise=False`` leaves the weights as allocated, for weights
        that are loaded next (or shapes that are only compared)."""
        return UNet2D(self.num_classes, self.base_channels, self.levels, self.embedding_dim, initialise=initialise,
                      embedding_levels=self.embedding_levels, in_channels=self.in_channels)

    @property
    def in_channels(self) -> int:
        """The network's input channels: the slice and its neighbours (preprocess.with_neighbours)."""
        return input_channels(self.slice_context)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [c.to_dict() for c in self.classes],
            "target_spacing_mm": float(self.target_spacing_mm),
            "patch_size": int(self.patch_size),
            "architecture": {"name": "unet2d", "base_channels": self.base_channels, "levels": self.levels,
                             "embedding_dim": self.embedding_dim, "embedding_levels": self.embedding_levels,
                             "in_channels": self.in_channels, "slice_context": self.slice_context,
                             "num_classes": self.num_classes},
            "normalisation": {"method": "percentile_minmax_clip",
                              "percentiles": [float(p) for p in self.intensity_percentiles]},
            "slicing": "nearest canonical LPS orientation, slices along the coarsest axis, in-plane axes "
                       "turned to match in_plane_reference (world directions of rows and columns)",
            "in_plane_reference": None if self.in_plane_reference is None
            else [[float(x) for x in axis] for axis in self.in_plane_reference],
            "neighbour_shares": None if self.neighbour_shares is None
            else [[float(x) for x in row] for row in self.neighbour_shares],
            "slice_coverage": None if self.slice_coverage is None else [float(x) for x in self.slice_coverage],
            "inference_tile": int(self.inference_tile),
            "inference_overlap": float(self.inference_overlap),
            "largest_component": bool(self.largest_component),
            "single_objects": None if self.single_objects is None else [bool(x) for x in self.single_objects],
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
            embedding_levels=int(arch.get("embedding_levels", 1)),
            slice_context=int(arch.get("slice_context", 0)),
            intensity_percentiles=_numbers(d["normalisation"]["percentiles"], "normalisation percentiles"),
            inference_tile=int(d.get("inference_tile", 256)),
            inference_overlap=float(d.get("inference_overlap", 0.25)),
            largest_component=bool(d.get("largest_component", False)),
            single_objects=_flags(d.get("single_objects"), len(d["classes"]) + 1),
            background_name=d.get("background_name", "background"),
            in_plane_reference=_frame(d.get("in_plane_reference")),
            neighbour_shares=_shares(d.get("neighbour_shares"), len(d["classes"]) + 1),
            slice_coverage=_coverage(d.get("slice_coverage"), len(d["classes"]) + 1),
            training=d.get("training", {}),
            engine_version=d.get("engine_version", "unknown"),
        )


def _numbers(value: Any, name: str) -> tuple[float, ...]:
    """A list of numbers, as numbers: text such as "1.0" is a malformed file, not a number."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value):
        raise ValueError(f"{name} {value!r}: a list of finite numbers expected")
    return tuple(float(x) for x in value)


def _flags(value: Any, num_classes: int) -> tuple[bool, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != num_classes or not all(isinstance(x, bool) for x in value):
        raise ValueError(f"single_objects: {num_classes} true or false values expected")
    return tuple(value)


def _shares(value: Any, num_classes: int) -> tuple[tuple[float, ...], ...] | None:
    """A square table of shares in [0, 1], one row and column per class, or None."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != num_classes:
        raise ValueError(f"neighbour_shares: {num_classes} rows expected")
    return tuple(_share_row(row, num_classes, "neighbour_shares", " in each row") for row in value)


def _coverage(value: Any, num_classes: int) -> tuple[float, ...] | None:
    """One share in [0, 1] per class, or None."""
    return None if value is None else _share_row(value, num_classes, "slice_coverage")


def _share_row(value: Any, num_classes: int, name: str, where: str = "") -> tuple[float, ...]:
    """``num_classes`` shares in [0, 1] (a ValueError naming ``name`` otherwise)."""
    shares = _numbers(value, name)
    if len(shares) != num_classes or not all(0.0 <= x <= 1.0 for x in shares):
        raise ValueError(f"{name}: {num_classes} shares between 0 and 1 expected{where}")
    return shares


def _frame(value: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """Two orthogonal unit 3-vectors (world directions of rows and columns), or None."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"in_plane_reference {value!r}: two 3-vectors expected")
    row, column = (_numbers(axis, "in_plane_reference") for axis in value)
    if len(row) != 3 or len(column) != 3:
        raise ValueError(f"in_plane_reference {value!r}: two 3-vectors expected")
    norms = [math.sqrt(sum(x * x for x in axis)) for axis in (row, column)]
    if any(abs(n - 1.0) > 1e-3 for n in norms) or abs(sum(a * b for a, b in zip(row, column))) > 1e-3:
        raise ValueError(f"in_plane_reference {value!r}: two orthogonal unit vectors expected")
    return row, column


def save_model(path: str | os.PathLike[str], model: torch.nn.Module, info: ModelInfo) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if _non_finite(state):  # a model that predicts nothing must never look like a result
        raise InputError(str(path), "not written: the weights hold NaN or infinite values (the training diverged)")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info.to_dict(), "state_dict": state}
    write_torch_file(path, payload)


class _RecordingFile:
    """A file whose write errors are kept: torch.save reports a failed write as a RuntimeError
    ("unexpected pos ...") without the reason, which the OSError kept here gives (disk full, file too large)."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def write_torch_file(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """``payload`` saved with torch.save, atomically; a failed write is an OutputError naming ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        recording = _RecordingFile(f)
        try:
            torch.save(payload, recording)
        except RuntimeError:
            if recording.error is not None:
                raise recording.error from None
            raise


def read_model(path: str | os.PathLike[str]) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """The model's description and weights, every field checked (an InputError naming the file)
    before anything is allocated."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(path, "model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:  # unreadable (permission denied, ...), not damaged
        raise InputError(path, f"cannot be read ({error.strerror or error})") from None
    except Exception as error:  # unpickling errors have many types
        raise InputError(path, f"is not a PLCLSegmentation model file ({_load_problem(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, "is not a PLCLSegmentation model file")
    version = payload.get("format_version", 0)
    if not isinstance(version, int):
        raise InputError(path, f"is not a valid PLCLSegmentation model file (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise InputError(path, f"was written by a newer PLCLSegmentation (model format {version}); please update")
    try:
        info = ModelInfo.from_dict(payload["info"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        field_name = f"field {error}" if isinstance(error, KeyError) else str(error)
        raise InputError(path, f"is not a valid PLCLSegmentation model file (missing or malformed {field_name})") \
            from None
    problem = model_info_problem(info, payload["info"]) or _weights_problem(info, payload.get("state_dict"))
    if problem:
        raise InputError(path, f"is not a valid PLCLSegmentation model file ({problem})")
    return info, payload["state_dict"]


def _load_problem(error: Exception) -> str:
    """Why torch.load refused the file, in our words: PyTorch's own message suggests loading with
    ``weights_only=False``, which would run whatever code the file holds; never pass that on."""
    text = str(error)
    if "weights_only" in text or "Unsupported global" in text or "Unpickl" in type(error).__name__:
        return "it holds Python objects other than weights and settings; a model file of this tool never " \
               "does, so it was refused without running them"
    return "damaged, or not a file written by torch.save"


#: Bounds of the architecture and geometry fields: anything outside is a damaged or forged file.
_LIMITS = {"base_channels": (1, 256), "levels": (1, 8), "embedding_dim": (1, 1024), "patch_size": (8, 4096),
           "inference_tile": (16, 4096)}


def model_info_problem(info: ModelInfo, raw: dict[str, Any]) -> str | None:
    arch = raw.get("architecture", {})
    if arch.get("name") != "unet2d" or arch.get("in_channels", 1) != info.in_channels:
        return (f"architecture {arch.get('name')!r} with {arch.get('in_channels')} input channels; unet2d with "
                f"{info.in_channels} expected (slice_context {info.slice_context})")
    if not 0 <= info.slice_context <= MOST_SLICE_CONTEXT:
        return f"slice_context {info.slice_context}; 0 to {MOST_SLICE_CONTEXT} expected"
    if arch.get("num_classes", info.num_classes) != info.num_classes:
        return f"architecture.num_classes {arch.get('num_classes')} but {len(info.classes)} classes"
    for name, (low, high) in _LIMITS.items():
        value = getattr(info, name)
        if not low <= value <= high:
            return f"{name} {value}; {low} to {high} expected"
    most = most_embedding_levels(info.levels)
    if not 1 <= info.embedding_levels <= most:
        return f"embedding_levels {info.embedding_levels}; 1 to {most} expected with {info.levels} levels"
    if not info.classes or len(info.classes) > 254:
        return f"{len(info.classes)} classes; 1 to 254 expected"
    values = [c.value for c in info.classes]
    if any(not 1 <= v <= 255 for v in values) or len(set(values)) != len(values):
        return f"class values {values}; distinct values from 1 to 255 expected"
    names = [c.name.casefold() for c in info.classes]
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        return f"class names {[c.name for c in info.classes]}; distinct, non-empty names expected"
    if not (math.isfinite(info.target_spacing_mm) and 1e-3 <= info.target_spacing_mm <= 1e3):
        return f"target_spacing_mm {info.target_spacing_mm}; 0.001 to 1000 mm expected"
    percentiles = [float(p) for p in info.intensity_percentiles]
    if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
        return f"normalisation percentiles {list(info.intensity_percentiles)}; 0 <= low < high <= 100 expected"
    if not 0 <= info.inference_overlap <= 0.9:
        return f"inference_overlap {info.inference_overlap}; 0 to 0.9 expected"
    return None


def _weights_problem(info: ModelInfo, state: Any) -> str | None:
    """Weights of exactly the described architecture, compared on the meta device (no memory)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "state_dict is not a set of tensors"
    with torch.device("meta"):  # not initialised: random draws on the meta device import torch's compiler (~1 s)
        expected = {k: tuple(v.shape) for k, v in info.build_network(initialise=False).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
        return f"weights do not match the architecture the file describes ({wrong[0]})"
    bad = _non_finite(state)
    if bad:
        return f"weights {bad} hold NaN or infinite values (a training that diverged?)"
    return None


def _non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor of ``state`` holding NaN or infinite values, or None."""
    return next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


def build_model(path: str | os.PathLike[str], info: ModelInfo, state: dict[str, torch.Tensor],
                device: torch.device) -> UNet2D:
    """The network of a checked model file (see read_model), with its weights, ready to predict."""
    model = info.build_network(initialise=False)  # every weight is loaded next
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise InputError(str(path), "weights do not match the architecture the file describes") from None
    return model.to(device).eval()


def load_model(path: str | os.PathLike[str], device: torch.device) -> tuple[UNet2D, ModelInfo]:
    info, state = read_model(path)
    return build_model(path, info, state, device), info

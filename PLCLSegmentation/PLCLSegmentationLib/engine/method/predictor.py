"""A model loaded once that turns prepared volumes into labels, uncertainty and a score.

Used by ``plcl predict`` (and through it the Slicer module's Apply) and by a training run's final
predictions. Independent of training: nothing imported here imports the training code (train.py,
batches, augmentation, losses, consistency); training borrows from prediction, never the reverse.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..files.volumes import ClassInfo, Volume
from ..protocol import DEFAULT_BACKEND, DEFAULT_ESTIMATE, ESTIMATES
from ..runtime import autocast_dtype, backend_precision, resolve_backend
from .backends import export_network, fold_batch_norms
from .components import keep_largest_components
from .modelfile import ModelInfo, build_model, read_model
from .predict import map_to_volume, predict_slices
from .preprocess import InPlaneFrame, PreparedVolume, prepare_volume, with_neighbours
from .quality import (
    VolumeQuality,
    agreement,
    expected_dice,
    neighbour_counts,
    neighbour_overlap,
    quality_measure,
    volume_quality,
)

#: Slices of one network pass over consecutive frames of a 4D image (in batches of predict_slices'
#: size): frames of ten slices would otherwise end each pass with a batch of two, at a quarter of
#: the throughput on a CPU. Bounded also by the probabilities it holds (floats).
PASS_BATCHES = 5
PASS_FLOATS = 2 ** 26
#: The mirrored copies of each stack ([S, H, W] axes flipped) whose labels, mirrored back, the prediction is
#: compared with for the quality estimate (method/quality.py): left-right, up-down, and both; the first
#: protocol.ESTIMATES[estimate] of them.
MIRRORS = ((2,), (1,), (1, 2))


@dataclass
class Prediction:
    """One volume's result on its own grid."""

    labels: np.ndarray  # uint8 [k, j, i]: the class values of the model's classes, 0 background
    uncertainty: np.ndarray  # float32 [k, j, i]: normalised predictive entropy in [0, 1]
    score: float  # mean uncertainty over the predicted foreground (1.0 when there is none)
    voxels: dict[str, int]  # voxels per class name
    seconds: float  # this volume's share of its network pass, and its mapping onto its grid
    quality: VolumeQuality  # per structure and per slice: uncertainty and estimated Dice (method/quality.py)


def prepare(volume: Volume, info: ModelInfo) -> tuple[PreparedVolume, bool]:
    """A volume as the model of ``info`` sees it, and whether it has any contrast."""
    return prepare_volume(volume, info.target_spacing_mm, tuple(info.intensity_percentiles),
                          reference=info.in_plane_reference)


class Predictor:
    """A network with the facts of its model file: classes, pixel size, in-plane reference,
    sliding-window tile and overlap, largest-component clean-up, what runs it (the backend:
    torch, or an exported copy on the CPU, runtime.py) at which precision, and how many mirrored
    copies the quality estimate costs (``estimate``, protocol.ESTIMATES)."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: torch.device,
                 precision: str = "auto", backend: str = "torch", estimate: str = DEFAULT_ESTIMATE) -> None:
        """``backend`` as runtime.resolve_backend resolved it (torch, onnxruntime or openvino)."""
        self.model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPUs and tensor cores
        self.model.eval()
        self.info = info
        self.device = device
        if backend == "auto":
            raise ValueError("Predictor takes a resolved backend: Predictor.load resolves one")
        self.backend = backend
        self.precision = backend_precision(backend, precision, device)
        self.autocast = autocast_dtype(precision, device) if self.backend == "torch" else None
        self.network: Callable[[torch.Tensor], torch.Tensor] = self.model
        if self.backend == "torch" and self.autocast is None:
            self.network = fold_batch_norms(self.model).to(memory_format=torch.channels_last)  # the same labels, faster
        elif self.backend != "torch":
            exported = export_network(self.backend, self.model, self.precision)
            self.network, self.precision = exported, exported.precision
        self._values = np.array([0] + [c.value for c in info.classes], dtype=np.uint8)
        self.estimate = estimate
        self.mirrors = MIRRORS[:ESTIMATES[estimate]]

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device, precision: str = "auto",
             backend: str = DEFAULT_BACKEND, estimate: str = DEFAULT_ESTIMATE) -> Predictor:
        """The model file at ``path``, checked (a damaged or malformed file is an InputError) and
        loaded onto ``device``, run by ``backend`` (auto: runtime.resolve_backend's choice). A backend
        not installed or not for ``device``, or a precision it cannot compute in, is a ConfigError
        before the model is read."""
        backend = resolve_backend(backend, device)
        backend_precision(backend, precision, device)  # its refusals only: the Predictor takes the value
        info, state = read_model(path)
        return cls(build_model(path, info, state, device), info, device, precision, backend, estimate)

    @property
    def quality_measure(self) -> str:
        """How this predictor's estimates are made (summary.json's ``quality_measure``)."""
        return quality_measure(len(self.mirrors), self.info.neighbour_shares is not None,
                               self.info.slice_coverage is not None)

    @property
    def classes(self) -> list[ClassInfo]:
        return self.info.classes

    @property
    def num_classes(self) -> int:
        """Classes with the background."""
        return self.info.num_classes

    @property
    def spacing_mm(self) -> float:
        return self.info.target_spacing_mm

    @property
    def in_plane_reference(self) -> InPlaneFrame | None:
        return self.info.in_plane_reference

    def prepare(self, volume: Volume) -> tuple[PreparedVolume, bool]:
        return prepare(volume, self.info)

    def frames_per_pass(self, prepared: PreparedVolume) -> int:
        """How many frames like ``prepared`` go through the network together."""
        slices, height, width = prepared.images.shape
        batch = 8 if self.device.type == "cpu" else 64  # predict_slices' default batch sizes
        return max(1, min(PASS_BATCHES * batch // max(1, slices),
                          PASS_FLOATS // max(1, slices * height * width * self.num_classes)))

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """One volume's prepared slices [S, H, W] as the network takes them [S, C, H, W] (with neighbours)."""
        return with_neighbours(images, self.info.slice_context)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The network's softmax [S, K, H, W] (on the CPU) for one volume's prepared slices [S, H, W], or for
        network inputs [S, C, H, W] (network_input; frames stacked one by one)."""
        info = self.info
        inputs = self.network_input(images) if images.dim() == 3 else images
        return predict_slices(self.network, inputs, info.num_classes, info.inference_tile, info.inference_overlap,
                              2 ** (info.levels - 1), self.device, channels_last=self.backend == "torch",
                              autocast=self.autocast)

    def mirrored_labels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The quality estimate's mirrored copies of prepared slices (as ``probabilities`` takes them): each
        copy's labels [S, H, W] (uint8, on the CPU), mirrored back; their labels only, one copy's probabilities
        at a time."""
        shift = images.dim() - 3  # in-plane axes 1, 2 of slices; 2, 3 of network inputs
        return [self.probabilities(images.flip([d + shift for d in dims])).flip([d + 1 for d in dims]).argmax(1)
                .to(torch.uint8) for dims in self.mirrors]

    def _estimates(self, probs: torch.Tensor,
                   copies: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Each class's agreement (quality.agreement) of a stack's labels with its mirrored copies' labels, each
        cleaned up as the segmentation is (its islands would otherwise count as disagreement), its expected
        Dice (quality.expected_dice) from the stack's probabilities [S, C, H, W], and the overlap of its
        neighbours with those of the model's annotations (quality.neighbour_overlap; None where the model
        holds none)."""
        num_classes = self.info.num_classes
        stacks = [probs.argmax(1).to(torch.uint8).numpy()] + [copy.numpy() for copy in copies]
        stacks = [self.clean_up(stack) for stack in stacks]
        expected = expected_dice(stacks[0], probs.numpy())
        reference = self.info.neighbour_shares
        overlaps = (None if reference is None
                    else neighbour_overlap(neighbour_counts(stacks[0], num_classes), np.array(reference)))
        return agreement(stacks[0], stacks[1:], num_classes), expected, overlaps

    def clean_up(self, labels: np.ndarray, slice_axis: int = 0) -> np.ndarray:
        """``labels`` (class indices, slices along ``slice_axis``) cleaned up as the model file says
        (components.keep_largest_components; the organ's piece by agreement where it holds neighbour shares)."""
        objects = self.info.cleanup_objects
        if objects is None:
            return labels
        shares = None if self.info.neighbour_shares is None else np.array(self.info.neighbour_shares)
        return keep_largest_components(labels, objects, shares, slice_axis)

    def predict(self, prepared: PreparedVolume) -> Prediction:
        return next(self.predict_group([prepared]))

    def predict_group(self, group: list[PreparedVolume]) -> Iterator[Prediction]:
        """Volumes (consecutive frames of a 4D image) in one network pass; each one's result is
        mapped onto its grid only when asked for, so a caller that writes each before taking the
        next holds one volume's result at a time."""
        info = self.info
        started = time.monotonic()
        images = torch.cat([self.network_input(p.images) for p in group])
        probs = self.probabilities(images)
        mirrored = self.mirrored_labels(images)
        seconds = (time.monotonic() - started) / len(group)
        offset = 0
        for prepared in group:
            mapping_started = time.monotonic()
            slices = prepared.images.shape[0]
            result = map_to_volume(prepared, probs[offset:offset + slices])
            agreements, expected, overlaps = (self._estimates(probs[offset:offset + slices],
                                                              [m[offset:offset + slices] for m in mirrored])
                                              if mirrored else (None, None, None))
            offset += slices
            labels = self.clean_up(result.labels, prepared.layout.axes[0])
            counts = np.bincount(labels.ravel(), minlength=info.num_classes)
            quality = volume_quality(labels, result.uncertainty, agreements, prepared.layout.axes[0],
                                     [c.name for c in info.classes], [c.value for c in info.classes], expected,
                                     overlaps, info.slice_coverage)
            yield Prediction(self._values[labels], result.uncertainty, result.score,
                             {c.name: int(counts[i]) for i, c in enumerate(info.classes, 1)},
                             seconds + time.monotonic() - mapping_started, quality)

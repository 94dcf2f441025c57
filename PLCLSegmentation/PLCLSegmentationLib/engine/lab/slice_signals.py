"""Two more signals for choosing the slices a reviewer corrects, and where each puts the review's slices.

The simulated review (review_sim.py) found that a retrain learns less from the slices of most uncertain
voxels than from random ones on good models, and that a third of those slices lie at one end of the
stack. Two remedies from active learning, measured here:

- information density (Settles and Craven, 2008): a slice worth correcting is uncertain and also like many
  others, so that what a retrain learns from it carries over. A slice is described by the model's deepest
  encoder features averaged over it (the network's own view of what the slice shows); its density is the
  mean Gaussian kernel (features standardised, the bandwidth the median distance) to every slice of the
  cohort, scaled to 1 at the most typical. review_sim's ``dense_path`` orders a volume's slices by their
  uncertain voxels times this density.
- disagreement with mirrored copies of the input (the quality estimate's copies, Predictor.mirrored_labels): the
  voxels where a copy's labels differ from the prediction, a measure of what the model does not know
  rather than of what is ambiguous in the image.
- suggestive annotation (Yang et al., MICCAI 2017): of the slices most uncertain (the uncertain voxels' top
  ``pool`` times K), the K that together stand for the whole cohort best, chosen greedily to maximise the sum over
  every slice of the cohort of its highest cosine similarity (features standardised) to a chosen slice: uncertain
  slices, but not K of one kind. review_sim's ``suggestive`` arm.

review_signals.py reports where the slices each signal chooses lie; review_sim.py retrains on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..files.volumes import read_volume
from ..method.modelfile import ModelInfo
from ..method.predictor import Predictor
from ..method.preprocess import PreparedVolume, with_neighbours


@torch.no_grad()
def encoder_features(model: torch.nn.Module, info: ModelInfo, prepared: PreparedVolume,
                     batch: int = 16) -> np.ndarray:
    """[S, C]: each stack slice's deepest encoder features, averaged over the slice (padded to the
    network's divisor)."""
    images = with_neighbours(prepared.images, info.slice_context)
    divisor = 2 ** (info.levels - 1)
    height, width = images.shape[2:]
    found = []
    for start in range(0, images.shape[0], batch):
        x = F.pad(images[start:start + batch], (0, (-width) % divisor, 0, (-height) % divisor))
        for level, block in enumerate(model.encoder):
            x = block(F.max_pool2d(x, 2) if level else x)
        found.append(x.mean(dim=(2, 3)))
    return torch.cat(found).float().numpy()


def mirror_disagreement(predictor: Predictor, prepared: PreparedVolume) -> np.ndarray:
    """[S]: per stack slice, the mean over the mirrored copies of the pixels (on the network's grid) where the
    copy's labels differ from the prediction's and either is foreground, both cleaned up as the prediction is."""
    labels = predictor.probabilities(prepared.images).argmax(1).to(torch.uint8)
    stacks = [stack.numpy() for stack in [labels, *predictor.mirrored_labels(prepared.images)]]
    stacks = [predictor.clean_up(s) for s in stacks]
    main = stacks[0]
    return np.mean([((copy != main) & ((copy > 0) | (main > 0))).sum(axis=(1, 2)) for copy in stacks[1:]], axis=0)


def in_file_order(per_slice: np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """A stack's per-slice values indexed by the slice's index in the file (the index slice items carry)."""
    return per_slice[::-1].copy() if prepared.layout.flips[0] else per_slice


def cohort_signals(model_file: Path, summary: dict[str, Any], cases: set[str],
                   disagreement: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Each volume of ``cases`` (summary.json's ``volumes``): its slices' ``features`` [n, C] and, where asked
    for, ``disagreement`` [n], indexed by the slice's index in the file."""
    predictor = Predictor.load(model_file, torch.device("cpu"), precision="fp32", backend="torch")
    found = {}
    for entry in summary["volumes"]:
        if entry["name"] not in cases:
            continue
        prepared, _ = predictor.prepare(read_volume(entry["image"]))
        signals = {"features": in_file_order(encoder_features(predictor.model, predictor.info, prepared), prepared)}
        if disagreement:
            signals["disagreement"] = in_file_order(mirror_disagreement(predictor, prepared), prepared)
        found[entry["name"]] = signals
    return found


def densities(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each slice's information density among all slices of all volumes (module docstring), 0 to 1."""
    names, standard = standardised(features)
    squared = (standard ** 2).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * standard @ standard.T, 0.0)
    bandwidth = max(float(np.median(distances)), 1e-12)
    density = np.exp(-distances / bandwidth).mean(axis=1)
    density /= density.max()
    found, offset = {}, 0
    for name in names:
        found[name] = density[offset:offset + len(features[name])]
        offset += len(features[name])
    return found


def standardised(features: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The volumes in sorted order and all their slices' features, standardised over the cohort."""
    names = sorted(features)
    stacked = np.concatenate([features[n] for n in names]).astype(np.float64)
    return names, (stacked - stacked.mean(axis=0)) / (stacked.std(axis=0) + 1e-6)


def representative_slices(candidates: list[tuple[str, int, float]], features: dict[str, np.ndarray], k: int,
                          pool: int = 2) -> list[tuple[str, int]]:
    """Suggestive annotation (module docstring): of ``candidates`` (volume, slice index in the file, its
    uncertain voxels) the ``pool * k`` most uncertain, then greedily the k that add most to the cohort's
    coverage (every slice of ``features``' volumes: its highest cosine similarity to a chosen slice), in the
    order chosen."""
    names, standard = standardised(features)
    unit = standard / (np.linalg.norm(standard, axis=1, keepdims=True) + 1e-12)
    offset = dict(zip(names, np.cumsum([0] + [len(features[n]) for n in names[:-1]])))
    ranked = sorted(candidates, key=lambda c: (-c[2], c[0], c[1]))[:pool * k]
    similarity = unit[[offset[name] + index for name, index, _ in ranked]] @ unit.T  # [pool * k, all slices]
    covered = np.full(unit.shape[0], -1.0)
    picked: list[int] = []
    for _ in range(min(k, len(ranked))):
        gains = np.maximum(similarity, covered).sum(axis=1) - covered.sum()
        gains[picked] = -np.inf
        best = int(np.argmax(gains))
        picked.append(best)
        covered = np.maximum(covered, similarity[best])
    return [(ranked[i][0], ranked[i][1]) for i in picked]


def add_signals(slices: dict[str, list[dict[str, Any]]], signals: dict[str, dict[str, np.ndarray]]) -> None:
    """Each slice item's ``density`` and ``dense_voxels`` (its uncertain voxels times its density) and, where
    measured, its ``disagreement``."""
    density = densities({name: signals[name]["features"] for name in slices})
    for name, items in slices.items():
        for item in items:
            item["density"] = round(float(density[name][item["index"]]), 4)
            item["dense_voxels"] = round(item["uncertain_voxels"] * item["density"], 1)
            if "disagreement" in signals[name]:
                item["disagreement"] = round(float(signals[name]["disagreement"][item["index"]]), 1)

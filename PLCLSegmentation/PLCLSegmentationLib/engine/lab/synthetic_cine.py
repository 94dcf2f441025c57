"""SYNTHETIC beating-heart sequences: toy cine short-axis phantoms with known volumes, not medical data.

Each sequence is one cardiac cycle of ``n_frames`` frames of one phantom heart (synthetic.py's
shapes and MRI-like look): the left-ventricle cavity and the right ventricle empty and refill along
a smooth periodic curve with a known ejection fraction, the myocardium keeps its volume (it thickens
as the cavity empties) and the heart moves a little. Tissue texture, lung and bias field stay put;
the noise is new in every frame. Frames share one ACDC-like grid (about 1.5 mm pixels, 10 mm
slices, an oblique direction, some sequences stored with permuted or flipped axes), written as a 4D
NIfTI (time last) with its 4D label map. ``sequences.json`` holds the exact volume of every
structure in every frame (label voxels x voxel volume, in ml), so a predicted volume curve can be
checked against the truth. Everything follows from ``seed``; sequence ``n`` is the same whatever
``n_sequences`` is.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..files.volumes import Grid, atomic_path
from ..run.volume_curve import curve_summary
from .synthetic import (
    _STORAGE,
    LABELS,
    LV,
    MYO,
    RV,
    Heart,
    _draw_heart,
    _draw_look,
    _reorient,
    heart_labels,
    oblique_grid,
    pixel_coordinates,
    render,
)

CINE_FRAMES = 30
#: The structures whose volume curves are recorded (the cavities give ejection fractions).
CURVE_CLASSES = {LV: LABELS[LV], RV: LABELS[RV], MYO: LABELS[MYO]}
CAVITIES = (LABELS[LV], LABELS[RV])


def contraction(n_frames: int, systole_frames: int, offset: int = 0) -> np.ndarray:
    """How far each frame is from end-diastole (0) towards end-systole (1): a smooth periodic cycle.

    Half cosines: emptying over ``systole_frames`` frames, refilling over the rest; the slope is zero
    at both turning points, so the curve and its first derivative are continuous, also from the
    last frame back to the first. ``offset``: the frame of end-diastole.
    """
    if not 0 < systole_frames < n_frames:
        raise ValueError(f"systole_frames must be between 1 and {n_frames - 1}, got {systole_frames}")
    phase = (np.arange(n_frames) - offset) % n_frames
    emptying = 0.5 * (1.0 - np.cos(math.pi * phase / systole_frames))
    refilling = 0.5 * (1.0 + np.cos(math.pi * (phase - systole_frames) / (n_frames - systole_frames)))
    return np.where(phase <= systole_frames, emptying, refilling)


@dataclass
class CineSequence:
    """One synthetic sequence: int16 frames and uint8 labels ([t, k, j, i]) on one grid, and its truth."""

    image: np.ndarray
    labels: np.ndarray
    grid: Grid
    time_step_s: float
    configured_ejection_fraction: dict[str, float]
    end_diastole_frame: int
    end_systole_frame: int

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.grid.spacing)) / 1000.0

    def volumes_ml(self) -> dict[str, list[float]]:
        """Each structure's volume in every frame: its label voxels x the voxel volume."""
        counts = {name: (self.labels == value).reshape(len(self.labels), -1).sum(axis=1)
                  for value, name in CURVE_CLASSES.items()}
        return {name: [float(n) * self.voxel_ml for n in count.tolist()] for name, count in counts.items()}


def _solve_scale(count: Callable[[float], int], target: float) -> float:
    """The scale in (0.2, 1.2) whose voxel count is nearest ``target`` (counts grow with the scale)."""
    low, high = 0.2, 1.2
    for _ in range(16):
        middle = 0.5 * (low + high)
        if count(middle) < target:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda s: abs(count(s) - target))


def _frame_scales(heart: Heart, x: np.ndarray, y: np.ndarray, shift: np.ndarray,
                  target: dict[int, float]) -> tuple[float, float]:
    """The LV and RV scales (heart_labels) whose voxel counts meet ``target``, the LV first (the RV
    depends on it)."""
    def voxels(value: int, lv: float, rv: float = 1.0) -> int:
        return int((heart_labels(heart, x, y, lv, rv, shift)[0] == value).sum())

    lv_scale = _solve_scale(lambda s: voxels(LV, s), target[LV])
    return lv_scale, _solve_scale(lambda s: voxels(RV, lv_scale, s), target[RV])


def make_sequence(seed: int, index: int, n_frames: int = CINE_FRAMES, slices: int | None = None,
                  pixels: int | None = None, oblique: bool = True) -> CineSequence:
    """Sequence ``index`` of the set of ``seed``: ``slices`` x ``pixels`` x ``pixels`` frames
    (default 9-11 slices of 100-120 pixels, a heart-centred field of view)."""
    if int(n_frames) < 4:
        raise ValueError(f"n_frames must be at least 4, got {n_frames}")
    rng = np.random.default_rng([seed, index, 13])  # 13: not the 3D cases' streams
    nz = int(slices) if slices else int(rng.integers(9, 12))
    ny = nx = int(pixels) if pixels else int(rng.integers(100, 121))
    pixel = float(rng.uniform(1.4, 1.6))
    thickness = 10.0
    x, y = pixel_coordinates(ny, nx, pixel)
    heart = _draw_heart(rng, nz, nx * pixel)
    ef = {LABELS[LV]: float(rng.uniform(0.55, 0.62)), LABELS[RV]: float(rng.uniform(0.45, 0.52))}
    systole = int(round(n_frames * rng.uniform(0.3, 0.4)))
    systole = min(max(systole, 1), n_frames - 1)
    offset = int(rng.integers(0, n_frames))  # the frame of end-diastole
    distance, direction = rng.uniform(1.5, 3.5), rng.uniform(0.0, 2.0 * math.pi)
    motion = distance * np.array([math.cos(direction), math.sin(direction)])  # mm at end-systole
    period_s = float(rng.uniform(0.8, 1.0))

    diastole, diastole_wall = heart_labels(heart, x, y)
    full = {LV: int((diastole == LV).sum()), RV: int((diastole == RV).sum())}
    # The scales are solved on a crop around the heart (the same counts, far fewer pixels): the heart
    # is largest at end-diastole and moves by less than the margin.
    rows, cols = np.nonzero(((diastole > 0) | diastole_wall).any(axis=0))
    margin = int(math.ceil(8.0 / pixel)) + 2
    crop = (slice(max(rows.min() - margin, 0), rows.max() + margin + 1),
            slice(max(cols.min() - margin, 0), cols.max() + margin + 1))
    x_crop, y_crop = x[crop], y[crop]
    labels = np.zeros((n_frames, *diastole.shape), dtype=np.uint8)
    walls = np.zeros(labels.shape, dtype=bool)
    for t, c in enumerate(contraction(n_frames, systole, offset).tolist()):
        if c == 0.0:
            labels[t], walls[t] = heart_labels(heart, x, y)
            continue
        shift = c * motion
        lv_scale, rv_scale = _frame_scales(heart, x_crop, y_crop, shift,
                                           {value: full[value] * (1.0 - ef[LABELS[value]] * c) for value in full})
        labels[t], walls[t] = heart_labels(heart, x, y, lv_scale, rv_scale, shift)

    look = _draw_look(rng, diastole.shape, x, y, pixel, heart)
    scale = rng.uniform(400.0, 1500.0)  # scanners differ in intensity scale
    image = np.stack([np.clip(np.rint(render(look, labels[t], walls[t], rng) * scale), 0, np.iinfo(np.int16).max)
                      for t in range(n_frames)]).astype(np.int16)
    size = (nx, ny, nz)
    spacing = (pixel, pixel, thickness)
    grid = Grid(size, spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))
    if oblique:
        grid = oblique_grid(size, spacing, rng)
        perm, flips = _STORAGE[index % len(_STORAGE)]
        if tuple(perm) != (0, 1, 2) or any(flips):
            stored = grid
            labels = np.stack([_reorient(frame, stored, perm, flips)[0] for frame in labels])
            image = np.stack([_reorient(frame, stored, perm, flips)[0] for frame in image])
            grid = _reorient(image[0], stored, perm, flips)[1]
    return CineSequence(image, labels, grid, period_s / n_frames, {k: 100.0 * v for k, v in ef.items()},
                        offset, (offset + systole) % n_frames)


def write_4d(path: str | os.PathLike[str], frames: np.ndarray, grid: Grid, time_step: float) -> None:
    """Frames ([t, k, j, i]) on one grid as one 4D NIfTI (time last), compressed, atomically."""
    image = sitk.JoinSeries([grid.apply_to(sitk.GetImageFromArray(frame)) for frame in frames], 0.0, time_step)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, useCompression=True)


def sequence_names(n_sequences: int) -> list[str]:
    return [f"cine_{index + 1:03d}" for index in range(n_sequences)]


def roles(names: list[str]) -> dict[str, list[str]]:
    """The first sequence is for annotating, the last is held out, the rest are unannotated."""
    if len(names) < 2:
        return {"annotated": list(names), "unannotated": [], "held_out": []}
    return {"annotated": names[:1], "unannotated": names[1:-1], "held_out": names[-1:]}


def make_cine_dataset(out_dir: str | os.PathLike[str], n_sequences: int = 3, n_frames: int = CINE_FRAMES,
                      seed: int = 0, slices: int | None = None, pixels: int | None = None,
                      oblique: bool = True) -> Path:
    """Write ``n_sequences`` SYNTHETIC beating-heart sequences into ``out_dir`` and return it:
    ``images/<name>.nii.gz`` and ``labels/<name>.nii.gz`` (4D, time last) and ``sequences.json``
    (the known volume of every structure in every frame, ejection fractions, roles)."""
    if int(n_sequences) < 1:
        raise ValueError(f"n_sequences must be at least 1, got {n_sequences}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    names = sequence_names(int(n_sequences))
    entries: dict[str, Any] = {}
    for index, name in enumerate(names):
        sequence = make_sequence(int(seed), index, int(n_frames), slices, pixels, oblique)
        write_4d(out / "images" / f"{name}.nii.gz", sequence.image, sequence.grid, sequence.time_step_s)
        write_4d(out / "labels" / f"{name}.nii.gz", sequence.labels, sequence.grid, sequence.time_step_s)
        volumes = sequence.volumes_ml()
        summary = curve_summary(volumes)  # the engine's definition of the ejection fraction
        entries[name] = {
            "image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz", "frames": int(n_frames),
            "size": list(sequence.grid.size), "spacing_mm": list(sequence.grid.spacing),
            "time_step_s": sequence.time_step_s, "voxel_volume_ml": sequence.voxel_ml,
            "end_diastole_frame": sequence.end_diastole_frame, "end_systole_frame": sequence.end_systole_frame,
            "volumes_ml": volumes,
            "ejection_fraction": {name: summary[name]["ejection_fraction"] for name in CAVITIES},
            "configured_ejection_fraction": sequence.configured_ejection_fraction,
        }
    description: dict[str, Any] = {
        "name": "SYNTHETIC beating-heart phantoms (PLCLSegmentation demo)",
        "description": (
            "SYNTHETIC data, not medical images: toy cine short-axis 'cardiac' sequences generated by "
            f"PLCLSegmentation (make_cine_dataset, seed {int(seed)}) for demonstrations, tests and timings. "
            "No patient data; the label names only mimic cardiac anatomy. volumes_ml are exact: the label "
            "voxels of each frame times the voxel volume; ejection_fraction is 100 * (max - min) / max of them."
        ),
        "synthetic": True,
        "generator": {"tool": "PLCLSegmentation", "function": "make_cine_dataset", "seed": int(seed),
                      "n_sequences": int(n_sequences), "n_frames": int(n_frames), "slices": slices,
                      "pixels": pixels, "oblique": bool(oblique)},
        "labels": {str(value): name for value, name in LABELS.items()},
        "geometry": "4D NIfTI, time last; in-plane spacing 1.4-1.6 mm, slice spacing 10 mm; "
                    + ("oblique direction, non-zero origin, every second sequence stored with permuted or "
                       "flipped axes" if oblique else "identity direction, zero origin"),
        "roles": roles(names),
        "sequences": entries,
    }
    with atomic_path(out / "sequences.json") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=1)
        handle.write("\n")
    return out

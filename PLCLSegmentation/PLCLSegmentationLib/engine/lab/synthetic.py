"""A SYNTHETIC demo dataset: toy "cardiac short-axis" phantoms, not medical data.

The extension ships no patient data, yet a demo must train something meaningful in minutes on a
CPU. These phantoms have the shape vocabulary of cine short-axis MRI (a bright left-ventricle
cavity inside a dark myocardial ring, a bright right-ventricle crescent beside it, all tapering
towards the apex; textured tissue, noise, a bias field) so the network has to use shape and
context, as on real data. They are written in the layout of the project's real datasets
(``dataset.json``, ``images/<case>.nii.gz``, ``labels/<case>.nii.gz``) with real oblique geometry:
rotated direction matrices, non-zero origins, and some cases stored with permuted or flipped axes
(the thick-slice axis first, left-handed index order) so the engine's orientation handling is
exercised. Everything follows from ``seed``; case ``n`` is the same whatever ``n_cases`` is.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..files.volumes import Grid, atomic_path, write_image

LABELS: dict[int, str] = {0: "background", 1: "right ventricle", 2: "myocardium", 3: "left ventricle"}
RV, MYO, LV = 1, 2, 3

#: Storage of each case, by case index modulo 4: (ITK axis order as old axes, flips of the new axes).
#: Physical content is unchanged; only how the voxels are laid out in the file differs.
_STORAGE: tuple[tuple[tuple[int, int, int], tuple[bool, bool, bool]], ...] = (
    ((0, 1, 2), (False, False, False)),  # as generated: slices along k (the last ITK axis)
    ((2, 0, 1), (False, False, False)),  # thick-slice axis stored first (ITK i, numpy's last axis)
    ((0, 1, 2), (False, False, False)),
    ((1, 0, 2), (False, True, True)),    # in-plane axes swapped, two axes flipped
)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A clearly oblique acquisition: rotations of 20 to 45 degrees about each axis.

    As with real short-axis scans, the obliquity is similar between subjects (a common tilt plus
    +-12 degrees each), so the heart keeps one anatomical orientation in the patient's frame.
    """
    angles = (np.array([32.0, -28.0, 30.0]) + rng.uniform(-12.0, 12.0, size=3)) * math.pi / 180.0
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _reorient(array: np.ndarray, grid: Grid, perm: Sequence[int],
              flips: Sequence[bool]) -> tuple[np.ndarray, Grid]:
    """Store ``array`` ([k, j, i] on ``grid``) with permuted/flipped axes, same physical content.

    New ITK axis ``a`` is old ITK axis ``perm[a]``, reversed where ``flips[a]``; the returned grid
    places every voxel at the same physical point as before.
    """
    old_size = grid.size
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1.0
    for a, (p, flip) in enumerate(zip(perm, flips)):
        to_old[p, a] = -1.0 if flip else 1.0
        to_old[p, 3] = old_size[p] - 1 if flip else 0.0
    matrix = grid.ijk_to_lps() @ to_old
    new_size = tuple(old_size[p] for p in perm)
    # numpy axis b holds ITK axis 2 - b
    out = np.transpose(array, [2 - perm[2 - b] for b in range(3)])
    for a, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=2 - a)
    return np.ascontiguousarray(out), Grid.from_ijk_to_lps(new_size, matrix)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (tissue texture, bias fields)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


@dataclass
class Heart:
    """A phantom heart's shape on its slices (mm, in-plane coordinates centred on the image)."""

    nz: int
    r_lv_base: float
    wall: float
    length: float  # slices from base to apex
    angle: float  # direction from the LV towards the RV
    drift: np.ndarray  # the long axis is not quite along the slices (mm/slice)
    centre: np.ndarray
    rv_reach: float
    rv_width: float
    base_first: bool


def _draw_heart(rng: np.random.Generator, nz: int, fov: float) -> Heart:
    r_lv_base = rng.uniform(17.0, 27.0)
    wall = rng.uniform(6.5, 10.5)
    length = nz - 1 + rng.uniform(-0.3, 0.9)
    # Direction from the LV towards the RV: as in real short-axis images the RV lies to one side of
    # the LV (here the image's -x side), with a spread of +-30 degrees between subjects.
    angle = math.pi + rng.uniform(-1.0, 1.0) * math.pi / 6.0
    drift = rng.uniform(-1.0, 1.0, size=2)
    # keep the whole heart (RV included, ~1.7 outer radii from the LV centre) well inside the body
    extent = 1.7 * (r_lv_base + 0.8 * wall) + 3.0
    fit = min(1.0, 0.36 * fov / extent)
    r_lv_base, wall, extent = r_lv_base * fit, wall * fit, extent * fit
    room = max(0.0, 0.38 * fov - extent - np.abs(drift).max() * nz / 2)
    centre = rng.uniform(-1.0, 1.0, size=2) * min(0.12 * fov, room / math.sqrt(2.0)) - drift * (nz - 1) / 2
    rv_reach = rng.uniform(0.55, 0.8)  # the RV ends before the apex
    rv_width = rng.uniform(1.05, 1.35)
    base_first = bool(rng.integers(0, 2))
    return Heart(nz, r_lv_base, wall, length, angle, drift, centre, rv_reach, rv_width, base_first)


def heart_labels(heart: Heart, x: np.ndarray, y: np.ndarray, lv_scale: float = 1.0, rv_scale: float = 1.0,
                 shift: Sequence[float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Labels ([k, j, i]) and the unlabelled RV free wall of ``heart`` on the pixel coordinates x, y.

    A beating heart (synthetic_cine.py): ``lv_scale`` scales the LV cavity's radius while the
    myocardium keeps its area on every slice (it thickens as the cavity empties), ``rv_scale``
    shrinks the RV towards the septum, and ``shift`` moves the whole heart (mm).
    """
    nz = heart.nz
    labels = np.zeros((nz, *x.shape), dtype=np.uint8)
    rv_wall = np.zeros((nz, *x.shape), dtype=bool)
    for z in range(nz):
        depth = z / heart.length  # 0 at the base, 1 at the apex
        k = z if heart.base_first else nz - 1 - z
        if depth >= 1.0:
            continue
        taper = math.sqrt(1.0 - depth**2)
        cx, cy = heart.centre + heart.drift * z + np.asarray(shift, dtype=float)
        u = (x - cx) * math.cos(heart.angle) + (y - cy) * math.sin(heart.angle)
        v = -(x - cx) * math.sin(heart.angle) + (y - cy) * math.cos(heart.angle)
        d = np.hypot(u, v)
        r_lv = heart.r_lv_base * taper - 2.0 * depth
        r_out = max(r_lv, 0.0) + heart.wall * (0.8 + 0.3 * depth)
        r_out *= min(1.0, 3.0 * taper)  # a closed cap at the apex
        if lv_scale != 1.0:  # the myocardium keeps its area: the wall thickens as the cavity empties
            cavity = max(r_lv, 0.0)
            r_lv = cavity * lv_scale
            r_out = math.sqrt(max(r_out**2 - cavity**2, 0.0) + r_lv**2)
        labels[k][d <= r_out] = MYO
        labels[k][d <= r_lv] = LV
        if depth < heart.rv_reach:
            shrink = math.sqrt(1.0 - (depth / heart.rv_reach) ** 2)
            a = (r_out * 1.05) * max(shrink, 0.35)
            b = r_out * heart.rv_width * (0.6 + 0.4 * shrink)
            centre_u = r_out * 0.6
            if rv_scale != 1.0:  # shrink about the ellipse's vertex inside the LV: the free wall moves in
                centre_u, a, b = centre_u - a + rv_scale * a, a * rv_scale, b * rv_scale
            inside = ((u - centre_u) / a) ** 2 + (v / b) ** 2 <= 1.0
            crescent = inside & (d > r_out)
            labels[k][crescent] = RV
            # a thin dark RV free wall, unlabelled (as in real annotations)
            grown = ((u - centre_u) / (a + 2.5)) ** 2 + (v / (b + 2.5)) ** 2 <= 1.0
            rv_wall[k] = grown & ~inside & (d > r_out)
    return labels, rv_wall


@dataclass
class Look:
    """What stays put while the heart beats: body, lung, tissue texture, bias field, noise level."""

    body: np.ndarray  # > 1 outside the body
    texture: np.ndarray
    coarse: np.ndarray
    lung: np.ndarray
    bias: np.ndarray
    noise: float


def _draw_look(rng: np.random.Generator, shape: tuple[int, int, int], x: np.ndarray, y: np.ndarray,
               pixel: float, heart: Heart) -> Look:
    nz, ny, nx = shape
    bx, by = rng.uniform(-4.0, 4.0, size=2)
    body = ((x - bx) / (0.48 * nx * pixel)) ** 2 + ((y - by) / (0.44 * ny * pixel)) ** 2
    texture = _smooth_noise(rng, shape, sigma=(0.6, 2.5, 2.5))
    coarse = _smooth_noise(rng, shape, sigma=(1.0, 8.0, 8.0))
    lung_angle = heart.angle + math.pi + rng.uniform(-0.6, 0.6)
    lung_distance = heart.r_lv_base + heart.wall + rng.uniform(18, 30)
    lx, ly = heart.centre + lung_distance * np.array([math.cos(lung_angle), math.sin(lung_angle)])
    lung = ((x - lx) / rng.uniform(18, 28)) ** 2 + ((y - ly) / rng.uniform(25, 40)) ** 2 <= 1.0
    bias = np.exp(0.18 * _smooth_noise(rng, shape, sigma=(4.0, 30.0, 30.0)))
    noise = float(rng.uniform(0.025, 0.045))
    return Look(body, texture, coarse, lung, bias, noise)


def render(look: Look, labels: np.ndarray, rv_wall: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MRI-like intensities (float, ~0..1.3): air, textured tissue, a dark lung, bright blood, grey
    muscle, fat near the heart; partial volume, a bias field and Rician-like noise drawn from ``rng``."""
    texture = look.texture
    image = 0.42 + 0.06 * texture + 0.08 * look.coarse
    image[:, look.lung] = 0.08 + 0.03 * texture[:, look.lung]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = True  # grow within each slice only: slices are 8-10 mm apart
    near_heart = ndimage.binary_dilation(labels > 0, structure=in_plane, iterations=2) & (labels == 0)
    fat = near_heart & (texture > 0.3)
    image[fat] = 0.75
    image[labels == MYO] = 0.26 + 0.03 * texture[labels == MYO]
    image[rv_wall] = 0.3
    blood = (labels == LV) | (labels == RV)
    image[blood] = 0.95 + 0.04 * texture[blood]
    image[(look.body > 1.0) & (labels == 0) & ~rv_wall] = 0.02
    # partial volume, a smooth multiplicative bias field, and Rician-like noise
    image = ndimage.gaussian_filter(image, sigma=(0.0, 0.7, 0.7))
    image = image * look.bias
    real = image + look.noise * rng.standard_normal(image.shape)
    return np.hypot(real, look.noise * rng.standard_normal(image.shape))


def pixel_coordinates(ny: int, nx: int, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """Physical in-plane coordinates (mm) of every pixel, centred on the image: (x, y), each [j, i]."""
    y, x = np.meshgrid((np.arange(ny) - (ny - 1) / 2) * pixel, (np.arange(nx) - (nx - 1) / 2) * pixel,
                       indexing="ij")
    return x, y


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One case on its canonical grid: image (float, ~0..1.3) and labels ([k, j, i]), spacing (i, j, k)."""
    nz = int(rng.integers(8, 13))
    ny, nx = (int(n) for n in rng.integers(120, 161, size=2))
    pixel = float(rng.uniform(1.2, 1.8))
    thickness = float(rng.uniform(8.0, 10.0))
    x, y = pixel_coordinates(ny, nx, pixel)
    # the heart: base at slice 0 (or the last slice), apex towards the other end
    heart = _draw_heart(rng, nz, min(nx, ny) * pixel)
    labels, rv_wall = heart_labels(heart, x, y)
    look = _draw_look(rng, labels.shape, x, y, pixel, heart)
    return render(look, labels, rv_wall, rng), labels, (pixel, pixel, thickness)


def _case(seed: int, index: int, oblique: bool) -> tuple[np.ndarray, np.ndarray, Grid]:
    """Case ``index`` of the dataset of ``seed``: int16 image, uint8 labels, grid."""
    rng = np.random.default_rng([seed, index])
    image, labels, spacing = _phantom(rng)
    scale = rng.uniform(400.0, 1500.0)  # scanners differ in intensity scale
    voxels = np.clip(np.rint(image * scale), 0, np.iinfo(np.int16).max).astype(np.int16)
    size = tuple(int(n) for n in labels.shape[::-1])
    if not oblique:
        grid = Grid(size, spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))
        return voxels, labels, grid
    grid = oblique_grid(size, spacing, rng)
    perm, flips = _STORAGE[index % len(_STORAGE)]
    if tuple(perm) != (0, 1, 2) or any(flips):
        labels, _ = _reorient(labels, grid, perm, flips)
        voxels, grid = _reorient(voxels, grid, perm, flips)
    return voxels, labels, grid


def case_names(n_cases: int) -> list[str]:
    return [f"synthetic_{index + 1:03d}" for index in range(n_cases)]


def make_synthetic_dataset(out_dir: str | os.PathLike[str], n_cases: int = 8, seed: int = 0,
                           oblique: bool = True) -> Path:
    """Write ``n_cases`` SYNTHETIC phantom cases into ``out_dir`` (dataset layout) and return it.

    About a quarter of the cases (at least one, when there are two or more) form the ``val``
    split. With ``oblique`` every case gets a rotated direction matrix and a non-zero origin, and
    cases 2, 4, 6, 8, ... are stored with permuted or flipped axes; without it, identity geometry.
    """
    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    n_cases = int(n_cases)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    names = case_names(n_cases)
    for index, name in enumerate(names):
        voxels, labels, grid = _case(int(seed), index, oblique)
        write_image(out / "images" / f"{name}.nii.gz", voxels, grid)
        write_image(out / "labels" / f"{name}.nii.gz", labels, grid)
    n_val = 0 if n_cases < 2 else max(1, round(n_cases / 4))
    geometry = (
        "synthetic geometry: in-plane spacing 1.2-1.8 mm, slice spacing 8-10 mm, 8-12 slices of "
        "120-160 pixels; "
        + ("each case has a random oblique direction matrix and a non-zero origin; every second case "
           "is stored with permuted or flipped axes (thick-slice axis first, or in-plane axes swapped "
           "and flipped)" if oblique else "identity direction, zero origin")
    )
    description: dict[str, Any] = {
        "name": "SYNTHETIC cardiac-like phantoms (PLCLSegmentation demo)",
        "description": (
            "SYNTHETIC data, not medical images: toy short-axis 'cardiac' phantoms generated by "
            f"PLCLSegmentation (make_synthetic_dataset, seed {int(seed)}) for demonstrations and tests. "
            "No patient data; the label names only mimic cardiac anatomy."
        ),
        "synthetic": True,
        "generator": {"tool": "PLCLSegmentation", "function": "make_synthetic_dataset", "seed": int(seed),
                      "n_cases": n_cases, "oblique": bool(oblique)},
        "labels": {str(value): name for value, name in LABELS.items()},
        "geometry": geometry,
        "cases": {"train": names[: n_cases - n_val], "val": names[n_cases - n_val:]},
    }
    with atomic_path(out / "dataset.json") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=1)
        handle.write("\n")
    return out


def oblique_grid(size: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator) -> Grid:
    """A grid of this size and spacing turned to a random oblique direction, centred near the scanner's."""
    rotation = _rotation(rng)
    centre_index = (np.asarray(size, dtype=float) - 1) / 2
    world_centre = rng.uniform(-60.0, 60.0, size=3) + np.array([0.0, 0.0, 40.0])
    origin = world_centre - rotation @ (np.asarray(spacing) * centre_index)
    return Grid(size, spacing, tuple(origin.tolist()), tuple(rotation.ravel().tolist()))

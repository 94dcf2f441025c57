"""CPU inference, backend against backend, on the same volumes in one run.

``python -m PLCLSegmentationLib.engine.lab.inference --model MODEL --data DIR [--split val] --out DIR``
(or image paths instead of ``--data``) loads the model once per variant: torch eager in float32,
torch in bfloat16 (where the CPU computes it natively), ONNX Runtime and OpenVINO (where their
packages are installed; OpenVINO also in bfloat16 on such CPUs). Every volume is prepared once; then,
volume by volume, each variant segments it in turn (so a change of the machine's load falls on all
of them alike) after one warm-up volume each. Reported per variant: the model's loading and export,
the network's seconds per slice (the sliding-window pass alone) and the whole prediction's (mapped
back onto the volume's grid, largest components), the speed against torch at the engine's default
precision, and each volume's Dice (mean over the classes) of its labels against torch fp32's.

Writes OUT/inference.json and OUT/inference.md; never asserts anything.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.metrics import dice_per_class
from ..files.dataset import read_dataset
from ..files.volumes import atomic_path, read_volume
from ..method.predictor import Predictor
from ..method.preprocess import PreparedVolume
from ..run.summary import write_json
from ..runtime import autocast_dtype, backend_installed, native_cpu_bf16, precision_name, resolve_device

#: The rule for making a backend the default of ``--backend auto`` (runtime.AUTO_CPU_BACKENDS).
DEFAULT_SPEEDUP, DEFAULT_DICE = 1.3, 0.999


@dataclass
class Variant:
    backend: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


def variants(device: torch.device) -> list[Variant]:
    """Every variant worth timing on ``device``: bf16 only where it is native, exported ones on a CPU."""
    bf16 = device.type != "cpu" or native_cpu_bf16()
    found = [Variant("torch", "fp32")] + ([Variant("torch", "bf16")] if bf16 else [])
    if device.type == "cpu":
        found += [Variant("onnxruntime", "fp32"), Variant("openvino", "fp32")]
        found += [Variant("openvino", "bf16")] if bf16 else []
    return found


def volume_dice(labels: np.ndarray, reference: np.ndarray, values: list[int]) -> tuple[float, float]:
    """Mean and lowest Dice over the classes of two label maps (classes in neither count as 1)."""
    scores = [1.0 if d is None else d for d in dice_per_class(labels, reference, values).values()]
    return float(np.mean(scores)), float(min(scores))


def measure(model: str, images: list[str], device_name: str = "cpu", chosen: list[Variant] | None = None,
            references: list[str | None] | None = None) -> dict[str, Any]:
    """``references``: a reference label map per image (or None), for each variant's Dice against it."""
    device = resolve_device(device_name)
    default = Variant("torch", precision_name(autocast_dtype("auto", device)))
    wanted = chosen or variants(device)
    rows: dict[str, dict[str, Any]] = {}
    predictors: dict[str, Predictor] = {}
    for variant in wanted:
        row: dict[str, Any] = {"backend": variant.backend, "precision": variant.precision}
        rows[variant.name] = row
        if not backend_installed(variant.backend):
            row["skipped"] = f"{variant.backend} is not installed"
            continue
        started = time.perf_counter()
        # The backends are compared on the segmentation's one pass, without the quality estimate's copies.
        predictors[variant.name] = Predictor.load(model, device, variant.precision, variant.backend, estimate="off")
        row["load_seconds"] = time.perf_counter() - started
        row["ran_precision"] = predictors[variant.name].precision
    first = predictors[next(iter(predictors))]
    prepared: list[PreparedVolume] = [first.prepare(read_volume(path))[0] for path in images]
    values = [c.value for c in first.classes]
    for predictor in predictors.values():  # warm-up: first calls allocate and pick kernels
        predictor.predict(prepared[0])
    per_volume: list[dict[str, Any]] = []
    references = references or [None] * len(prepared)
    for volume, reference_path in zip(prepared, references):
        slices, height, width = volume.images.shape
        entry: dict[str, Any] = {"name": volume.volume.name, "slices": slices, "pixels": [height, width],
                                 "network_seconds": {}, "seconds": {}, "labels": {}}
        for name, predictor in predictors.items():
            started = time.perf_counter()
            predictor.probabilities(volume.images)
            entry["network_seconds"][name] = time.perf_counter() - started
            started = time.perf_counter()
            entry["labels"][name] = predictor.predict(volume).labels
            entry["seconds"][name] = time.perf_counter() - started
        if reference_path is not None:
            truth = np.rint(read_volume(reference_path).array).astype(np.uint8)
            entry["dice_vs_reference"] = {name: volume_dice(labels, truth, values)[0]
                                          for name, labels in entry["labels"].items()}
        per_volume.append(entry)
    reference = "torch fp32"
    total_slices = sum(v["slices"] for v in per_volume)
    for name in predictors:
        row = rows[name]
        row["network_seconds_per_slice"] = sum(v["network_seconds"][name] for v in per_volume) / total_slices
        row["seconds_per_slice"] = sum(v["seconds"][name] for v in per_volume) / total_slices
        if reference in predictors:
            dice = [volume_dice(v["labels"][name], v["labels"][reference], values) for v in per_volume]
            row["dice_vs_torch_fp32"] = [round(mean, 6) for mean, _ in dice]
            row["min_dice"] = min(mean for mean, _ in dice)
            row["min_class_dice"] = min(low for _, low in dice)
        scored = [v["dice_vs_reference"][name] for v in per_volume if "dice_vs_reference" in v]
        if scored:
            row["mean_dice_vs_reference"] = float(np.mean(scored))
    if default.name in predictors:
        for name in predictors:
            rows[name]["network_speedup_vs_default"] = (rows[default.name]["network_seconds_per_slice"]
                                                        / rows[name]["network_seconds_per_slice"])
            rows[name]["speedup_vs_default"] = rows[default.name]["seconds_per_slice"] / rows[name]["seconds_per_slice"]
    for v in per_volume:
        del v["labels"]
    return {"model": str(model), "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "native_bf16": native_cpu_bf16(), "default": default.name,
            "volumes": len(per_volume), "slices": total_slices, "rows": rows, "per_volume": per_volume,
            "rule": {"speedup": DEFAULT_SPEEDUP, "dice": DEFAULT_DICE}, "verdict": verdict(rows, default.name)}


def verdict(rows: dict[str, dict[str, Any]], default: str) -> str:
    """Which variant, if any, qualifies to become the default: the fastest of those whose whole
    prediction is at least DEFAULT_SPEEDUP times faster than the default's and whose every volume is
    within DEFAULT_DICE of torch fp32."""
    timed = [(name, row) for name, row in rows.items() if "speedup_vs_default" in row and name != default]
    good = [(name, row) for name, row in timed if row["speedup_vs_default"] >= DEFAULT_SPEEDUP
            and row.get("min_dice", 0.0) >= DEFAULT_DICE]
    if not good:
        return (f"none: no variant is {DEFAULT_SPEEDUP}x faster than {default} with every volume's Dice "
                f">= {DEFAULT_DICE}")
    name, row = max(good, key=lambda item: item[1]["speedup_vs_default"])
    return f"{name}: {row['speedup_vs_default']:.2f}x {default}, lowest volume Dice {row['min_dice']:.4f}"


def markdown(result: dict[str, Any]) -> list[str]:
    nan = float("nan")
    lines = [f"CPU inference on {result['volumes']} volumes ({result['slices']} slices), {result['threads']} threads, "
             f"torch {result['torch']}, native bf16: {result['native_bf16']}; default: {result['default']}.", "",
             "| backend | precision | load s | network s/slice | x default | whole s/slice | x default "
             "| lowest volume Dice vs torch fp32 | lowest class Dice | mean Dice vs reference labels |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"].values():
        if "skipped" in row:
            lines.append(f"| {row['backend']} | {row['precision']} | {row['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {row['backend']} | {row['ran_precision']} | {row['load_seconds']:.2f} | "
                     f"{row['network_seconds_per_slice']:.4f} | {row.get('network_speedup_vs_default', nan):.2f} | "
                     f"{row['seconds_per_slice']:.4f} | {row.get('speedup_vs_default', nan):.2f} | "
                     f"{row.get('min_dice', nan):.4f} | "
                     f"{row.get('min_class_dice', nan):.4f} | {row.get('mean_dice_vs_reference', nan):.4f} |")
    lines += ["", f"Default candidate (whole prediction >= {DEFAULT_SPEEDUP}x the default's, every volume's Dice "
              f">= {DEFAULT_DICE}): "
              f"{result['verdict']}", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m PLCLSegmentationLib.engine.lab.inference",
                                     description="CPU inference: torch, bfloat16, ONNX Runtime, OpenVINO")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("images", nargs="*", metavar="IMAGE")
    parser.add_argument("--data", metavar="DIR", help="a dataset folder: the images of --split")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images")
    parser.add_argument("--variants", default=None, metavar="B:P,...",
                        help="e.g. torch:fp32,onnxruntime:fp32 (default: every one that applies)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    images: list[str] = list(args.images)
    references: list[str | None] = [None] * len(images)
    if args.data:
        dataset = read_dataset(args.data)
        images += [dataset.image(case) for case in dataset.split(args.split)]
        references += [dataset.label(case) for case in dataset.split(args.split)]
    images, references = (images[:args.limit], references[:args.limit]) if args.limit else (images, references)
    if not images:
        parser.error("give images or --data")
    chosen = None
    if args.variants:
        chosen = [Variant(*item.split(":", 1)) for item in args.variants.split(",")]
    result = measure(args.model, images, args.device, chosen, references)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "inference.json", result)
    text = markdown(result)
    with atomic_path(out / "inference.md") as tmp, open(tmp, "w") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

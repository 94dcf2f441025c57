"""Training throughput: a straightforward eager loop against the engine's loop, one change at a time.

All variants train the same network on the same joint batches (segmentation + contrastive) in
one process, one after the other, so their slices per second compare directly. A short profile of
the engine's step names its slowest operations.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from ..config import TrainConfig, parse_overrides
from ..events import RecordingSink
from ..files.dataset import Dataset
from ..method.augment import random_appearance, random_intensity
from ..method.batches import BackgroundBatches, Batch, BatchMaker, SliceAtlas
from ..method.preprocess import prepare_volume, with_neighbours
from ..method.train import Trainer
from ..request import TrainJob
from ..run.inputs import read_training_inputs
from ..run.training import target_spacing
from ..runtime import autocast_dtype, native_cpu_bf16, precision_name, resolve_device

#: (name, settings): TrainConfig overrides (compile named in each, so that a bench's --set compile=true
#: compiles its own row only), plus "per_sample" (batches cut one sample at a time, the
#: loss read back every step: the straightforward loop) which only this measurement knows.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("eager baseline (NCHW, fp32, samples cut one at a time inline, loss read every step, plain Adam)",
     {"per_sample": True, "channels_last": False, "fused_optimizer": False, "background_batches": False,
      "precision": "fp32", "compile": False}),
    ("+ channels-last memory",
     {"per_sample": True, "channels_last": True, "fused_optimizer": False, "background_batches": False,
      "precision": "fp32", "compile": False}),
    ("+ whole batch cut on the device at once, losses read back in bulk",
     {"channels_last": True, "fused_optimizer": False, "background_batches": False, "precision": "fp32",
      "compile": False}),
    ("+ fused Adam", {"channels_last": True, "fused_optimizer": True, "background_batches": False,
                      "precision": "fp32", "compile": False}),
    ("+ bfloat16 autocast where native (the engine's defaults)",
     {"channels_last": True, "fused_optimizer": True, "background_batches": False, "precision": "auto",
      "compile": False}),
    ("engine's defaults + batches built in a background thread (off by default)",
     {"channels_last": True, "fused_optimizer": True, "background_batches": True, "precision": "auto",
      "compile": False}),
    ("engine's defaults + torch.compile (inductor; off by default, `--set compile=true`)",
     {"channels_last": True, "fused_optimizer": True, "background_batches": False, "precision": "auto",
      "compile": True}),
]
ENGINE_DEFAULT = 4  # the row whose settings are the engine's defaults; profiled below


def _per_sample_batch(maker: BatchMaker) -> Batch:
    """A joint batch cut one sample at a time, as a straightforward loop would."""
    config, pseudo = maker.config, maker.pseudo
    n, n_annotated = config.contrastive_images, maker.n_annotated
    draws = ([maker.draw(maker.annotated, 1) for _ in range(config.batch_size + n_annotated)]
             + [maker.draw(pseudo, 1) for _ in range(n - n_annotated)])
    x = torch.cat([d[0] for d in draws])
    y = torch.cat([d[1] for d in draws])
    segmentation = random_appearance(x[:config.batch_size], config, maker.generator)
    contrast, labels = x[config.batch_size:], y[config.batch_size:]
    views = torch.cat([random_intensity(contrast, config, maker.generator),
                       random_intensity(contrast, config, maker.generator)])
    return Batch(segmentation, y[:config.batch_size], views, torch.cat([labels, labels]), maker.pairs)


def _time_variant(config: TrainConfig, annotated, pseudo: SliceAtlas, num_classes: int, device: torch.device,
                  iterations: int, per_sample: bool) -> float:
    trainer = Trainer(config, num_classes, annotated, [], RecordingSink(), device)
    maker = BatchMaker(config, trainer.annotated, pseudo, seed=0)
    make = (lambda: _per_sample_batch(maker)) if per_sample else maker.joint_batch
    batches = BackgroundBatches(make, enabled=config.background_batches)
    try:
        for _ in range(3):  # warm-up: kernel selection, allocator
            trainer.step(next(batches))
        _synchronize(device)
        started = time.perf_counter()
        slices = 0
        for _ in range(iterations):
            batch = next(batches)
            losses = trainer.step(batch)
            if per_sample:
                float(losses["total"])
            slices += batch.slices
        _synchronize(device)
        return slices / (time.perf_counter() - started)
    finally:
        batches.close()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _profile(config: TrainConfig, annotated, pseudo: SliceAtlas, num_classes: int, device: torch.device) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    trainer = Trainer(config, num_classes, annotated, [], RecordingSink(), device)
    maker = BatchMaker(config, trainer.annotated, pseudo, seed=1)
    batches = [maker.joint_batch() for _ in range(4)]
    trainer.step(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[1:]:
            trainer.step(batch)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    return [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / 3,
             "share": e.self_cpu_time_total / total} for e in rows]


def measure_throughput(dataset: Dataset, protocol: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    labeled = [dataset.labeled_pair(c) for c in protocol["labeled"]]
    # The bench's --set applies here too: the comparison times the configuration the bench trains.
    base = TrainConfig.from_budget(args.budget, **{**parse_overrides(args.set), "device": args.device})
    job = TrainJob(labeled, [], "", base, dataset.label_names)
    inputs = read_training_inputs(job)
    spacing = target_spacing(base, [v for v, _ in inputs.annotated])
    num_classes = len(inputs.classes) + 1
    started = time.perf_counter()
    annotated = [prepare_volume(v, spacing, base.intensity_percentiles, lbl, num_classes)[0]
                 for v, lbl in inputs.annotated]
    # Preprocessing (reorientation, resampling, normalisation) runs once per volume and is kept in memory.
    preprocessing = {"seconds_per_volume": (time.perf_counter() - started) / len(annotated),
                     "slices_per_volume": sum(v.images.shape[0] for v in annotated) / len(annotated)}
    # Pseudo-labelled slices stand in as the annotated ones: the cost of a step does not depend on them.
    device = resolve_device(args.device)
    pseudo = SliceAtlas.pack([with_neighbours(v.images, base.slice_context) for v in annotated],
                             [v.labels for v in annotated], device)
    rows = []
    for name, overrides in VARIANTS:
        if overrides.get("compile") and not args.throughput_compile:
            continue
        settings = {k: v for k, v in overrides.items() if k != "per_sample"}
        config = dataclasses.replace(base, **settings)
        row: dict[str, Any] = {"variant": name, **overrides}
        try:
            row["slices_per_s"] = _time_variant(config, annotated, pseudo, num_classes, device,
                                                args.throughput_iterations, overrides.get("per_sample", False))
        except Exception as error:  # torch.compile needs a working C++ toolchain; report, do not fail the bench
            if not overrides.get("compile"):
                raise
            row.update(slices_per_s=None, error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        rows.append(row)
    baseline = rows[0]["slices_per_s"]
    for row in rows:
        row["speedup"] = row["slices_per_s"] / baseline if row["slices_per_s"] else None
    engine = dataclasses.replace(base, **VARIANTS[ENGINE_DEFAULT][1])
    precision = precision_name(autocast_dtype(engine.precision, device))
    return {"device": str(device), "precision": precision, "cpu_native_bf16": native_cpu_bf16(),
            "patch_size": base.patch_size, "preprocessing": preprocessing,
            "slices_per_iteration": base.batch_size + 2 * base.contrastive_images,
            "variants": rows, "profile": _profile(engine, annotated, pseudo, num_classes, device)}

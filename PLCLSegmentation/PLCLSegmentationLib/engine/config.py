"""Every setting of the engine in one typed configuration, with the budget presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .protocol import BUDGETS, DEFAULT_BUDGET, DEFAULT_DEVICE, DEVICES, is_device

#: The most neighbouring slices on each side a network sees (TrainConfig.slice_context): ACDC-like stacks hold 6 to 18.
MOST_SLICE_CONTEXT = 3


def most_embedding_levels(levels: int) -> int:
    """How many decoder outputs a network of ``levels`` levels has for projection heads (one without a decoder)."""
    return max(levels - 1, 1)


#: The local contrastive loss's weight (lambda) in Chaitanya et al. 2023: the bench's plcl methods use it.
PAPER_CONTRASTIVE_WEIGHT = 0.1


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults are the 'standard' budget on a CPU."""

    # --- geometry and intensities -----------------------------------------------------------------
    #: In-plane pixel size (mm) every slice is resampled to; None: median of the annotated volumes.
    target_spacing_mm: float | None = None
    #: Square training patch (pixels), a multiple of 2**(levels-1).
    patch_size: int = 128
    #: Per-volume min-max normalisation between these intensity percentiles, then clipped to [0, 1].
    intensity_percentiles: tuple[float, float] = (1.0, 99.0)
    #: Share of training patches centred on a (pseudo-)labelled foreground pixel; the rest are uniform.
    foreground_patch_fraction: float = 0.7

    # --- network ----------------------------------------------------------------------------------
    base_channels: int = 16
    levels: int = 6
    embedding_dim: int = 16
    #: Decoder levels whose outputs the local contrastive loss contrasts, each through its own
    #: projection head: 1 the last, full-resolution one (the paper); 2 and 3 add the 1/2 and 1/4
    #: resolution ones (the loss is the mean over levels), as the same authors' pre-training contrasted
    #: several decoder levels. Issue 29's multi-level candidate: 3 levels measured -0.012 mean Dice from
    #: 3 annotated slices per frame over three seeds (docs/results).
    embedding_levels: int = 1

    # --- optimisation -----------------------------------------------------------------------------
    learning_rate: float = 1e-3
    #: "constant" (the paper) or "cosine": within the warm-up and within each pseudo-label round the
    #: learning rate falls from learning_rate to zero along a half cosine, so that the model that
    #: labels the next round, and the final one, come from the end of a settled stage. Measured at the
    #: default budget on ACDC from one annotated patient: -0.022 mean Dice, lower on both seeds run (docs/results).
    learning_rate_schedule: str = "constant"
    #: Annotated slices per segmentation batch.
    batch_size: int = 12
    #: Slices per contrastive batch; each is seen under two intensity augmentations.
    contrastive_images: int = 6
    warmup_iterations: int = 900
    #: Where some annotated volumes are annotated on some of their slices only (a few painted slices,
    #: slices accepted in review), draw the annotated slices so that each fifth of the stack (where a
    #: slice lies in its volume) gets the same share of the segmentation batches: slices a reviewer
    #: corrected because the model was least sure of them crowd one end of the stack (the base of the
    #: heart), and a retrain that sees them in that proportion learns least at the other end (issue 28).
    #: Whole volumes alone are drawn as before. Measured on the simulated review, three seeds: it does
    #: not make a retrain learn from the review path's slices what it learns from random ones (docs/results).
    slice_position_balance: bool = False
    #: Where whole annotated volumes and volumes annotated on some slices (slices accepted in review) train
    #: together, the share of the segmentation draws that go to the latter's slices; 0: every annotated slice
    #: alike (30 accepted slices beside two whole volumes of 10 then take 60 %). A lab setting of the simulated
    #: review (issue 28): whether a retrain anchored on the whole volumes learns from the corrected slices what
    #: helps the volumes nobody corrected.
    partial_slice_share: float = 0.0
    #: A training that starts from a model (--init-model: the module's Retrain after review): which model labels
    #: the unannotated volumes for its pseudo-label round. "reviewed": the model it starts from, whose segmentations
    #: the reviewer saw and left uncorrected (the warm-up shrinks to one step, the rest joins the round), so the
    #: corrected slices teach through the segmentation loss without first relabelling every other volume.
    #: "warmed" (until 2026-12-08): the model after a quarter of the warm-up on the annotated slices alone. After 30
    #: slices corrected along the review walk, three seeds: volumes nobody corrected that lost over 0.02 Dice 22-27,
    #: 2-7, 5-6 -> 9-10, 2-3, 2 of 108, the cohort's mean gain level (docs/results, 2026-12-08; issue 28).
    warm_start_labels: str = "reviewed"
    #: Pseudo-label rounds; before each, the current model re-labels the unannotated volumes.
    rounds: int = 3
    joint_iterations: int = 350
    #: "dice" (the paper) or "dice_ce" (Dice plus cross-entropy).
    segmentation_loss: str = "dice_ce"

    # --- the local contrastive loss -------------------------------------------------------------
    #: lambda, the term's weight; the paper's is PAPER_CONTRASTIVE_WEIGHT (``--set contrastive_weight=0.1``; the
    #: bench's ``plcl`` method). 0 by default since 2026-12-06: against the same self-training without it the
    #: term paid in no regime measured (one annotated volume +0.002, 3 slices per frame -0.006, one
    #: patient at 1950 iterations +0.000, three seeds each) and cost 0.013 at one patient on the faster
    #: EPYC (about 5,000 iterations, every seed), where it also makes 4 % fewer steps (docs/results).
    contrastive_weight: float = 0.0
    temperature: float = 0.1  # tau
    #: 0: the temperature stays ``temperature``. Above 0: the joint training starts at this temperature
    #: and moves geometrically to ``temperature`` at the schedule's end (softer targets while the
    #: pseudo-labels are young, the paper's at the end): issue 29's temperature-schedule candidate;
    #: 0.5 measured -0.011 mean Dice from 3 annotated slices per frame over three seeds (docs/results).
    temperature_start: float = 0.0
    anchors_per_class: int = 3  # P
    #: "student" (the paper: class means from the trained network's own embeddings) or "teacher":
    #: the class means from the mean teacher's embeddings of the same views, without gradient
    #: (stable targets, as in MoCo and BYOL; needs teacher_ema > 0; one more forward pass of the
    #: contrastive views per step). Issue 29's candidate; measured in docs/results. "memory": every
    #: anchor is contrasted with one prototype per class, a momentum average (prototype_momentum) of
    #: the class's mean embedding over the steps so far (the mean teacher's embeddings where there is
    #: one), instead of the pair's class means: issue 29's momentum-memory candidate; from 3 annotated
    #: slices per frame over three seeds -0.002 mean Dice (+0.018, -0.006, -0.017; docs/results): not kept.
    #: "annotated": the same memory, moved only by the annotated slices' ground truth (never by a
    #: pseudo-label), so every anchor, annotated or not, is pulled towards what the expert drew
    #: (cross-image, label-anchored targets): issue 29's candidate of 2026-12-06; with one annotated
    #: volume over three seeds -0.002 mean Dice against self-training (+0.008, +0.018, -0.032;
    #: docs/results): not kept.
    contrastive_targets: str = "student"
    #: How much of a class prototype each step keeps (contrastive_targets "memory" or "annotated").
    prototype_momentum: float = 0.99
    #: How the anchors of a class are drawn among its pixels: "random" (the paper: uniformly) or
    #: "hard": without replacement, with a chance that grows with the pixel's dissimilarity to its own
    #: class mean (1 - cosine), so the anchors are the pixels the embedding still places badly, not
    #: only the typical ones. Issue 29's hard-example candidate; measured in docs/results.
    anchor_sampling: str = "random"
    #: Weight of a segmentation loss on pseudo-labelled slices. The paper uses 0 (segmentation loss
    #: on annotated slices only); 1 measured +0.04 mean Dice on ACDC with one annotated patient
    #: (docs/results). With contrastive_weight 0 this is plain self-training.
    pseudo_segmentation_weight: float = 1.0
    #: Decay of the mean teacher (an exponential moving average of the weights) that makes the
    #: pseudo-labels and is the final model; 0 uses the trained weights themselves. 0.99 measured
    #: +0.037 mean Dice on ACDC from one annotated patient over three seeds, better on two (docs/results).
    teacher_ema: float = 0.99
    #: Where > 0 (with a mean teacher), the teacher averages over at least this share of the
    #: schedule's iterations (decay 1 - 1/(share x iterations) where that is slower than teacher_ema):
    #: 0.05 keeps 0.99 at the default budget's 1,950 iterations and gives about 0.997 at 7,000-7,700.
    #: Measured at --minutes 60 on ACDC from one annotated patient: +0.012 mean Dice over three seeds
    #: (+0.021, 0.000, +0.015; docs/results). 0: teacher_ema on any schedule.
    teacher_horizon: float = 0.05
    #: Pixels whose pseudo-label probability is below this are left out of the contrastive loss.
    pseudo_label_confidence: float = 0.0
    #: Weak-to-strong consistency (engine/consistency.py): at every joint step the teacher labels the
    #: unannotated patches from their weak views (spatial augmentation only) for the student's
    #: strong views, instead of the round's stored pseudo-labels; pseudo_label_confidence applies.
    online_pseudo_labels: bool = False
    #: Share of the supervised warm-up after which the local contrastive loss joins it, on unannotated
    #: slices labelled at every step by the mean teacher (from their weak views; pseudo_label_confidence
    #: applies) with annotated ones, as in the joint stage but without a segmentation loss on them: the
    #: one part of the recipe where the term alone brings the unannotated data in (issue 29's warm-up
    #: candidate). 1 (the paper): the warm-up is supervised only. 0.5 measured -0.013 mean Dice from
    #: 3 annotated slices per frame over three seeds (docs/results).
    warmup_contrastive_from: float = 1.0
    #: Share of unannotated contrastive patches that get a box of another one pasted in (CutMix, in
    #: every view and in the labels).
    cutmix_probability: float = 0.0
    #: In pseudo-labels and predictions, keep one 3D connected piece of all structures together (the organ: by size
    #: and by how its structures border as annotated) and the largest of each structure, where the annotations show
    #: it as one object (method/components.py).
    largest_component: bool = True

    # --- augmentation ---------------------------------------------------------------------------
    #: "paper" (one spatial change at a time, see augment.py) or "strong" (rotation and scaling
    #: together, plus gamma, contrast, brightness and noise on segmentation batches).
    augmentation: str = "strong"
    #: With "strong" augmentation, also turn each patch by a random multiple of 90 degrees and mirror
    #: half of them: for images whose in-plane orientation varies between volumes (the heart's
    #: right ventricle to the left in some, above in others), as when headers carry no orientation
    #: (ACDC's NIfTI files) or scanners turn the short-axis plane differently. Measured on ACDC, one
    #: annotated patient, 1000 iterations: +0.051 mean Dice over three seeds, better on each (docs/results).
    orientation_augmentation: bool = True
    gamma_max: float = 1.5
    noise_sigma: float = 0.05
    rotation_degrees: float = 30.0  # the paper: 15 (with "paper" augmentation)
    scale_range: tuple[float, float] = (0.75, 1.3)  # the paper: (0.95, 1.05)
    elastic_sigma_px: float = 5.0
    elastic_probability: float = 0.5
    #: Control points a side of the elastic deformation's displacement grid: 3 bends a patch as a whole;
    #: more bend it locally, so a structure's thickness and a cavity's size change within the patch. Six with
    #: one annotated volume: myocardium +0.030, right ventricle -0.015 (docs/results, 2026-12-07): not the default.
    elastic_points: int = 3
    brightness: float = 0.3
    contrast_range: tuple[float, float] = (0.7, 1.3)

    # --- network input --------------------------------------------------------------------------
    #: Neighbouring slices on each side that the network sees beside each slice, as extra input channels
    #: (2.5D); zeros beyond the stack's ends, so the network can tell an end slice. 0: each slice alone. Shapes
    #: the network: a model keeps its value, and prediction reads it from the model file. One neighbour a side on
    #: ACDC (10 mm slices), seed 0: -0.043 mean Dice with one annotated volume, -0.020 with one patient (docs/results,
    #: 2026-12-07): not the default.
    slice_context: int = 0

    # --- prediction -----------------------------------------------------------------------------
    #: Sliding-window tile for prediction (pixels); tiles overlap by a quarter.
    inference_tile: int = 256
    inference_overlap: float = 0.25

    #: Train for this many seconds instead of a number of iterations (warm-up and rounds keep their
    #: shares of the schedule); pseudo-labelling counts towards the budget.
    time_budget_s: float | None = None
    #: Save this many intermediate models, evenly spaced over the schedule (for Dice-over-time curves).
    snapshots: int = 0

    # --- run --------------------------------------------------------------------------------------
    seed: int = 0
    device: str = DEFAULT_DEVICE
    #: Save a checkpoint every this many iterations (and on cancel).
    checkpoint_every: int = 200
    channels_last: bool = True
    #: "auto": bfloat16 autocast where the hardware computes it natively (CUDA, CPUs with AVX512-BF16
    #: or AMX), else float32 (emulated bf16 on other AVX-512 CPUs is slower than float32); "fp32" or
    #: "bf16" to force. Weights and optimiser stay float32.
    precision: str = "auto"
    #: Build batches in a background thread while the model trains. Off: batches are a few tensor
    #: operations on the training device, and on 2 CPU cores the thread's competition for the cores
    #: measured 11 % slower than building inline (`plcl bench` measures it on any device).
    background_batches: bool = False
    #: Adam's fused kernel where torch has one for the device.
    fused_optimizer: bool = True
    #: Compile the training forward pass with torch.compile (inductor). Off by default: on CPU it costs
    #: a minute of compilation and `plcl bench` measures whether it pays; it usually does on GPUs.
    compile: bool = False
    budget: str = DEFAULT_BUDGET
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_iterations(self) -> int:
        return self.warmup_iterations + self.rounds * self.joint_iterations

    @classmethod
    def from_budget(cls, budget: str = DEFAULT_BUDGET, **overrides: Any) -> TrainConfig:
        if budget not in BUDGETS:
            raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        values = {**BUDGETS[budget], "budget": budget}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validated()

    def supervised_only(self) -> TrainConfig:
        """This schedule without pseudo-label rounds: their joint iterations go to the warm-up, so the
        same number of iterations is trained (for runs with nothing to pseudo-label)."""
        return dataclasses.replace(self, warmup_iterations=self.total_iterations, rounds=0)

    def with_iterations(self, iterations: int) -> TrainConfig:
        """Spread a total number of iterations over warm-up and rounds in the preset's proportions."""
        if iterations < 1:
            raise ConfigError("--iterations must be at least 1")
        scale = iterations / max(1, self.total_iterations)
        joint = int(round(self.joint_iterations * scale)) if self.rounds else 0
        warmup = max(1, iterations - self.rounds * joint)
        return dataclasses.replace(self, warmup_iterations=warmup, joint_iterations=joint)

    def validated(self) -> TrainConfig:
        """Every field of the right type and in range (a ConfigError, before anything is written)."""
        _check_types(self)
        _check_ranges(self)
        multiple = 2 ** (self.levels - 1)
        if self.patch_size % multiple:
            raise ConfigError(f"patch_size {self.patch_size} must be a multiple of {multiple}")
        if self.embedding_levels > most_embedding_levels(self.levels):
            raise ConfigError(f"embedding_levels {self.embedding_levels}: at most {most_embedding_levels(self.levels)} "
                              f"with levels {self.levels} (the decoder's outputs)")
        if self.segmentation_loss not in ("dice", "dice_ce"):
            raise ConfigError(f"segmentation_loss must be 'dice' or 'dice_ce', not {self.segmentation_loss!r}")
        if self.learning_rate_schedule not in ("constant", "cosine"):
            raise ConfigError("learning_rate_schedule must be 'constant' or 'cosine', "
                              f"not {self.learning_rate_schedule!r}")
        if self.contrastive_targets not in ("student", "teacher", "memory", "annotated"):
            raise ConfigError("contrastive_targets must be 'student', 'teacher', 'memory' or 'annotated', "
                              f"not {self.contrastive_targets!r}")
        if self.anchor_sampling not in ("random", "hard"):
            raise ConfigError(f"anchor_sampling must be 'random' or 'hard', not {self.anchor_sampling!r}")
        if self.contrastive_targets == "teacher" and self.teacher_ema <= 0:
            raise ConfigError("contrastive_targets='teacher' needs a mean teacher (teacher_ema > 0)")
        if self.warm_start_labels not in ("warmed", "reviewed"):
            raise ConfigError(f"warm_start_labels must be 'warmed' or 'reviewed', not {self.warm_start_labels!r}")
        if self.augmentation not in ("paper", "strong"):
            raise ConfigError(f"augmentation must be 'paper' or 'strong', not {self.augmentation!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if not is_device(self.device):
            raise ConfigError(f"device must be {', '.join(DEVICES)} or cuda:N, not {self.device!r}")
        low, high = self.intensity_percentiles
        if not 0 <= low < high <= 100:
            raise ConfigError(f"intensity_percentiles {self.intensity_percentiles} must satisfy 0 <= low < high <= 100")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
        return cls(**values).validated()


def parse_overrides(items: list[str], option: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` settings (VALUE as JSON where it parses, else a string) as a dict of overrides."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"{option} {item}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return overrides


def _check_types(config: TrainConfig) -> None:
    """Each field's value has the type of its default (ints where ints are meant, never booleans)."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value, default = getattr(config, f.name), getattr(defaults, f.name)
        if f.name in ("target_spacing_mm", "time_budget_s"):  # optional numbers
            ok = value is None or _is_number(value)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = _is_number(value)
        elif isinstance(default, tuple):
            ok = isinstance(value, tuple) and len(value) == len(default) and all(_is_number(v) for v in value)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(f"{f.name}={value!r}: expected {_type_name(default)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(default: Any) -> str:
    if isinstance(default, tuple):
        return f"{len(default)} numbers, e.g. {list(default)}"
    if default is None:
        return "a number (or null)"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            dict: "an object"}.get(type(default), type(default).__name__)


#: (low, high) bounds of numeric fields, inclusive; None: unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "target_spacing_mm": (1e-3, 1e3), "patch_size": (8, 4096), "foreground_patch_fraction": (0, 1),
    "base_channels": (1, 256), "levels": (1, 8), "embedding_dim": (1, 1024), "embedding_levels": (1, 7),
    "batch_size": (1, 4096),
    "contrastive_images": (1, 4096), "warmup_iterations": (1, None), "rounds": (0, None),
    "joint_iterations": (0, None), "contrastive_weight": (0, None), "anchors_per_class": (1, None),
    "temperature_start": (0, 100),
    "pseudo_segmentation_weight": (0, None), "teacher_ema": (0, 0.9999), "teacher_horizon": (0, 1),
    "prototype_momentum": (0, 0.9999), "pseudo_label_confidence": (0, 1),
    "cutmix_probability": (0, 1), "warmup_contrastive_from": (0, 1),
    "gamma_max": (1, None), "noise_sigma": (0, None), "rotation_degrees": (0, 180), "elastic_sigma_px": (0, None),
    "elastic_probability": (0, 1), "elastic_points": (2, 64), "brightness": (0, None), "inference_tile": (16, 4096),
    "slice_context": (0, MOST_SLICE_CONTEXT),
    "inference_overlap": (0, 0.9), "time_budget_s": (1e-3, None), "snapshots": (0, 1000),
    "checkpoint_every": (1, None), "seed": (0, 2**32 - 1), "partial_slice_share": (0, 0.99),
}


def _check_ranges(config: TrainConfig) -> None:
    for name, (low, high) in _RANGES.items():
        value = getattr(config, name)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise ConfigError(f"{name}={value!r}: must be {bounds}")
    for name in ("learning_rate", "temperature"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name}={getattr(config, name)!r}: must be greater than 0")
    for name in ("scale_range", "contrast_range"):
        low, high = getattr(config, name)
        if not 0 < low <= high:
            raise ConfigError(f"{name}={list(getattr(config, name))}: must satisfy 0 < low <= high")

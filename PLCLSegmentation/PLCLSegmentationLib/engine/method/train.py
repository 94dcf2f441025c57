"""The training schedule: supervised warm-up, then rounds of pseudo-labelling and joint training."""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import Cancelled, InputError
from ..events import EventSink
from ..runtime import autocast_dtype, autocast_to
from .batches import BackgroundBatches, Batch, BatchMaker, SliceAtlas, partial_share_weights, position_balanced_weights
from .components import keep_largest_components, single_objects
from .consistency import cutmix, online_labels
from .losses import IGNORE, PrototypeMemory, local_contrastive_loss, segmentation_loss
from .modelfile import write_torch_file
from .network import UNet2D
from .predict import predict_slices
from .preprocess import PreparedVolume, input_channels, with_neighbours
from .quality import annotated_neighbour_shares


def make_optimizer(parameters, learning_rate: float, fused: bool) -> torch.optim.Optimizer:
    """Adam with its fused kernel (one kernel for all parameters) where asked and this torch has one
    for the device, else torch's default (multi-tensor on GPUs)."""
    parameters = list(parameters)
    if fused:
        try:
            return torch.optim.Adam(parameters, lr=learning_rate, fused=True)
        except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or torch
            pass
    return torch.optim.Adam(parameters, lr=learning_rate)


@dataclass
class Checkpoint:
    iteration: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    pseudo_round: int
    pseudo_labels: list[torch.Tensor]
    train_seconds: float = 0.0
    teacher: dict[str, torch.Tensor] | None = None
    #: Losses of every iteration so far, so a resumed run's training.json has the whole history.
    loss_history: list[dict[str, float]] | None = None
    #: The run that wrote it (request.job_digest): --resume refuses another run's checkpoint.
    run: str | None = None
    #: The class prototypes of each embedding level (contrastive_targets "memory" or "annotated").
    prototypes: list[dict[str, torch.Tensor]] | None = None

    def save(self, path: Path) -> None:
        payload = {"iteration": self.iteration, "model": self.model, "optimizer": self.optimizer,
                   "pseudo_round": self.pseudo_round, "pseudo_labels": self.pseudo_labels,
                   "train_seconds": self.train_seconds, "teacher": self.teacher,
                   "loss_history": self.loss_history or [], "run": self.run, "prototypes": self.prototypes}
        write_torch_file(path, payload)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        p = torch.load(path, map_location="cpu", weights_only=True)
        return cls(int(p["iteration"]), p["model"], p["optimizer"], int(p["pseudo_round"]), list(p["pseudo_labels"]),
                   float(p.get("train_seconds", 0.0)), p.get("teacher"), list(p.get("loss_history") or []),
                   p.get("run"), p.get("prototypes"))


def _annotated_part(stack: torch.Tensor, volume: PreparedVolume) -> torch.Tensor:
    return stack if volume.annotated is None else stack[volume.annotated]


def _unannotated_part(stack: torch.Tensor, volume: PreparedVolume) -> torch.Tensor:
    """An unannotated volume's slices, or the slices of a partially annotated one left unannotated."""
    return stack if volume.annotated is None else stack[~volume.annotated]


class Trainer:
    """Runs one training job on prepared volumes; ``run`` returns the trained network."""

    def __init__(self, config: TrainConfig, num_classes: int, annotated: list[PreparedVolume],
                 unannotated: list[PreparedVolume], sink: EventSink, device: torch.device,
                 checkpoint_path: Path | None = None, cancel: threading.Event | None = None,
                 initial_weights: dict[str, torch.Tensor] | None = None) -> None:
        self.config = config
        self.num_classes = num_classes
        self.device = device
        # Slices live on the training device, packed once; pseudo-labels replace the labels each round.
        # Only annotated slices are packed for the segmentation loss; the other slices of partially
        # annotated volumes join the unannotated pool (pseudo-labels, contrastive loss).
        self.annotated = SliceAtlas.pack([_annotated_part(self.network_input(v), v) for v in annotated],
                                         [_annotated_part(v.labels, v) for v in annotated], device)
        self.unannotated = unannotated + [v for v in annotated if v.partial]
        self.annotated_weights = None
        if config.slice_position_balance and any(v.partial for v in annotated):
            # Slices annotated on some of each volume's slices (corrected ones, say) may crowd one end of the stack.
            self.annotated_weights = position_balanced_weights(torch.cat([
                (_annotated_part(torch.arange(len(v.images)), v) + 0.5) / len(v.images) for v in annotated]))
        partial = [v.partial for v in annotated]
        if config.partial_slice_share > 0 and any(partial) and not all(partial):  # slices accepted beside whole volumes
            self.annotated_weights = partial_share_weights(
                torch.cat([torch.full((len(_annotated_part(v.labels, v)),), v.partial) for v in annotated]),
                config.partial_slice_share, self.annotated_weights)
        stacks = [(v.labels.numpy(), None if v.annotated is None else v.annotated.numpy()) for v in annotated]
        #: The structures the annotations show as one object: the pseudo-labels and the model's predictions keep
        #: their largest piece (None: clean-up off).
        self.single_objects = single_objects(stacks, num_classes) if config.largest_component else None
        #: What each structure borders in the annotated slices (ModelInfo.neighbour_shares): the clean-up's choice
        #: of the organ's piece, and the quality estimate of the model's predictions.
        self.neighbour_shares = annotated_neighbour_shares(stacks, num_classes)
        self._unannotated_atlas: SliceAtlas | None = None
        self.stage = "warmup"  # the stage being trained (_train_until)
        self._contrasting = False  # whether its batches carry contrastive views
        self.sink = sink
        self.checkpoint_path = checkpoint_path
        self.run_tag: str | None = None  # recorded in the checkpoints (Checkpoint.run)
        self.cancel = cancel or threading.Event()
        torch.manual_seed(config.seed)
        self.model = UNet2D(num_classes, config.base_channels, config.levels, config.embedding_dim,
                            in_channels=input_channels(config.slice_context), embedding_levels=config.embedding_levels)
        if initial_weights is not None:
            self.model.load_state_dict(initial_weights)
        self.model.to(device)
        if device.type == "cuda":  # patches have one size: let cuDNN pick the fastest kernels once
            torch.backends.cudnn.benchmark = True
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model.parameters(), config.learning_rate, config.fused_optimizer)
        # The compiled wrapper shares the model's parameters; state dicts stay those of the plain model.
        self.training_forward = torch.compile(self.model) if config.compile else self.model
        # A mean teacher: an exponential moving average of the weights labels the unannotated
        # volumes and is the final model (steadier than the last step's weights).
        self.teacher: UNet2D | None = None
        if config.teacher_ema > 0:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        #: A retrain after review labels its first round with the model the reviewer saw (warm_start_labels).
        self.reviewed_model: UNet2D | None = None
        if initial_weights is not None and config.warm_start_labels == "reviewed":
            self.reviewed_model = copy.deepcopy(self.model).requires_grad_(False)
        self.autocast = autocast_dtype(config.precision, device)
        self.iteration = 0
        self.train_seconds = 0.0  # training time of earlier sessions (resume)
        self._session_start = time.monotonic()
        # The schedule of this session; run() sets it again for the volumes it has.
        self._start_iteration = 0
        self._total_iterations = config.total_iterations
        self._end = self._stage_end(config.rounds, config.rounds)
        self.pseudo_round = 0
        self.pseudo_labels: list[torch.Tensor] = []
        self.loss_history: list[dict[str, float]] = []
        self.contrastive_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        memories = config.embedding_levels if config.contrastive_targets in ("memory", "annotated") else 0
        self.prototype_memories = [PrototypeMemory(num_classes, config.embedding_dim, config.prototype_momentum, device)
                                   for _ in range(memories)]
        self.mix_generator = torch.Generator(device=device).manual_seed(config.seed + 2)
        self._last_report = 0.0
        self._running: dict[str, float] = {}
        # Losses stay on the device until a report reads them all at once (no host sync per step).
        self._pending_losses: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.slices_seen = 0
        #: Called as on_snapshot(index, iteration) at config.snapshots evenly spaced points of the schedule.
        self.on_snapshot: Callable[[int, int], None] | None = None
        self._next_snapshot = 1

    # --- state -----------------------------------------------------------------------------------
    def restore(self, checkpoint: Checkpoint) -> None:
        self.model.load_state_dict(checkpoint.model)
        if self.teacher is not None:
            self.teacher.load_state_dict(checkpoint.teacher or checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.iteration = checkpoint.iteration
        self.train_seconds = checkpoint.train_seconds
        self.pseudo_round = checkpoint.pseudo_round
        self.pseudo_labels = checkpoint.pseudo_labels
        self.loss_history = list(checkpoint.loss_history or [])
        for memory, state in zip(self.prototype_memories, checkpoint.prototypes or []):
            memory.load_state_dict(state)

    def save_checkpoint(self) -> str | None:
        self.flush_losses()
        self.check_finite_weights()  # never replace a sound checkpoint with a diverged one
        if self.checkpoint_path is None:
            return None
        seconds = self.train_seconds + (time.monotonic() - self._session_start)
        Checkpoint(self.iteration, self.model.state_dict(), self.optimizer.state_dict(), self.pseudo_round,
                   self.pseudo_labels, seconds,
                   None if self.teacher is None else self.teacher.state_dict(),
                   self.loss_history, self.run_tag,
                   [memory.state_dict() for memory in self.prototype_memories] or None).save(self.checkpoint_path)
        return str(self.checkpoint_path)

    # --- schedule -------------------------------------------------------------------------------
    # The schedule is measured in iterations or, with a time budget, in seconds of training: the
    # warm-up and each round then take the same share of the budget as of the iterations.
    def _clock(self) -> float:
        if self.config.time_budget_s:
            return self.train_seconds + (time.monotonic() - self._session_start)
        return float(self.iteration)

    def _stage_end(self, round_index: int, rounds: int) -> float:
        cfg = self.config
        iterations = cfg.warmup_iterations + round_index * cfg.joint_iterations
        if not cfg.time_budget_s:
            return float(iterations)
        total = cfg.warmup_iterations + rounds * cfg.joint_iterations
        return cfg.time_budget_s * iterations / max(1, total)

    def run(self) -> UNet2D:
        cfg = self.config
        rounds = cfg.rounds if self.unannotated else 0
        self._session_start = time.monotonic()
        self._start_iteration = self.iteration
        self._total_iterations = cfg.warmup_iterations + rounds * cfg.joint_iterations
        self._end = self._stage_end(rounds, rounds)
        if self._clock() < self._stage_end(0, rounds):
            self.sink.emit("stage", stage="warmup", round=0, total=self._estimated_total())
            warmup_end = self._stage_end(0, rounds)
            contrast_from = warmup_end * cfg.warmup_contrastive_from if self._warmup_contrasts() else warmup_end
            self._train_until(0.0, warmup_end, stage="warmup", pseudo=None, stop=contrast_from)
            if self._clock() < warmup_end:
                self._train_until(0.0, warmup_end, stage="warmup", pseudo=self._warmup_atlas(), online_labels=True)
        for round_index in range(1, rounds + 1):
            end = self._stage_end(round_index, rounds)
            if self._clock() >= end:
                continue
            if self.pseudo_round != round_index:
                self.sink.emit("stage", stage="pseudo_labels", round=round_index, total=self._estimated_total())
                self.pseudo_labels = self.make_pseudo_labels(self.reviewed_model if round_index == 1 else None)
                self.reviewed_model = None  # labelled its round: not held through the training (device memory)
                self.pseudo_round = round_index
                self.save_checkpoint()
            self.sink.emit("stage", stage="joint", round=round_index, total=self._estimated_total())
            self._train_until(self._stage_end(round_index - 1, rounds), end, stage="joint",
                              pseudo=self._pseudo_atlas())
        self.flush_losses()
        self.check_finite_weights()
        self._maybe_snapshot(final=True)
        self.save_checkpoint()
        return self.final_model

    def temperature(self) -> float:
        """The contrastive loss's temperature now: ``temperature``, or with ``temperature_start`` a
        geometric path from that at the warm-up's end to ``temperature`` at the schedule's end."""
        cfg = self.config
        if not cfg.temperature_start:
            return cfg.temperature
        start = self._stage_end(0, cfg.rounds if self.unannotated else 0)
        progress = min(1.0, max(0.0, (self._clock() - start) / max(self._end - start, 1e-9)))
        return cfg.temperature_start * (cfg.temperature / cfg.temperature_start) ** progress

    def network_input(self, volume: PreparedVolume) -> torch.Tensor:
        """A volume's slices as the network takes them [S, C, H, W] (each with its neighbours)."""
        return with_neighbours(volume.images, self.config.slice_context)

    def _warmup_contrasts(self) -> bool:
        cfg = self.config
        return cfg.warmup_contrastive_from < 1 and cfg.contrastive_weight > 0 and bool(self.unannotated)

    def _warmup_atlas(self) -> SliceAtlas:
        """The unannotated slices for the warm-up's contrastive term: no labels yet (the teacher's come
        online), so every pixel IGNORE and the patches placed uniformly."""
        stacks = [_unannotated_part(self.network_input(v), v) for v in self.unannotated]
        labels = [torch.full((s.shape[0], *s.shape[2:]), IGNORE, dtype=torch.uint8) for s in stacks]
        if self._unannotated_atlas is None:  # packed once; _pseudo_atlas relabels it
            self._unannotated_atlas = SliceAtlas.pack(stacks, labels, self.device)
        return self._unannotated_atlas

    def _pseudo_atlas(self) -> SliceAtlas:
        """The unannotated slices with this round's pseudo-labels: packed once, relabelled after."""
        if self._unannotated_atlas is None:
            self._unannotated_atlas = SliceAtlas.pack([_unannotated_part(self.network_input(v), v)
                                                       for v in self.unannotated],
                                                      self.pseudo_labels, self.device)
        else:
            self._unannotated_atlas = self._unannotated_atlas.with_labels(self.pseudo_labels)
        return self._unannotated_atlas

    @property
    def final_model(self) -> UNet2D:
        return self.teacher if self.teacher is not None else self.model

    def _learning_rate(self, start: float, end: float) -> float:
        """The learning rate at this point of the stage that runs from ``start`` to ``end``."""
        cfg = self.config
        if cfg.learning_rate_schedule == "constant":
            return cfg.learning_rate
        progress = min(1.0, max(0.0, (self._clock() - start) / max(end - start, 1e-9)))
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _train_until(self, start: float, end: float, stage: str, pseudo: SliceAtlas | None,
                     stop: float | None = None, online_labels: bool | None = None) -> None:
        """Train the stage that runs from ``start`` to ``end`` (the learning rate's schedule) until ``stop``
        (default: its end)."""
        stop = end if stop is None else stop
        self.stage, self._contrasting = stage, pseudo is not None
        maker = BatchMaker(self.config, self.annotated, pseudo, seed=self.config.seed * 100_003 + self.iteration,
                           annotated_weights=self.annotated_weights, online_labels=online_labels)
        make = maker.joint_batch if pseudo is not None else maker.segmentation_batch
        batches = BackgroundBatches(make, enabled=self.config.background_batches)
        try:
            while self._clock() < stop:
                if self.cancel.is_set():
                    raise Cancelled(self.save_checkpoint())
                batch = next(batches)
                for group in self.optimizer.param_groups:
                    group["lr"] = self._learning_rate(start, end)
                losses = self.step(batch)
                self.iteration += 1
                self.slices_seen += batch.slices
                self._report(stage, losses, final=self._clock() >= stop)
                self._maybe_snapshot()
                if self.iteration % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            batches.close()

    def _maybe_snapshot(self, final: bool = False) -> None:
        """Save every snapshot whose point of the schedule has passed; ``final`` saves those still due
        (a slow step or pseudo-labelling can pass several points, or the end, at once)."""
        count = self.config.snapshots
        if not count or self.on_snapshot is None:
            return
        while self._next_snapshot <= count and (
                final or self._clock() >= self._end * self._next_snapshot / (count + 1)):
            self.flush_losses()
            self.check_finite_weights()
            self.on_snapshot(self._next_snapshot, self.iteration)
            self._next_snapshot += 1

    def _estimated_total(self) -> int:
        if not self.config.time_budget_s:
            return self._total_iterations
        done = self.iteration - self._start_iteration
        elapsed = time.monotonic() - self._session_start
        if done == 0:
            return max(self.iteration, self._total_iterations)
        return self.iteration + int(max(0.0, self._end - self._clock()) * done / max(elapsed, 1e-6))

    # --- one step -----------------------------------------------------------------------------
    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimiser step; the losses come back as detached 0-d tensors on the device."""
        cfg = self.config
        self.model.train()
        n_seg = batch.images.shape[0]
        x = batch.images.to(self.device, non_blocking=True)
        if batch.contrastive_images is not None:
            views, labels = self.contrastive_views(batch)
            x = torch.cat([x, views])
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.labels.to(self.device)
        # The projection heads only where the contrastive term uses them (off by default): they never feed the
        # logits, so leaving them out changes no loss or gradient, only saves their cost.
        contrasts = batch.contrastive_images is not None and cfg.contrastive_weight > 0
        with autocast_to(self.device, self.autocast):
            output = self.training_forward(x, with_embedding=contrasts)
        logits, embeddings = output if contrasts else (output, [])
        loss = segmentation_loss(logits[:n_seg], y, cfg.segmentation_loss)
        losses = {"segmentation": loss.detach()}
        if batch.contrastive_images is not None:
            if contrasts:
                contrastive = self.contrastive_loss(embeddings, x[n_seg:], labels, batch.pairs.to(self.device), n_seg,
                                                    batch.unannotated_from)
                loss = loss + cfg.contrastive_weight * contrastive
                losses["contrastive"] = contrastive.detach()
            if cfg.pseudo_segmentation_weight > 0 and self.stage != "warmup":
                # Self-training: the segmentation loss on the first view of every contrastive slice.
                n = labels.shape[0] // 2
                pseudo_loss = segmentation_loss(logits[n_seg:n_seg + n], labels[:n], cfg.segmentation_loss)
                loss = loss + cfg.pseudo_segmentation_weight * pseudo_loss
                losses["pseudo_segmentation"] = pseudo_loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.teacher is not None:
            self._update_teacher()
        losses["total"] = loss.detach()
        return losses

    def contrastive_loss(self, embeddings: list[torch.Tensor], views: torch.Tensor, labels: torch.Tensor,
                         pairs: torch.Tensor, n_seg: int, n_annotated: int) -> torch.Tensor:
        """The local contrastive loss of the contrastive views (after the first ``n_seg`` slices of each
        level's embeddings), the mean over the embedding levels; a coarser level's labels are every
        second (fourth, ...) pixel's, which is nearest-neighbour downsampling. The first ``n_annotated``
        slices of each of the two views are annotated (their labels the ground truth)."""
        cfg = self.config
        targets = self.teacher_embeddings(views) if cfg.contrastive_targets == "teacher" else [None] * len(embeddings)
        prototypes = [None] * len(embeddings)
        if self.prototype_memories:
            # "annotated": only the ground truth moves the prototypes (and only its views go through the
            # teacher); elsewhere every view's labels.
            rows = torch.arange(labels.shape[0], device=labels.device)
            if cfg.contrastive_targets == "annotated":
                rows = rows[rows % (labels.shape[0] // 2) < n_annotated]
            stable = (self.teacher_embeddings(views[rows]) if self.teacher is not None
                      else [embedding[n_seg:][rows].detach() for embedding in embeddings])
            for level, (memory, embedding) in enumerate(zip(self.prototype_memories, stable)):
                memory.update(embedding, labels[rows, ::2 ** level, ::2 ** level])
            prototypes = [memory.as_pair() for memory in self.prototype_memories]
        losses, temperature = [], self.temperature()
        for level, (embedding, target, prototype) in enumerate(zip(embeddings, targets, prototypes)):
            step = 2 ** level
            losses.append(local_contrastive_loss(
                embedding[n_seg:], labels[:, ::step, ::step], pairs, self.num_classes, temperature,
                cfg.anchors_per_class, self.contrastive_generator, target, hard_anchors=cfg.anchor_sampling == "hard",
                prototypes=prototype))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def teacher_embeddings(self, views: torch.Tensor) -> list[torch.Tensor]:
        """The mean teacher's embeddings of the contrastive views, in evaluation mode (its BatchNorm
        statistics, not the batch's, as when it predicts)."""
        self.teacher.eval()
        with autocast_to(self.device, self.autocast):
            _, embeddings = self.teacher(views, with_embedding=True)
        return embeddings

    def contrastive_views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The contrastive views and their labels on the device: with online pseudo-labels, the
        unannotated slices' labels are the teacher's, from their weak views; with CutMix, boxes are
        pasted between unannotated slices (the same box in both views)."""
        cfg = self.config
        views = batch.contrastive_images.to(self.device, non_blocking=True)
        labels = batch.contrastive_labels.to(self.device)
        n, first = labels.shape[0] // 2, batch.unannotated_from
        if n - first < 1 or (batch.weak_images is None and cfg.cutmix_probability <= 0):
            return views, labels
        by_view = views.view(2, n, *views.shape[1:])
        unannotated = labels[first:n]
        if batch.weak_images is not None:
            weak = batch.weak_images.to(self.device, non_blocking=True)
            if cfg.channels_last:
                weak = weak.contiguous(memory_format=torch.channels_last)
            unannotated = online_labels(self.final_model, weak, cfg.pseudo_label_confidence, self.autocast)
        mixed_views, unannotated = cutmix(by_view[:, first:], unannotated, cfg.cutmix_probability,
                                          self.mix_generator)
        by_view = torch.cat([by_view[:, :first], mixed_views], dim=1)
        labels = torch.cat([labels[:first], unannotated])
        return by_view.reshape(views.shape), torch.cat([labels, labels])

    def _teacher_decay(self) -> float:
        # A fixed decay is a fixed number of steps (0.99: about 100): a shrinking share of a longer
        # schedule, where the student's swings then reach the teacher (measured at 60 minutes, docs/results).
        cfg = self.config
        if cfg.teacher_horizon <= 0:
            return cfg.teacher_ema
        return max(cfg.teacher_ema, 1.0 - 1.0 / (cfg.teacher_horizon * self._estimated_total()))

    @torch.no_grad()
    def _update_teacher(self) -> None:
        # Ramped as in Tarvainen & Valpola's mean teacher: until the decay is reached the teacher is the
        # plain mean of every student so far, so it never lags far behind a short run or fine-tune.
        decay = min(self._teacher_decay(), 1.0 - 1.0 / (self.iteration + 1))
        for teacher, student in zip(self.teacher.parameters(), self.model.parameters()):
            teacher.lerp_(student, 1.0 - decay)
        for teacher, student in zip(self.teacher.buffers(), self.model.buffers()):
            # BatchNorm statistics are averaged like the weights: the student's current statistics
            # do not fit weights that lag ~1/(1-decay) steps behind (measured: the teacher collapsed).
            if teacher.is_floating_point():
                teacher.lerp_(student, 1.0 - decay)
            else:
                teacher.copy_(student)

    def _diverged(self, what: str) -> InputError:
        folder = None if self.checkpoint_path is None else str(Path(self.checkpoint_path).parent)
        return InputError(folder, f"training diverged at iteration {self.iteration}: {what} (a learning_rate of "
                                  f"{self.config.learning_rate:g} may be too high); no model was saved")

    def check_finite_weights(self) -> None:
        """A diverged training ends with an error, not a model that predicts nothing."""
        for name, network in (("weights", self.model), ("teacher's weights", self.teacher)):
            if network is None:
                continue
            tensors = [t for t in network.state_dict().values() if t.is_floating_point()]
            if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
                raise self._diverged(f"the {name} hold NaN or infinite values")

    def flush_losses(self) -> None:
        """Read the pending losses back from the device in one transfer, into the history; a loss
        that is no longer finite ends the training (InputError naming the run folder)."""
        if not self._pending_losses:
            return
        keys = sorted({key for _, losses in self._pending_losses for key in losses})
        absent = torch.tensor(float("nan"), device=self.device)
        table = torch.stack([torch.stack([losses.get(key, absent).float() for key in keys])
                             for _, losses in self._pending_losses]).tolist()
        for (iteration, given), values in zip(self._pending_losses, table):
            losses = {key: value for key, value in zip(keys, values) if key in given}
            bad = next((key for key, value in losses.items() if not math.isfinite(value)), None)
            if bad is not None:
                self._pending_losses.clear()
                raise self._diverged(f"the {bad} loss became {losses[bad]} at iteration {iteration}")
            for key, value in losses.items():  # smoothed for display
                self._running[key] = value if key not in self._running else 0.9 * self._running[key] + 0.1 * value
            self.loss_history.append({"iteration": iteration, **losses})
        self._pending_losses.clear()

    def _report(self, stage: str, losses: dict[str, torch.Tensor], final: bool) -> None:
        self._pending_losses.append((self.iteration, losses))
        now = time.monotonic()
        if now - self._last_report < 0.5 and not final:
            return
        self._last_report = now
        self.flush_losses()
        done = self.iteration - self._start_iteration
        elapsed = now - self._session_start
        per_iteration = elapsed / max(1, done)
        total = self._estimated_total()
        if self.config.time_budget_s:
            eta = max(0.0, self._end - self._clock())
        else:
            eta = per_iteration * (total - self.iteration)
        slices = self.config.batch_size + (2 * self.config.contrastive_images if self._contrasting else 0)
        self.sink.emit("progress", stage=stage, iteration=self.iteration, total=max(total, self.iteration),
                       losses={k: round(v, 5) for k, v in self._running.items()},
                       elapsed_s=round(elapsed, 2), eta_s=round(eta, 1), slices_per_s=round(slices / per_iteration, 2))

    # --- pseudo-labels ---------------------------------------------------------------------------
    def make_pseudo_labels(self, model: UNet2D | None = None) -> list[torch.Tensor]:
        """The unannotated slices' labels by ``model`` (default: the final model, the mean teacher's)."""
        cfg = self.config
        model = model or self.final_model
        labels = []
        for volume in self.unannotated:
            if self.cancel.is_set():
                raise Cancelled(self.save_checkpoint())
            probs = predict_slices(model, self.network_input(volume), self.num_classes, cfg.inference_tile,
                                   cfg.inference_overlap, self.model.divisor, self.device,
                                   channels_last=cfg.channels_last, autocast=self.autocast)
            confidence, label = probs.max(dim=1)
            label = label.to(torch.uint8)
            if volume.partial:  # the annotated slices anchor the 3D components of the others
                label[volume.annotated] = volume.labels[volume.annotated]
            if self.single_objects is not None:
                label = torch.from_numpy(keep_largest_components(label.numpy(), self.single_objects,
                                                                 np.array(self.neighbour_shares)))
            if cfg.pseudo_label_confidence > 0:
                label[confidence < cfg.pseudo_label_confidence] = IGNORE
            labels.append(_unannotated_part(label, volume))
        return labels

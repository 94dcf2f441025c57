"""The trainer on a tiny problem: schedule, mean teacher, checkpoint round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image, phantom

from PLCLSegmentationLib.engine.config import TrainConfig
from PLCLSegmentationLib.engine.errors import ConfigError
from PLCLSegmentationLib.engine.events import RecordingSink
from PLCLSegmentationLib.engine.files.volumes import Grid, Volume
from PLCLSegmentationLib.engine.method.batches import Batch, BatchMaker, SliceAtlas
from PLCLSegmentationLib.engine.method.preprocess import prepare_volume
from PLCLSegmentationLib.engine.method.train import Checkpoint, Trainer
from PLCLSegmentationLib.engine.request import TrainJob
from PLCLSegmentationLib.engine.run import training
from PLCLSegmentationLib.engine.runtime import autocast_dtype

# The contrastive term on (off by default) so these tests exercise the whole method.
TINY = TrainConfig(patch_size=32, levels=3, base_channels=4, embedding_dim=4, batch_size=2, contrastive_images=3,
                   contrastive_weight=0.1, warmup_iterations=2, rounds=2, joint_iterations=2, background_batches=False,
                   precision="fp32")


def _volumes():
    grid = Grid((40, 48, 7), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    prepared = []
    for seed in (0, 1):
        image, labels = phantom(seed=seed)
        volume = Volume(f"v{seed}", f"v{seed}.nrrd", image.astype(np.float32), grid)
        prepared.append(prepare_volume(volume, 1.0, (1, 99), labels if seed == 0 else None, 3)[0])
    return prepared


def test_schedule_runs_warmup_then_rounds_with_pseudo_labels(tmp_path):
    annotated, unannotated = _volumes()
    sink = RecordingSink()
    trainer = Trainer(TINY, 3, [annotated], [unannotated], sink, torch.device("cpu"), tmp_path / "ckpt.pt")
    trainer.run()
    stages = [(e["stage"], e["round"]) for e in sink.events if e["event"] == "stage"]
    assert stages == [("warmup", 0), ("pseudo_labels", 1), ("joint", 1), ("pseudo_labels", 2), ("joint", 2)]
    assert trainer.iteration == 6 and len(trainer.pseudo_labels) == 1
    assert trainer.pseudo_labels[0].shape == unannotated.images.shape
    assert {"segmentation", "contrastive", "pseudo_segmentation"} <= set(trainer.loss_history[-1])


def test_mean_teacher_labels_and_is_the_final_model(tmp_path):
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, teacher_ema=0.5)
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    final = trainer.run()
    assert final is trainer.teacher and final is not trainer.model
    student, teacher = dict(trainer.model.named_parameters()), dict(trainer.teacher.named_parameters())
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    # BatchNorm statistics are averaged too, so they stay consistent with the averaged weights.
    student_stats, teacher_stats = dict(trainer.model.named_buffers()), dict(trainer.teacher.named_buffers())
    running = [k for k in student_stats if k.endswith("running_mean")]
    assert running and any(not torch.equal(student_stats[k], teacher_stats[k]) for k in running)
    restored = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    restored.restore(Checkpoint.load(tmp_path / "c.pt"))
    for key, value in trainer.teacher.state_dict().items():
        torch.testing.assert_close(restored.teacher.state_dict()[key], value)
    assert restored.iteration == 6 and restored.pseudo_round == 2


def test_the_mean_teacher_is_the_mean_of_the_students_until_its_decay_is_reached():
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, teacher_ema=0.99)
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    maker = BatchMaker(config, trainer.annotated, None, seed=0)
    students = []
    for _ in range(3):
        trainer.step(maker.segmentation_batch())
        trainer.iteration += 1
        students.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
        if len(students) == 1:  # the first step copies the student
            for name, value in trainer.teacher.named_parameters():
                torch.testing.assert_close(value, students[0][name])
    for name, value in trainer.teacher.named_parameters():
        torch.testing.assert_close(value, sum(s[name] for s in students) / 3, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(students[-1][n], v) for n, v in trainer.teacher.named_parameters())


def test_supervised_only_moves_the_rounds_iterations_to_the_warm_up():
    config = TrainConfig.from_budget("standard")
    supervised = config.supervised_only()
    assert (supervised.rounds, supervised.warmup_iterations) == (0, config.total_iterations)
    assert supervised.total_iterations == config.total_iterations
    assert dataclasses.replace(supervised, warmup_iterations=config.warmup_iterations, rounds=config.rounds) == config


@pytest.mark.parametrize("warmup, joint, horizon, expected", [
    (900, 350, TrainConfig().teacher_horizon, 0.99),  # the defaults at 1,950 iterations: teacher_ema itself
    (5000, 5000, 0.05, 0.999),  # the full budget's 20,000: 1 - 1/(0.05 * 20,000)
    (5000, 5000, 0.0, 0.99),  # no horizon: teacher_ema on any schedule
])
def test_the_mean_teachers_horizon_grows_with_the_schedule(warmup, joint, horizon, expected):
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, warmup_iterations=warmup, rounds=3, joint_iterations=joint,
                                 teacher_ema=0.99, teacher_horizon=horizon)
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    trainer.iteration = 10_000  # past the ramp
    before = {k: v.detach().clone() for k, v in trainer.teacher.named_parameters()}
    trainer.step(BatchMaker(config, trainer.annotated, None, seed=0).segmentation_batch())
    for name, student in trainer.model.named_parameters():
        torch.testing.assert_close(trainer.teacher.get_parameter(name),
                                   torch.lerp(before[name], student, 1 - expected), rtol=1e-5, atol=1e-7)


def test_every_snapshot_is_saved_even_when_one_step_passes_several_points(tmp_path):
    # Eleven snapshots over six iterations: every step passes two snapshot points at once.
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, snapshots=11)
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    saved: list[tuple[int, int]] = []
    trainer.on_snapshot = lambda index, iteration: saved.append((index, iteration))
    trainer.run()
    assert [index for index, _ in saved] == list(range(1, 12))
    assert [iteration for _, iteration in saved] == sorted(iteration for _, iteration in saved)
    assert all(iteration <= 6 for _, iteration in saved)


def test_cosine_learning_rate_falls_within_each_stage_and_restarts_with_each_round():
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, warmup_iterations=4, joint_iterations=4, learning_rate_schedule="cosine")
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    rates: list[float] = []
    step = trainer.step
    trainer.step = lambda batch: (rates.append(trainer.optimizer.param_groups[0]["lr"]), step(batch))[1]
    trainer.run()
    expected = [1e-3 * 0.5 * (1 + np.cos(np.pi * i / 4)) for i in range(4)]
    np.testing.assert_allclose(rates, expected * 3, rtol=1e-6)
    constant = Trainer(TINY, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    constant.run()
    assert constant.optimizer.param_groups[0]["lr"] == TINY.learning_rate


def _cpu_capabilities(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (True, False, torch.bfloat16),  # AMD Zen 4 and later, Intel Cooper Lake: AVX512-BF16
    (False, True, torch.bfloat16),  # Intel Sapphire Rapids and later: AMX
    (True, True, torch.bfloat16),
    (False, False, None),  # AVX-512 without bf16 (oneDNN would emulate it, slower), AVX2, Arm
])
def test_cpu_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    _cpu_capabilities(monkeypatch, avx512_bf16, amx)
    # oneDNN says yes on every AVX-512 CPU, with or without native bf16: it must not decide.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == expected
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", torch.device("mps")) is None


def test_a_torch_without_the_capability_checks_trains_in_float32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert autocast_dtype("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("native", [True, False])
def test_the_precision_chosen_is_reported_in_the_start_event_and_training_json(tmp_path, monkeypatch, native):
    _cpu_capabilities(monkeypatch, native, False)
    image, labels = phantom()
    paths = (str(tmp_path / "image.nrrd"), str(tmp_path / "labels.nrrd"))
    sitk.WriteImage(make_image(image), paths[0])
    sitk.WriteImage(make_image(labels), paths[1])
    config = dataclasses.replace(TINY, precision="auto", warmup_iterations=1, rounds=0)
    sink = RecordingSink()
    training.run_training(TrainJob([paths], [], str(tmp_path / "run"), config), sink)
    start = next(e for e in sink.events if e["event"] == "start")
    expected = "bf16" if native else "fp32"
    assert start["precision"] == expected
    assert json.loads((tmp_path / "run" / "training.json").read_text())["precision"] == expected


def test_losses_stay_on_the_device_until_a_report_reads_them_in_bulk(tmp_path):
    annotated, unannotated = _volumes()
    trainer = Trainer(TINY, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    losses = trainer.step(BatchMaker(TINY, trainer.annotated, None, seed=0).segmentation_batch())
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in losses.values())
    trainer.run()
    assert [h["iteration"] for h in trainer.loss_history] == list(range(1, 7))
    assert all(isinstance(v, float) for h in trainer.loss_history for k, v in h.items() if k != "iteration")
    assert "contrastive" not in trainer.loss_history[0] and "contrastive" in trainer.loss_history[-1]


def test_fused_adam_is_used_where_torch_has_it_for_the_device():
    annotated, unannotated = _volumes()
    trainer = Trainer(TINY, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    assert trainer.optimizer.defaults.get("fused") is True
    plain = Trainer(dataclasses.replace(TINY, fused_optimizer=False), 3, [annotated], [], RecordingSink(),
                    torch.device("cpu"))
    assert not plain.optimizer.defaults.get("fused")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_a_short_cpu_run_and_a_short_cuda_run_give_the_same_loss_curve(monkeypatch):
    """The same batches (built on the CPU, copied) through the same tiny model on each device."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions on both
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, precision="fp32")
    curves = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), device)
        maker = BatchMaker(config, SliceAtlas.pack([annotated.images], [annotated.labels]),
                           SliceAtlas.pack([annotated.images], [annotated.labels]), seed=0)
        curve = []
        for _ in range(8):
            batch = maker.segmentation_batch()
            batch = Batch(batch.images.to(device), batch.labels.to(device))
            curve.append(float(trainer.step(batch)["segmentation"]))
        curves.append(curve)
    np.testing.assert_allclose(curves[0], curves[1], rtol=5e-3, atol=5e-3)


def test_the_contrastive_class_means_can_come_from_the_mean_teacher(tmp_path, monkeypatch):
    """contrastive_targets='teacher': every contrastive loss gets the teacher's embeddings of the same
    views as its targets; the teacher is not trained by them and stays in evaluation mode."""
    from PLCLSegmentationLib.engine.method import train as train_module

    seen = []
    real = train_module.local_contrastive_loss

    def recording(embeddings, *args, **kwargs):
        targets = args[6] if len(args) > 6 else kwargs.get("target_embeddings")
        seen.append((embeddings.shape, None if targets is None else (targets.shape, targets.requires_grad)))
        return real(embeddings, *args, **kwargs)

    monkeypatch.setattr(train_module, "local_contrastive_loss", recording)
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, teacher_ema=0.5, contrastive_targets="teacher")
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    trainer.run()
    assert len(seen) == 4  # the joint iterations of both rounds
    assert all(targets == (shape, False) for shape, targets in seen)
    assert not trainer.teacher.training and all(not p.requires_grad for p in trainer.teacher.parameters())
    assert {"contrastive"} <= set(trainer.loss_history[-1])
    with pytest.raises(ConfigError, match="mean teacher"):
        dataclasses.replace(TINY, teacher_ema=0.0, contrastive_targets="teacher").validated()


def test_a_momentum_memory_of_class_prototypes_replaces_the_pairs_means(tmp_path, monkeypatch):
    """contrastive_targets='memory': every contrastive loss gets the memory's prototypes (from the mean
    teacher's embeddings, one step's worth added before the loss); the checkpoint keeps them, and a
    resumed trainer starts from them."""
    from PLCLSegmentationLib.engine.method import train as train_module

    given = []
    real = train_module.local_contrastive_loss

    def recording(*args, **kwargs):
        vectors, seen = kwargs["prototypes"]
        given.append((vectors.clone(), seen.clone()))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "local_contrastive_loss", recording)
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, teacher_ema=0.5, contrastive_targets="memory", prototype_momentum=0.5)
    config = config.validated()
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    trainer.run()
    assert len(given) == 4  # the joint iterations of both rounds
    assert all(seen.any() for _, seen in given)
    assert not torch.equal(given[0][0], given[-1][0])  # the prototypes move from step to step
    memory = trainer.prototype_memories[0]
    norms = memory.vectors[memory.seen].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    saved = Checkpoint.load(tmp_path / "c.pt").prototypes
    torch.testing.assert_close(saved[0]["vectors"], memory.vectors)
    resumed = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    resumed.restore(Checkpoint.load(tmp_path / "c.pt"))
    torch.testing.assert_close(resumed.prototype_memories[0].vectors, memory.vectors)


def test_label_anchored_prototypes_are_moved_by_the_annotated_slices_alone(tmp_path, monkeypatch):
    """contrastive_targets='annotated': the memory is updated from the annotated contrastive slices of
    both views (their ground truth), never from an unannotated slice's pseudo-label; 'memory' takes
    every view."""
    from PLCLSegmentationLib.engine.method import losses
    from PLCLSegmentationLib.engine.method import train as train_module

    calls = []
    real_loss, real_update = train_module.Trainer.contrastive_loss, losses.PrototypeMemory.update

    def loss(self, embeddings, views, labels, pairs, n_seg, n_annotated):
        calls.append(("loss", labels.clone(), n_annotated))
        return real_loss(self, embeddings, views, labels, pairs, n_seg, n_annotated)

    def update(self, embeddings, labels):
        calls.append(("update", labels.clone(), embeddings.shape[0]))
        return real_update(self, embeddings, labels)

    monkeypatch.setattr(train_module.Trainer, "contrastive_loss", loss)
    monkeypatch.setattr(losses.PrototypeMemory, "update", update)
    annotated, unannotated = _volumes()
    for targets in ("annotated", "memory"):
        calls.clear()
        config = dataclasses.replace(TINY, teacher_ema=0.5, contrastive_targets=targets).validated()
        trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
        trainer.run()
        steps = [(calls[i][1], calls[i][2], calls[i + 1][1], calls[i + 1][2]) for i in range(0, len(calls), 2)]
        assert len(steps) == 4 and all(call[0] == "loss" for call in calls[::2])
        for labels, n_annotated, updated, rows in steps:
            half = labels.shape[0] // 2
            assert 0 < n_annotated < half
            expected = torch.cat([labels[:n_annotated], labels[half:half + n_annotated]]) if targets == "annotated" \
                else labels
            assert rows == expected.shape[0]
            torch.testing.assert_close(updated, expected)
        assert trainer.prototype_memories[0].seen.any()
    with pytest.raises(ConfigError, match="'annotated'"):
        dataclasses.replace(TINY, contrastive_targets="ground_truth").validated()


def test_a_temperature_schedule_moves_from_its_start_to_the_papers_temperature(tmp_path, monkeypatch):
    """temperature_start: the first joint step contrasts at that temperature, every later one at a lower
    one, none below ``temperature``; without it every step uses ``temperature``."""
    from PLCLSegmentationLib.engine.method import train as train_module

    used = []
    real = train_module.local_contrastive_loss

    def recording(*args, **kwargs):
        used.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "local_contrastive_loss", recording)
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, joint_iterations=4, temperature=0.1, temperature_start=0.5).validated()
    Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu")).run()
    assert len(used) == 8 and used[0] == pytest.approx(0.5)
    assert all(later < earlier for earlier, later in zip(used, used[1:]))
    assert used[-1] >= 0.1 - 1e-12
    used.clear()
    Trainer(dataclasses.replace(config, temperature_start=0.0), 3, [annotated], [unannotated], RecordingSink(),
            torch.device("cpu")).run()
    assert used == [0.1] * 8


def test_each_embedding_level_is_contrasted_with_labels_at_its_resolution(tmp_path, monkeypatch):
    """embedding_levels=2: every joint step contrasts the full-resolution embeddings and the half-resolution
    ones (each with the teacher's of the same level as targets), the labels taken every second pixel; the
    loss recorded is their mean, and the trained model keeps both heads."""
    from PLCLSegmentationLib.engine.method import train as train_module

    seen = []
    real = train_module.local_contrastive_loss

    def recording(embeddings, labels, *args, **kwargs):
        targets = args[5] if len(args) > 5 else kwargs.get("target_embeddings")
        seen.append((tuple(embeddings.shape[-2:]), tuple(labels.shape[-2:]), tuple(targets.shape[-2:])))
        return real(embeddings, labels, *args, **kwargs)

    monkeypatch.setattr(train_module, "local_contrastive_loss", recording)
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, teacher_ema=0.5, contrastive_targets="teacher", embedding_levels=2).validated()
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    trainer.run()
    size = TINY.patch_size
    assert seen == [((size, size),) * 3, ((size // 2, size // 2),) * 3] * 4  # both levels, the joint iterations
    assert "coarse_projection_heads.0.1.weight" in trainer.model.state_dict()
    assert np.isfinite(trainer.loss_history[-1]["contrastive"])


def test_the_contrastive_term_joins_the_warm_up_from_its_share_with_the_teachers_labels(tmp_path, monkeypatch):
    """warmup_contrastive_from=0.5: the first half of the warm-up is supervised only, the second adds the
    contrastive term on unannotated slices the teacher labels online (no segmentation loss on them until
    the joint stage); the joint stage then uses the round's stored pseudo-labels, as without it."""
    from PLCLSegmentationLib.engine.method import train as train_module

    labelled = []
    real = train_module.online_labels

    def recording(teacher, weak, *args, **kwargs):
        labelled.append(weak.shape[0])
        return real(teacher, weak, *args, **kwargs)

    monkeypatch.setattr(train_module, "online_labels", recording)
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, warmup_iterations=4, rounds=1, teacher_ema=0.5, warmup_contrastive_from=0.5)
    sink = RecordingSink()
    trainer = Trainer(config.validated(), 3, [annotated], [unannotated], sink, torch.device("cpu"), tmp_path / "c.pt")
    trainer.run()
    keys = [set(losses) - {"iteration"} for losses in trainer.loss_history]
    assert keys[:2] == [{"segmentation", "total"}] * 2
    assert keys[2:4] == [{"segmentation", "contrastive", "total"}] * 2
    assert keys[4:] == [{"segmentation", "contrastive", "pseudo_segmentation", "total"}] * 2
    assert labelled == [config.contrastive_images - 1] * 2  # the warm-up's unannotated views only
    stages = [e["stage"] for e in sink.events if e["event"] == "stage"]
    assert stages == ["warmup", "pseudo_labels", "joint"]
    # Without unannotated volumes the warm-up is supervised only, as before.
    alone = Trainer(config, 3, [annotated], [], RecordingSink(), torch.device("cpu"))
    alone.run()
    assert all(set(losses) - {"iteration"} == {"segmentation", "total"} for losses in alone.loss_history)

"""Annotating a few slices: unannotated slices never reach the segmentation loss, they join the
unannotated pool, and --annotated-slices is checked before anything is written."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import events, make_image, phantom, run_plcl

from PLCLSegmentationLib.engine import slicing
from PLCLSegmentationLib.engine.config import TrainConfig
from PLCLSegmentationLib.engine.events import RecordingSink
from PLCLSegmentationLib.engine.files.volumes import Grid, Volume
from PLCLSegmentationLib.engine.method.batches import BatchMaker
from PLCLSegmentationLib.engine.method.preprocess import prepare_volume, slice_layout, stack_mask
from PLCLSegmentationLib.engine.method.train import Trainer
from PLCLSegmentationLib.engine.protocol import EXIT_ERROR, EXIT_USAGE
from PLCLSegmentationLib.engine.request import TrainJob

TINY = TrainConfig(patch_size=32, levels=3, base_channels=4, embedding_dim=4, batch_size=2, contrastive_images=3,
                   warmup_iterations=2, rounds=1, joint_iterations=2, background_batches=False, precision="fp32",
                   largest_component=False)
GRID = Grid((40, 48, 7), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
ANNOTATED = [1, 3, 5]  # file slice indices (k) of the phantom's 7


def _partial(labels: np.ndarray, grid: Grid = GRID):
    image, _ = phantom()
    volume = Volume("v0", "v0.nrrd", image.astype(np.float32), grid)
    prepared = prepare_volume(volume, 1.0, (1, 99), labels, 3)[0]
    prepared.annotated = stack_mask(prepared.layout, ANNOTATED)
    return prepared


def _trainer(prepared) -> Trainer:
    return Trainer(TINY, 3, [prepared], [], RecordingSink(), torch.device("cpu"))


def _one_step(trainer: Trainer) -> tuple[dict[str, float], list[torch.Tensor]]:
    batch = BatchMaker(TINY, trainer.annotated, None, seed=7).segmentation_batch()
    losses = trainer.step(batch)
    return ({k: float(v) for k, v in losses.items()},
            [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None])


def test_wrong_labels_on_unannotated_slices_change_nothing():
    _, labels = phantom()
    garbage = labels.copy()
    unannotated = [k for k in range(labels.shape[0]) if k not in ANNOTATED]
    garbage[unannotated] = 2  # every pixel of the unannotated slices says "class 2"
    clean, wrong = _trainer(_partial(labels)), _trainer(_partial(garbage))
    assert len(clean.annotated) == len(ANNOTATED)
    assert torch.equal(clean.annotated.label_canvas, wrong.annotated.label_canvas)
    assert torch.equal(clean.annotated.canvas, wrong.annotated.canvas)
    (clean_losses, clean_grads), (wrong_losses, wrong_grads) = _one_step(clean), _one_step(wrong)
    assert clean_losses == wrong_losses
    assert all(torch.equal(a, b) for a, b in zip(clean_grads, wrong_grads))
    # They join the unannotated pool: pseudo-labelled like any unannotated slice, and the same.
    assert clean.unannotated and clean.make_pseudo_labels()[0].shape[0] == len(unannotated)
    assert all(torch.equal(a, b) for a, b in zip(clean.make_pseudo_labels(), wrong.make_pseudo_labels()))

    # The same wrong labels on an annotated slice do change the loss: the test can fail.
    on_annotated = labels.copy()
    on_annotated[ANNOTATED[0]] = 2
    assert _one_step(_trainer(_partial(on_annotated)))[0] != clean_losses


def test_a_partially_annotated_volume_trains_with_pseudo_label_rounds():
    _, labels = phantom()
    trainer = _trainer(_partial(labels))
    trainer.run()
    stages = [(e["stage"], e["round"]) for e in trainer.sink.events if e["event"] == "stage"]
    assert stages == [("warmup", 0), ("pseudo_labels", 1), ("joint", 1)]
    assert trainer.pseudo_labels[0].shape[0] == 7 - len(ANNOTATED)
    assert "pseudo_segmentation" in trainer.loss_history[-1]  # its unannotated slices, pseudo-labelled


def test_file_slice_indices_follow_a_flipped_slicing_axis():
    flipped = Grid((40, 48, 7), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(np.diag([1.0, 1.0, -1.0]).ravel()))
    layout = slice_layout(flipped)
    assert layout.flips[0]
    file_k = np.broadcast_to(np.arange(7)[:, None, None], (7, 48, 40))
    stack = layout.to_stack(file_k)
    assert sorted(stack[stack_mask(layout, ANNOTATED).numpy()][:, 0, 0].tolist()) == ANNOTATED


def test_slicing_axis_and_view_of_stored_stacks():
    axial = slicing.canonical(np.eye(3), (1.0, 1.0, 5.0))
    assert (axial.slice_axis, axial.view) == (0, "Axial")
    # Thick slices along i, with i pointing left: sagittal slices, indexed by the file's i.
    sagittal = slicing.canonical(np.eye(3), (6.0, 1.0, 1.0))
    assert (sagittal.slice_axis, sagittal.view) == (2, "Sagittal")


def test_slice_specs_are_parsed_and_checked():
    assert slicing.parse_spec("All") == "all" and slicing.parse_spec("labeled") == "labelled"
    assert slicing.parse_spec("7-9,0, 4") == [0, 4, 7, 8, 9]
    for bad in ("abc", "-1", "5-3", "1,,2"):
        with pytest.raises(slicing.SliceSpecError, match="annotated-slices"):
            slicing.parse_spec(bad)
    _, labels = phantom()
    labels[[0, 6]] = 0
    assert slicing.annotated_slices("labelled", labels, 0) == [1, 2, 3, 4, 5]
    with pytest.raises(slicing.SliceSpecError, match="slice 7 is out of range: the image has 7 slices along its k"):
        slicing.annotated_slices([2, 7], labels, 0)


def test_strokes_painted_across_the_slices_are_detected():
    _, labels = phantom()
    assert slicing.drawn_across(labels, 0) is None
    sagittal = np.zeros_like(labels)
    sagittal[:, 10:30, 20] = 1  # one plane of i: painted in the sagittal view of an axial stack
    sagittal[:, 10:30, 26] = 1
    assert slicing.drawn_across(sagittal, 0) == 2


def test_job_file_keeps_the_annotated_slices_for_resume():
    job = TrainJob([("a.nrrd", "a.seg.nrrd"), ("b.nrrd", "b.seg.nrrd")], [], "out", TINY,
                   annotated_slices=["labelled", "0,3"])
    again = TrainJob.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again.annotated_slices == ["labelled", "0,3"]
    old = job.to_dict()
    del old["annotated_slices"]  # a job file written before the option: every slice
    assert TrainJob.from_dict(old).slice_specs() == ["all", "all"]
    assert dataclasses.replace(job, annotated_slices=[]).slice_specs() == ["all", "all"]


# --- the command line ---------------------------------------------------------------------------

FAST = ["--iterations", "4", "--budget", "quick", "--set", "patch_size=32", "--set", "levels=3",
        "--set", "base_channels=4", "--set", "inference_tile=64", "--device", "cpu"]


def _files(folder, count: int = 2) -> list[tuple[str, str]]:
    pairs = []
    for seed in range(count):
        image, labels = phantom(seed=seed)
        labels[[0, 6]] = 0  # slices of background above and below the structure
        paths = (str(folder / f"case{seed}.nrrd"), str(folder / f"case{seed}_label.nrrd"))
        sitk.WriteImage(make_image(image), paths[0])
        sitk.WriteImage(make_image(labels), paths[1])
        pairs.append(paths)
    return pairs


@pytest.mark.parametrize("values, message", [
    (["2,7"], "case1.nrrd: slice 7 is out of range: the image has 7 slices along its k axis"),
    (["one"], "expected all, labelled or slice indices"),
    (["all", "all", "all"], "3 --annotated-slices values for 2 annotated volumes"),
])
def test_bad_annotated_slices_are_usage_errors_before_anything_is_written(tmp_path, values, message):
    pairs = _files(tmp_path)
    if values == ["2,7"]:
        values = ["1,2", "2,7"]  # the second volume's list is out of range
    out = tmp_path / "out"
    args = [a for pair in pairs for a in ("--labeled", *pair)]
    args += [a for value in values for a in ("--annotated-slices", value)]
    result = run_plcl("train", *args, "--out", str(out), "--events", "jsonl", *FAST)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    error = events(result.stdout)[-1]
    assert error["event"] == "error" and message in error["message"]
    assert not out.exists()


def test_an_annotation_painted_in_the_wrong_view_is_refused_with_the_view_to_use(tmp_path):
    (image, label), = _files(tmp_path, 1)
    array = sitk.GetArrayFromImage(sitk.ReadImage(label))
    strokes = np.zeros_like(array)
    strokes[:, 10:30, 20] = array[:, 10:30, 20]
    sitk.WriteImage(make_image(strokes), label)
    result = run_plcl("train", "--labeled", image, label, "--annotated-slices", "labelled",
                      "--out", str(tmp_path / "out"), "--events", "jsonl", *FAST)
    assert result.returncode == EXIT_ERROR
    error = events(result.stdout)[-1]
    assert "drawn across the slices" in error["message"] and "paint in the Axial view" in error["message"]
    assert error["file"] == label and not (tmp_path / "out").exists()


def test_train_on_painted_slices_only_records_them_and_segments_every_volume_keeping_the_annotated_slices(
        tmp_path):
    pairs = _files(tmp_path)
    (tmp_path / "more").mkdir()
    target, _ = _files(tmp_path / "more", 3)[2]
    out = tmp_path / "out"
    result = run_plcl("train", "--labeled", *pairs[0], "--labeled", *pairs[1], "--annotated-slices", "labelled",
                      "--annotated-slices", "2,4", "--unlabeled", target, "--out", str(out), "--events", "jsonl",
                      *FAST)
    assert result.returncode == 0, result.stderr
    log = events(result.stdout)
    assert [e["stage"] for e in log if e["event"] == "stage"].count("pseudo_labels") >= 1
    warnings = [e["message"] for e in log if e["event"] == "warning"]
    assert any("case1_label.nrrd: the labels of slices 1, 3, 5 are not in --annotated-slices" in w for w in warnings)
    written = {e["name"] for e in log if e["event"] == "output" and e["kind"] == "prediction"}
    assert written == {"case0", "case1", "case2"}  # the partly annotated volumes too
    job = json.loads((out / "job.json").read_text())
    assert job["annotated_slices"] == ["labelled", "2,4"]
    summary = json.loads((out / "summary.json").read_text())
    record = [(r["spec"], r["annotated"], r["slices"], r["indices"]) for r in summary["annotated_slices"]]
    assert record == [("labelled", 5, 7, [1, 2, 3, 4, 5]), ("2,4", 2, 7, [2, 4])]
    from PLCLSegmentationLib.engine.method.modelfile import read_model

    info, _ = read_model(str(out / "model.pt"))
    assert info.training["annotated_slices"] == summary["annotated_slices"]
    assert info.cleanup_objects == info.single_objects == (True,) * info.num_classes  # the phantoms: one object each
    # No volume annotated whole: the model holds no slice coverage, and the summary does not claim its estimate uses it.
    assert info.slice_coverage is None and "slices holding any structure" not in summary["quality_measure"]
    # A partly annotated volume's segmentation holds its annotated slices exactly as annotated (and only
    # those: slices 1, 3, 5 of case1 hold labels it was not told to learn), certain, none of them to review.
    entries = {e["name"]: e for e in summary["volumes"]}
    assert "annotated_slices" not in entries["case2"]
    for name, (_, label), annotated in (("case0", pairs[0], [1, 2, 3, 4, 5]), ("case1", pairs[1], [2, 4])):
        entry = entries[name]
        assert entry["annotated_slices"] == annotated and entry["slice_axis"] == "k"
        truth = sitk.GetArrayFromImage(sitk.ReadImage(label))
        segmented = sitk.GetArrayFromImage(sitk.ReadImage(entry["segmentation"]))
        uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(entry["uncertainty"]))
        np.testing.assert_array_equal(segmented[annotated], truth[annotated])
        assert not uncertainty[annotated].any() and uncertainty.any()
        assert not {s["index"] for s in entry["slices"]} & set(annotated)
        counts = np.bincount(segmented.ravel(), minlength=3)
        assert entry["voxels"] == {"label 1": int(counts[1]), "label 2": int(counts[2])}


# --- the benchmark option -----------------------------------------------------------------------


def test_slices_are_spread_through_the_labelled_extent_and_drawn_by_seed():
    import random

    from PLCLSegmentationLib.engine.lab.bench_slices import spread_slices

    labelled = list(range(3, 15))
    picks = {tuple(spread_slices(labelled, 3, random.Random(seed))) for seed in range(20)}
    assert len(picks) > 1  # drawn by seed
    for pick in picks:  # one in each third of the extent
        assert [3 <= pick[0] <= 6, 7 <= pick[1] <= 10, 11 <= pick[2] <= 14] == [True] * 3
    assert spread_slices([4, 5], 3, random.Random(0)) == [4, 5]


def test_whole_volumes_at_the_same_budget_or_a_clear_error():
    from PLCLSegmentationLib.engine.errors import ConfigError
    from PLCLSegmentationLib.engine.files.dataset import Dataset
    from PLCLSegmentationLib.engine.lab.bench_slices import whole_volumes

    class Labelled(Dataset):
        def label(self, case: str) -> str:
            return case

    data = Labelled(None, "d", {}, {})
    sizes = {"a1": 6, "a2": 10, "b1": 8, "c1": 7}
    assert whole_volumes(data, ["a1", "a2"], list(sizes), 6, 0, sizes.get) == ["a1"]
    chosen = whole_volumes(data, ["a1", "a2"], list(sizes), 13, 0, sizes.get)
    assert chosen[0] == "a1" and sum(sizes[c] for c in chosen) <= 13 and len(chosen) == 2
    with pytest.raises(ConfigError, match="no whole labelled volume holds at most 5 slices"):
        whole_volumes(data, ["a1"], list(sizes), 5, 0, sizes.get)


@pytest.mark.slow  # an end-to-end run: `make test-fast` leaves it out
def test_bench_with_labeled_slices_trains_on_k_slices_of_each_case_end_to_end(tmp_path):
    from PLCLSegmentationLib.engine.lab.slice_curve import write_curve
    from PLCLSegmentationLib.engine.lab.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_cases=4, seed=1, oblique=True)
    out = tmp_path / "curve" / "p2_k2"
    result = run_plcl("bench", "--data", str(data), "--out", str(out), "--iterations", "2", "--seeds", "0",
                      "--methods", "plcl", "--n-labeled-patients", "2", "--labeled-slices", "2",
                      "--n-unlabeled", "1", "--snapshots", "0", "--throughput-iterations", "0",
                      "--propagation-frames", "0", "--budget", "quick", "--set", "patch_size=32", "--set", "levels=3",
                      "--set", "inference_tile=64", "--device", "cpu")
    assert result.returncode == 0, result.stderr + result.stdout
    results = json.loads((out / "results.json").read_text())
    protocol = results["protocol"]["cases"]["0"]
    assert len(protocol["labeled"]) == 2 and protocol["annotated_slices"] == 4
    job = json.loads((out / "runs" / "seed0" / "plcl" / "train" / "job.json").read_text())
    assert job["annotated_slices"] == [",".join(map(str, protocol["slices"][c])) for c in protocol["labeled"]]
    assert all(len(v) == 2 for v in protocol["slices"].values())
    assert 0 <= results["methods"]["plcl"]["mean_dice"]["mean"] <= 1
    written = write_curve(tmp_path / "curve")
    table = (tmp_path / "curve" / "curve.md").read_text()
    assert "| 2 | 2 | few slices | 4.0 |" in table and written[0].name == "curve.md"


def test_labelled_slices_of_a_volume_labelled_everywhere_train_the_whole_schedule_supervised(tmp_path):
    (image, label), = _files(tmp_path, 1)
    sitk.WriteImage(make_image(phantom()[1]), label)  # a label on every slice: nothing left unannotated
    out = tmp_path / "out"
    result = run_plcl("train", "--labeled", image, label, "--annotated-slices", "labelled", "--out", str(out),
                      "--events", "jsonl", *FAST)
    assert result.returncode == 0, result.stderr
    stages = [e["stage"] for e in events(result.stdout) if e["event"] == "stage"]
    assert "pseudo_labels" not in stages
    assert json.loads((out / "training.json").read_text())["iterations"] == 4
    warnings = [e["message"] for e in events(result.stdout) if e["event"] == "warning"]
    assert any("supervised only" in w for w in warnings), warnings  # said, as with no unannotated volume


def test_the_curve_pools_the_seeds_of_one_point_over_bench_folders(tmp_path):
    from PLCLSegmentationLib.engine.lab.slice_curve import curve_rows, write_curve

    def bench_folder(name, seeds_dice, labeled_slices, slices_per_seed):
        folder = tmp_path / name
        folder.mkdir()
        results = {"protocol": {"n_labeled_patients": 1, "labeled_slices": labeled_slices, "as_whole_volumes": False,
                                "cases": {str(s): {"annotated_slices": slices_per_seed[s]} for s in seeds_dice}},
                   "methods": {"plcl": {"label": "the method"}},
                   "runs": [{"method": "plcl", "seed": s, "mean_dice": d} for s, d in seeds_dice.items()]}
        (folder / "results.json").write_text(json.dumps(results))

    bench_folder("p1_k3", {0: 0.70}, 3, {0: 6})
    bench_folder("p1_k3_s1", {1: 0.80}, 3, {1: 6})
    bench_folder("p1_all", {0: 0.75, 1: 0.85}, None, {0: 12, 1: 20})
    rows = {(r["per_case"], r["variant"]): r for r in curve_rows(tmp_path)}
    few = rows[(3, "few slices")]
    assert few["n_seeds"] == 2 and few["per_seed"] == {0: 0.70, 1: 0.80}
    assert abs(few["mean_dice"] - 0.75) < 1e-9 and abs(few["std"] - 0.0707107) < 1e-6
    assert few["folder"] == "p1_k3,p1_k3_s1" and few["annotated_slices"] == 6
    whole = rows[("all", "whole cases")]
    assert whole["annotated_slices"] == 16 and whole["per_seed"] == {0: 0.75, 1: 0.85}
    write_curve(tmp_path)
    assert "| 1 | 3 | few slices | 6.0 | the method | 0.750 ± 0.071 | 2 | 0: 0.700, 1: 0.800 |" in \
        (tmp_path / "curve.md").read_text()


@pytest.mark.parametrize("total, painted, background, expected", [
    (6, [1, 3, 5], [], [1, 3, 5]),  # three slices spread through a 6-slice frame: half, but with gaps
    (6, [1, 4], [], [1, 4]),
    (10, [4, 5], [], [4, 5]),  # fewer than half, in one run
    (10, list(range(2, 9)), [], list(range(10))),  # drawn in full: empty slices above and below are background
    (6, [2, 3, 4], [], list(range(6))),  # half, in one run: taken as drawn in full (the panel says so)
    (8, [3, 4, 5, 6], [0], [0, 3, 4, 5, 6]),  # a marked background slice away from the run: 1 and 2 unknown
])
def test_automatic_choice_never_takes_a_slice_between_painted_ones_as_background(total, painted, background,
                                                                                  expected):
    from PLCLSegmentationLib.logic import SliceSummary

    summary = SliceSummary(total, painted, background, "auto", "Axial")
    assert summary.annotated == expected
    assert SliceSummary(total, painted, background, "all", "Axial").annotated == list(range(total))
    assert SliceSummary(total, painted, background, "painted", "Axial").annotated == sorted(painted + background)


def test_slice_position_balance_gives_each_fifth_of_the_stack_the_same_share_of_the_draws():
    """Corrected slices crowded at one end of their stacks: with slice_position_balance, the segmentation
    batches draw each occupied fifth of the stack (where a slice lies in its volume) alike; without it, or
    with whole volumes only, every annotated slice alike, as before."""
    _, labels = phantom()
    whole = prepare_volume(Volume("w", "w.nrrd", phantom()[0].astype(np.float32), GRID), 1.0, (1, 99), labels, 3)[0]
    crowded = _partial(labels)
    crowded.annotated = torch.zeros(7, dtype=torch.bool)
    crowded.annotated[:3] = True  # stack slices 0-2 of 7: fifths 0, 1, 1
    balanced = dataclasses.replace(TINY, slice_position_balance=True)
    trainer = Trainer(balanced, 3, [whole, crowded], [], RecordingSink(), torch.device("cpu"))
    positions = torch.cat([(torch.arange(7) + 0.5) / 7, (torch.arange(3) + 0.5) / 7])
    fifths = (positions * 5).long()
    assert torch.bincount(fifths).tolist() == [2, 4, 1, 2, 1]  # whole: 1, 2, 1, 2, 1; crowded: 1, 2
    draws = BatchMaker(balanced, trainer.annotated, None, seed=3,
                       annotated_weights=trainer.annotated_weights).draw_indices(trainer.annotated, 50_000)
    shares = torch.bincount(fifths[draws], minlength=5).float() / 50_000
    assert torch.allclose(shares, torch.full((5,), 0.2), atol=0.01)
    assert Trainer(TINY, 3, [whole, crowded], [], RecordingSink(), torch.device("cpu")).annotated_weights is None
    assert Trainer(balanced, 3, [whole], [], RecordingSink(), torch.device("cpu")).annotated_weights is None
    losses, _ = _one_step(trainer)
    assert np.isfinite(losses["total"])


def test_partial_slice_share_gives_the_accepted_slices_that_share_of_the_draws_beside_whole_volumes():
    """Three slices of a partly annotated volume beside a whole volume of 7: alike, they take 3 of 10 draws; with
    partial_slice_share=0.5 half, each group's slices alike (or by their position balance where that is on);
    without a whole volume beside them the setting changes nothing."""
    _, labels = phantom()
    whole = prepare_volume(Volume("w", "w.nrrd", phantom()[0].astype(np.float32), GRID), 1.0, (1, 99), labels, 3)[0]
    crowded = _partial(labels)
    crowded.annotated = torch.zeros(7, dtype=torch.bool)
    crowded.annotated[:3] = True
    shared = dataclasses.replace(TINY, partial_slice_share=0.5)
    trainer = Trainer(shared, 3, [whole, crowded], [], RecordingSink(), torch.device("cpu"))
    draws = BatchMaker(shared, trainer.annotated, None, seed=3,
                       annotated_weights=trainer.annotated_weights).draw_indices(trainer.annotated, 50_000)
    per_slice = torch.bincount(draws, minlength=10).float() / 50_000
    assert abs(per_slice[7:].sum().item() - 0.5) < 0.01  # the 3 accepted slices (packed after the whole volume's)
    assert torch.allclose(per_slice[:7], torch.full((7,), 0.5 / 7), atol=0.01)
    both = dataclasses.replace(shared, slice_position_balance=True)
    weights = Trainer(both, 3, [whole, crowded], [], RecordingSink(), torch.device("cpu")).annotated_weights
    assert abs(weights[7:].sum().item() - 0.5) < 1e-5 and not torch.allclose(weights[:7], weights[0])
    assert Trainer(shared, 3, [crowded], [], RecordingSink(), torch.device("cpu")).annotated_weights is None
    assert Trainer(shared, 3, [whole], [], RecordingSink(), torch.device("cpu")).annotated_weights is None

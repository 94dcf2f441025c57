"""Bad input and faults of the command line: one table of cases, run by one parametrised test.

Each case names its input, the exit code (events.py: 1 error, 2 usage error), the fragments of
its one-line error and the text it must never show. For every case the test proves that nothing
was written and no input changed: the case folder (inputs, and any output folder the case starts
with) is byte for byte the same afterwards. ``point`` is the point of issue 11 a case covers, or
"held" for the cases that passed the first probe and must keep passing.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import locale
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import REPO, make_image, phantom, write_seq_nrrd
from dicom_series import write_series

from PLCLSegmentationLib.engine.cli import main
from PLCLSegmentationLib.engine.files.volumes import ClassInfo
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model
from PLCLSegmentationLib.engine.protocol import SHARD_COUNT_VARIABLES, SHARD_INDEX_VARIABLES

TINY = ["--iterations", "2", "--budget", "quick", "--set", "patch_size=32", "--set", "levels=3", "--device", "cpu"]


# --- the inputs every case starts from ------------------------------------------------------------


def tiny_model_info(**changes) -> ModelInfo:
    info = ModelInfo(classes=[ClassInfo(1, "ring", (1.0, 0.0, 0.0)), ClassInfo(2, "disc", (0.0, 0.0, 1.0))],
                     target_spacing_mm=1.0, patch_size=32, base_channels=4, levels=3, embedding_dim=8,
                     intensity_percentiles=(1.0, 99.0), inference_tile=64)
    return dataclasses.replace(info, **changes)


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """img/lbl: an annotated pair; other: an unannotated volume; model.pt: a tiny valid model."""
    folder = tmp_path_factory.mktemp("inputs")
    image, labels = phantom()
    sitk.WriteImage(make_image(image), str(folder / "img.nii.gz"))
    sitk.WriteImage(make_image(labels), str(folder / "lbl.nii.gz"))
    sitk.WriteImage(make_image(image[:, ::-1]), str(folder / "other.nii.gz"))
    info = tiny_model_info()
    torch.manual_seed(0)
    save_model(folder / "model.pt", info.build_network(), info)
    return folder


def train(d: Path, image: str = "img.nii.gz", label: str = "lbl.nii.gz", *extra: str, out: str = "out") -> list[str]:
    return ["train", "--labeled", str(d / image), str(d / label), "--unlabeled", str(d / "other.nii.gz"),
            "--out", str(d / out), *TINY, *extra]


def predict(d: Path, *images: str, model: str = "model.pt", out: str = "out") -> list[str]:
    return ["predict", "--model", str(d / model), "--out", str(d / out), "--device", "cpu",
            *[str(d / i) for i in (images or ("other.nii.gz",))]]


# --- making bad inputs --------------------------------------------------------------------------------


def truncate(d: Path, name: str, keep: float = 0.5) -> None:
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: int(len(data) * keep)])


def flip_bytes(d: Path, name: str) -> None:
    """Flip two bytes in the middle of the compressed data: the stream still decodes, the CRC fails."""
    data = bytearray((d / name).read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x01
    data[middle + 7] ^= 0x01
    (d / name).write_bytes(bytes(data))


def write_volume(d: Path, name: str, array: np.ndarray | None = None, compress: bool = True, **grid) -> None:
    sitk.WriteImage(make_image(phantom()[0] if array is None else array, **grid), str(d / name),
                    useCompression=compress)


def gzip_of_half_a_nifti(d: Path) -> None:
    """A whole, valid gzip stream of a truncated NIfTI: only the voxel count shows it."""
    sitk.WriteImage(make_image(phantom()[0]), str(d / "plain.nii"))
    data = (d / "plain.nii").read_bytes()
    (d / "plain.nii").unlink()
    (d / "regzipped.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2 + 200]))


def seg_nrrd(d: Path, name: str, segments: list[tuple[str, np.ndarray]]) -> None:
    import slicerio

    image = make_image(phantom()[0])
    from PLCLSegmentationLib.engine.files.volumes import Grid

    grid = Grid.of(image)
    segmentation = slicerio.create_segmentation(tuple(grid.size), grid.ijk_to_lps())
    for segment_name, mask_kji in segments:
        slicerio.add_segment(segmentation, np.ascontiguousarray(mask_kji.transpose(2, 1, 0)), {"name": segment_name})
    slicerio.write_segmentation(str(d / name), segmentation)


def overlapping_segments(d: Path) -> None:
    labels = phantom()[1]
    seg_nrrd(d, "overlap.seg.nrrd", [("ring", labels >= 1), ("disc", labels == 2)])  # the disc lies in both


def case_clashing_names(d: Path) -> None:
    labels = phantom()[1]
    seg_nrrd(d, "clash.seg.nrrd", [("X", labels == 1), ("x", labels == 2)])


def model_variant(d: Path, name: str, change: Callable[[dict], None]) -> None:
    payload = torch.load(d / "model.pt", weights_only=True)
    change(payload)
    torch.save(payload, d / name)


class _Code:
    def __reduce__(self):
        return (os.system, ("touch HOSTILE_CODE_RAN",))


def hostile_pickle(d: Path) -> None:
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"format": "plcl-segmentation-model", "x": _Code()}, f)


class Settings:
    """Any class of the sender's: torch.load(weights_only=True) refuses it, weights_only=False would import it."""


def pickled_object_model(d: Path) -> None:
    torch.save({"format": "plcl-segmentation-model", "info": Settings()}, d / "objects.pt")


def cine(d: Path, name: str = "cine.nii.gz", frames: int = 2) -> None:
    """A 4D NIfTI of ``frames`` frames on the grid of img.nii.gz (lbl.nii.gz annotates any of them)."""
    image = sitk.GetImageFromArray(np.stack([phantom()[0]] * frames), isVector=False)
    grid = make_image(phantom()[0])
    direction = np.eye(4)
    direction[:3, :3] = np.reshape(grid.GetDirection(), (3, 3))
    image.SetSpacing((*grid.GetSpacing(), 0.04))
    image.SetOrigin((*grid.GetOrigin(), 0.0))
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(d / name))


def seq_nrrd(d: Path, name: str, **kwargs) -> None:
    from PLCLSegmentationLib.engine.files.volumes import Grid

    write_seq_nrrd(d / name, np.stack([phantom()[0]] * 3), Grid.of(make_image(phantom()[0])).ijk_to_lps(), **kwargs)


def labeled_frame(d: Path, frame: str, image: str = "cine.nii.gz") -> list[str]:
    return ["train", "--labeled-frame", str(d / image), frame, str(d / "lbl.nii.gz"), "--out", str(d / "out"), *TINY]


def earlier_run(d: Path) -> None:
    (d / "earlier" / "predictions").mkdir(parents=True)
    (d / "earlier" / "summary.json").write_text(json.dumps({"volumes": []}))
    (d / "earlier" / "predictions" / "stale.seg.nrrd").write_bytes(b"an earlier run's output")


def hold_lock(d: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    (d / "busy").mkdir()
    handle = open(d / "busy" / ".plcl.lock", "a+")  # noqa: SIM115 - closed by the case's cleanup
    handle.write("4242\n")
    handle.flush()
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(handle)


_held: list = []


def dataset(d: Path, labels_override: dict | None = None) -> None:
    (d / "ds" / "images").mkdir(parents=True)
    (d / "ds" / "labels").mkdir()
    image, labels = phantom()
    labels[0, 0, 0] = 7
    sitk.WriteImage(make_image(image), str(d / "ds" / "images" / "a.nii.gz"))
    sitk.WriteImage(make_image(labels), str(d / "ds" / "labels" / "a.nii.gz"))
    (d / "ds" / "dataset.json").write_text(json.dumps(
        {"labels": labels_override or {"0": "bg", "1": "ring", "2": "disc"}, "cases": {"train": ["a"], "val": ["a"]}}))


def prediction_folder(d: Path) -> None:
    """An output of predict to evaluate (a label map named like the reference)."""
    (d / "pred").mkdir()
    shutil.copy(d / "lbl.nii.gz", d / "pred" / "lbl.nii.gz")
    (d / "refs").mkdir()
    shutil.copy(d / "lbl.nii.gz", d / "refs" / "lbl.nii.gz")
    (d / "pred" / "summary.json").write_text(json.dumps(
        {"classes": [c.to_dict() for c in tiny_model_info().classes]}))


# --- the table ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    id: str
    point: str  # the point of issue 11, or "held"
    argv: Callable[[Path], list[str]]
    code: int
    fragments: tuple[str, ...]  # in the one error line
    prepare: Callable[[Path], None] | None = None
    never: tuple[str, ...] = ("Traceback",)  # nowhere in stderr
    environment: dict[str, str | None] | None = None  # variables set for the case (None: unset)


def _set(key: str, value: str, code: int = 2, *fragments: str, point: str = "9") -> Case:
    def argv(d: Path) -> list[str]:
        return [a for a in train(d, "img.nii.gz", "lbl.nii.gz", "--set", f"{key}={value}") if a not in ("--device",
                                                                                                         "cpu")]

    return Case(f"set_{key}_{value}", point, argv, code, fragments or (key,))


CASES = [
    # 1. truncated or damaged files, images and annotations alike, for train and predict
    Case("truncated_image_nii_gz_train", "1", lambda d: train(d), 1, ("img.nii.gz", "truncated"),
         lambda d: truncate(d, "img.nii.gz")),
    Case("truncated_image_nii_gz_predict", "1", lambda d: predict(d), 1, ("other.nii.gz", "truncated"),
         lambda d: truncate(d, "other.nii.gz")),
    Case("crc_failure_nii_gz_train", "1", lambda d: train(d), 1, ("img.nii.gz", "integrity check"),
         lambda d: flip_bytes(d, "img.nii.gz")),
    Case("crc_failure_nii_gz_predict", "1", lambda d: predict(d), 1, ("other.nii.gz", "integrity check"),
         lambda d: flip_bytes(d, "other.nii.gz")),
    Case("truncated_label_nii_gz", "1", lambda d: train(d), 1, ("lbl.nii.gz", "truncated"),
         lambda d: truncate(d, "lbl.nii.gz")),
    Case("truncated_uncompressed_nii", "1", lambda d: predict(d, "plain.nii"), 1, ("plain.nii", "truncated"),
         lambda d: (write_volume(d, "plain.nii", compress=False), truncate(d, "plain.nii"))),
    Case("whole_gzip_of_a_truncated_nifti", "1", lambda d: predict(d, "regzipped.nii.gz"), 1,
         ("regzipped.nii.gz", "header describes"), gzip_of_half_a_nifti),
    Case("crc_failure_nrrd", "1", lambda d: predict(d, "v.nrrd"), 1, ("v.nrrd", "integrity check"),
         lambda d: (write_volume(d, "v.nrrd"), flip_bytes(d, "v.nrrd"))),
    Case("truncated_seg_nrrd_label", "1", lambda d: train(d, "img.nii.gz", "s.seg.nrrd"), 1, ("s.seg.nrrd",),
         lambda d: (seg_nrrd(d, "s.seg.nrrd", [("ring", phantom()[1] == 1)]), truncate(d, "s.seg.nrrd", 0.8))),
    # 2. segments of a .seg.nrrd
    Case("overlapping_segments", "2", lambda d: train(d, "img.nii.gz", "overlap.seg.nrrd"), 1,
         ("overlap.seg.nrrd", "'ring' and 'disc' overlap"), overlapping_segments),
    Case("segment_names_differing_in_case", "2", lambda d: train(d, "img.nii.gz", "clash.seg.nrrd"), 1,
         ("clash.seg.nrrd", "'X' and 'x'"), case_clashing_names),
    # 3. outputs never replace an input or mix with an earlier run
    Case("init_model_inside_out", "3", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--init-model",
                                                        str(d / "model.pt"), out="."), 1,
         ("model.pt", "lies where outputs")),
    Case("train_into_an_earlier_run", "3", lambda d: train(d, out="earlier"), 1, ("earlier", "earlier run"),
         earlier_run),
    Case("predict_into_an_earlier_run", "3", lambda d: predict(d, out="earlier"), 1, ("earlier", "earlier run"),
         earlier_run),
    # 4. evaluate --json
    Case("evaluate_json_onto_a_label_map", "4", lambda d: ["evaluate", "--pred", str(d / "pred"), "--labels",
                                                            str(d / "refs"), "--json", str(d / "refs" / "lbl.nii.gz")],
         2, ("ending in .json",), prediction_folder),
    Case("evaluate_json_onto_a_dataset_json", "4",
         lambda d: ["evaluate", "--pred", str(d / "pred"), "--labels", str(d / "refs"), "--json",
                    str(d / "ds" / "dataset.json")],
         1, ("dataset.json", "not a report"), lambda d: (prediction_folder(d), dataset(d))),
    # 5. --resume
    Case("resume_with_other_options", "5", lambda d: ["train", "--resume", str(d / "earlier"), "--iterations", "3"], 2,
         ("--resume DIR continues",), earlier_run),
    Case("resume_a_folder_without_job", "5", lambda d: ["train", "--resume", str(d)], 1, ("job.json", "not found")),
    # 6. one run per output folder
    Case("output_folder_held_by_another_run", "6", lambda d: train(d, out="busy"), 1,
         ("busy", "in use by another plcl run (process 4242)"), hold_lock),
    Case("predict_into_a_held_folder", "6", lambda d: predict(d, out="busy"), 1, ("busy", "in use"), hold_lock),
    # 7. absurd geometry and model fields: an error naming the file before any allocation
    Case("spacing_1e6_mm", "7", lambda d: train(d, "huge.nii.gz", "huge_lbl.nii.gz"), 1,
         ("huge.nii.gz", "voxel spacing"),
         lambda d: (write_volume(d, "huge.nii.gz", spacing=(1e6, 1e6, 7.5)),
                    write_volume(d, "huge_lbl.nii.gz", phantom()[1], spacing=(1e6, 1e6, 7.5)))),
    Case("spacing_1e-6_mm_predict", "7", lambda d: predict(d, "tiny.nii.gz"), 1, ("tiny.nii.gz", "voxel spacing"),
         lambda d: write_volume(d, "tiny.nii.gz", spacing=(1e-6, 1e-6, 1e-6))),
    Case("slices_too_large_for_the_model", "7", lambda d: predict(d, "coarse.nii.gz", model="fine.pt"), 1,
         ("coarse.nii.gz", "slices would be"),
         lambda d: (write_volume(d, "coarse.nii.gz", spacing=(500.0, 500.0, 5.0)),
                    model_variant(d, "fine.pt", lambda p: p["info"].update(target_spacing_mm=0.01)))),
    Case("model_huge_base_channels", "7", lambda d: predict(d, model="m.pt"), 1, ("m.pt", "base_channels"),
         lambda d: model_variant(d, "m.pt", lambda p: p["info"]["architecture"].update(base_channels=10**6))),
    Case("model_class_value_300", "7", lambda d: predict(d, model="m.pt"), 1, ("m.pt", "class values"),
         lambda d: model_variant(d, "m.pt", lambda p: p["info"]["classes"][0].update(value=300))),
    Case("model_target_spacing_0", "7", lambda d: predict(d, model="m.pt"), 1, ("m.pt", "target_spacing_mm"),
         lambda d: model_variant(d, "m.pt", lambda p: p["info"].update(target_spacing_mm=0.0))),
    Case("model_without_architecture", "7", lambda d: predict(d, model="m.pt"), 1, ("m.pt", "architecture"),
         lambda d: model_variant(d, "m.pt", lambda p: p["info"].pop("architecture"))),
    Case("model_weights_of_another_architecture", "7", lambda d: predict(d, model="m.pt"), 1,
         ("m.pt", "weights do not match"),
         lambda d: model_variant(d, "m.pt", lambda p: p["info"]["architecture"].update(base_channels=8))),
    Case("init_model_of_another_network", "held",
         lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--set", "base_channels=4", "--set", "embedding_levels=2",
                         "--init-model", str(d / "model.pt")), 1,
         ("model.pt", "embedding_levels 1 (settings: 2)", "warm start keeps")),
    Case("init_model_of_another_slice_context", "new",
         lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--set", "slice_context=1", "--init-model",
                         str(d / "model.pt")),
         1, ("model.pt", "slice_context 0 (settings: 1)", "warm start keeps")),
    Case("model_input_channels_not_its_slice_context", "new", lambda d: predict(d, model="m.pt"), 1,
         ("m.pt", "3 input channels", "1 expected"),
         lambda d: model_variant(d, "m.pt", lambda p: p["info"]["architecture"].update(in_channels=3))),
    Case("init_model_malformed", "7", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--init-model", str(d / "m.pt")),
         1, ("m.pt", "levels"),
         lambda d: model_variant(d, "m.pt", lambda p: p["info"]["architecture"].update(levels=40))),
    # 9. every value checked before anything is written: a usage error
    Case("iterations_0", "9", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--iterations", "0"), 2,
         ("--iterations 0",)),
    Case("minutes_0", "9", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--minutes", "0"), 2, ("--minutes 0",)),
    Case("minutes_negative", "9", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--minutes", "-1"), 2,
         ("--minutes -1",)),
    _set("batch_size", "0", 2, "batch_size=0", "must be from 1"),
    _set("learning_rate", "abc", 2, "learning_rate='abc'", "a number"),
    _set("learning_rate", "-0.1", 2, "learning_rate"),
    _set("device", "tpu", 2, "device must be"),
    _set("seed", "-1", 2, "seed=-1"),
    _set("seed", "1.5", 2, "seed=1.5", "whole number"),
    _set("levels", "40", 2, "levels=40"),
    _set("rounds", "true", 2, "rounds=True"),
    _set("scale_range", "[2, 1]", 2, "scale_range"),
    _set("patch_size", "33", 2, "multiple of", point="held"),
    _set("no_such_field", "1", 2, "KEY one of", point="held"),
    # options added after issue 11 (the batch builder, annotated slices) meet the same rules
    _set("fused_optimizer", '"yes"', 2, "fused_optimizer='yes'", "true or false", point="new"),
    _set("background_batches", "2", 2, "background_batches=2", "true or false", point="new"),
    _set("cutmix_probability", "1.5", 2, "cutmix_probability=1.5", "must be from 0", point="new"),
    _set("contrastive_targets", "momentum", 2, "contrastive_targets must be", "not 'momentum'", point="new"),
    _set("anchor_sampling", "hardest", 2, "anchor_sampling must be", "not 'hardest'", point="new"),
    _set("online_pseudo_labels", "1", 2, "online_pseudo_labels=1", "true or false", point="new"),
    _set("orientation_augmentation", "yes", 2, "orientation_augmentation='yes'", "true or false", point="new"),
    _set("slice_position_balance", "yes", 2, "slice_position_balance='yes'", "true or false", point="new"),
    _set("partial_slice_share", "1.5", 2, "partial_slice_share=1.5", "from 0 to 0.99", point="new"),
    _set("warm_start_labels", "initial", 2, "warm_start_labels must be 'warmed' or 'reviewed'", point="new"),
    _set("elastic_points", "1", 2, "elastic_points=1", "from 2 to 64", point="new"),
    _set("elastic_points", "2.5", 2, "elastic_points=2.5", point="new"),
    _set("slice_context", "4", 2, "slice_context=4", "from 0 to 3", point="new"),
    _set("slice_context", "0.5", 2, "slice_context=0.5", point="new"),
    _set("learning_rate_schedule", "linear", 2, "learning_rate_schedule must be", "'cosine'", point="new"),
    _set("teacher_horizon", "1.5", 2, "teacher_horizon=1.5", "must be from 0", point="new"),
    _set("warmup_contrastive_from", "1.5", 2, "warmup_contrastive_from=1.5", "must be from 0", point="new"),
    _set("prototype_momentum", "1", 2, "prototype_momentum=1", "must be from 0", point="new"),
    Case("annotated_slices_out_of_range", "new", lambda d: train(d, "img.nii.gz", "lbl.nii.gz",
                                                                 "--annotated-slices", "1,7"), 2,
         ("img.nii.gz", "slice 7 is out of range")),
    Case("annotated_slices_unreadable", "new", lambda d: train(d, "img.nii.gz", "lbl.nii.gz",
                                                               "--annotated-slices", "two"), 2,
         ("--annotated-slices",)),
    # 10. a model file that is not one: never suggest the unsafe load; no code runs
    Case("model_needing_weights_only_false", "10", lambda d: predict(d, model="objects.pt"), 1,
         ("objects.pt", "not a PLCLSegmentation model file", "refused without running"), pickled_object_model,
         never=("Traceback", "weights_only", "weights_only=False")),
    Case("hostile_pickle_as_model", "10", lambda d: predict(d, model="evil.pt"), 1, ("evil.pt",), hostile_pickle,
         never=("Traceback", "weights_only")),
    Case("hostile_pickle_as_init_model", "held", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--init-model",
                                                                 str(d / "evil.pt")), 1, ("evil.pt",), hostile_pickle),
    Case("hostile_pickle_as_checkpoint", "10", lambda d: ["train", "--resume", str(d / "run")], 1,
         ("checkpoint.pt", "cannot be read as a checkpoint"),
         lambda d: (hostile_pickle(d), (d / "run").mkdir(), shutil.move(d / "evil.pt", d / "run" / "checkpoint.pt"),
                    (d / "run" / "job.json").write_text(json.dumps(_job(d))))),
    # held: the cases of the first probe that passed
    Case("label_on_another_grid", "held", lambda d: train(d, "img.nii.gz", "moved.nii.gz"), 1,
         ("moved.nii.gz", "not on the grid of image"),
         lambda d: write_volume(d, "moved.nii.gz", phantom()[1], origin=(0.0, 0.0, 0.0))),
    Case("label_on_a_grid_0.3_mm_off", "held", lambda d: train(d, "img.nii.gz", "moved.nii.gz"), 1,
         ("moved.nii.gz", "not on the grid of image"),
         lambda d: write_volume(d, "moved.nii.gz", phantom()[1], origin=(-12.2, 40.0, 3.25))),
    Case("label_values_outside_the_classes", "held",
         lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a", "--out", str(d / "out"), *TINY], 1,
         ("a.nii.gz", "label value 7 outside the classes"), dataset),
    Case("annotation_without_foreground", "held", lambda d: train(d, "img.nii.gz", "empty.nii.gz"), 1,
         ("empty.nii.gz", "no foreground"), lambda d: write_volume(d, "empty.nii.gz", np.zeros_like(phantom()[1]))),
    Case("2d_image", "held", lambda d: train(d, "flat.nrrd"), 1, ("flat.nrrd", "2D image"),
         lambda d: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(d / "flat.nrrd"))),
    # cine (issue 13): 4D images
    Case("4d_image_to_labeled", "cine", lambda d: train(d, "cine.nii.gz"), 1,
         ("cine.nii.gz", "4D image (2 frames)", "--labeled-frame"),
         lambda d: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 8, 8), np.int16), isVector=False),
                                   str(d / "cine.nii.gz"))),
    Case("labeled_frame_out_of_range", "cine", lambda d: labeled_frame(d, "7"), 1,
         ("cine.nii.gz", "no frame 7", "2 frames"), cine),
    Case("labeled_frame_not_an_index", "cine", lambda d: labeled_frame(d, "first"), 2, ("FRAME 'first'",), cine),
    Case("labeled_frame_of_a_3d_image", "cine", lambda d: labeled_frame(d, "0", "img.nii.gz"), 1,
         ("img.nii.gz", "not a 4D image")),
    Case("labeled_frame_twice", "cine", lambda d: labeled_frame(d, "1") + ["--labeled-frame", str(d / "cine.nii.gz"),
                                                                           "1", str(d / "lbl.nii.gz")], 1,
         ("cine.nii.gz", "frame 1 is given twice"), cine),
    Case("labeled_frame_label_on_another_grid", "cine", lambda d: ["train", "--labeled-frame", str(d / "cine.nii.gz"),
                                                                   "0", str(d / "moved.nii.gz"), "--out",
                                                                   str(d / "out"), *TINY], 1,
         ("moved.nii.gz", "not on the grid of image"),
         lambda d: (cine(d), write_volume(d, "moved.nii.gz", phantom()[1], origin=(0.0, 0.0, 0.0)))),
    Case("non_uniform_time_axis_predict", "cine", lambda d: predict(d, "uneven.seq.nrrd"), 1,
         ("uneven.seq.nrrd", "time axis is not uniform"), lambda d: seq_nrrd(d, "uneven.seq.nrrd", times=[0, 30, 90])),
    Case("non_uniform_time_axis_unlabeled", "cine", lambda d: train(d)[:4] + ["--unlabeled", str(d / "uneven.seq.nrrd"),
                                                                             *train(d)[6:]], 1,
         ("uneven.seq.nrrd", "time axis is not uniform"), lambda d: seq_nrrd(d, "uneven.seq.nrrd", times=[0, 30, 90])),
    Case("frames_moving_in_space_predict", "cine", lambda d: predict(d, "moving.nrrd"), 1,
         ("moving.nrrd", "frames do not share one grid"),
         lambda d: seq_nrrd(d, "moving.nrrd", time_direction=(0.0, 0.0, 4.0))),
    Case("rgb_image", "held", lambda d: predict(d, "rgb.nrrd"), 1, ("rgb.nrrd", "components per voxel"),
         lambda d: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True),
                                   str(d / "rgb.nrrd"))),
    Case("nan_voxels", "held", lambda d: predict(d, "nan.nrrd"), 1, ("nan.nrrd", "NaN"),
         lambda d: write_volume(d, "nan.nrrd", np.full((7, 48, 40), np.nan, np.float32))),
    Case("unreadable_file", "held", lambda d: train(d, "broken.nii.gz"), 1, ("broken.nii.gz",),
         lambda d: (d / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a volume")),
    Case("not_an_image", "held", lambda d: predict(d, "notes.nrrd"), 1, ("notes.nrrd", "cannot be read"),
         lambda d: (d / "notes.nrrd").write_text("hello")),
    Case("missing_label", "held", lambda d: train(d, "img.nii.gz", "nowhere.nii.gz"), 1,
         ("nowhere.nii.gz", "not found")),
    Case("missing_model", "held", lambda d: predict(d, model="nowhere.pt"), 1, ("nowhere.pt", "not found")),
    Case("output_under_a_file", "held", lambda d: train(d, out="note.txt/out"), 1, ("note.txt", "is a file"),
         lambda d: (d / "note.txt").write_text("a file")),
    Case("output_on_a_read_only_filesystem", "held",
         lambda d: ["predict", "--model", str(d / "model.pt"), "--out", "/proc/plcl-output", str(d / "other.nii.gz")],
         1, ("/proc/plcl-output", "not writable")),
    Case("output_folder_that_would_replace_an_input", "held",
         lambda d: ["train", "--labeled", str(d / "img.nii.gz"), str(d / "lbl.nii.gz"), "--unlabeled",
                    str(d / "predictions" / "x.nii.gz"), "--out", str(d), *TINY], 1,
         ("x.nii.gz", "choose another --out"),
         lambda d: ((d / "predictions").mkdir(), write_volume(d, "predictions/x.nii.gz"))),
    Case("same_volume_name_twice", "held", lambda d: predict(d, "other.nii.gz", "copy/other.nii.gz"), 1,
         ("other.nii.gz", "same name"),
         lambda d: ((d / "copy").mkdir(), shutil.copy(d / "other.nii.gz", d / "copy" / "other.nii.gz"))),
    Case("missing_out", "held", lambda d: ["train", "--labeled", str(d / "img.nii.gz"), str(d / "lbl.nii.gz")], 2,
         ("--out DIR is required",)),
    Case("cases_without_data", "held", lambda d: ["train", "--labeled-cases", "a", "--out", str(d / "out")], 2,
         ("need --data",)),
    Case("unknown_budget", "held", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--budget", "huge"), 2,
         ("invalid choice",)),
    Case("evaluate_missing_prediction_folder", "held",
         lambda d: ["evaluate", "--pred", str(d / "nowhere"), "--labels", str(d)], 1, ("nowhere", "not found")),
]


# --- issue 27: DICOM series and cine studies, and the output formats ------------------------------------


def dicom_folder(d: Path, name: str = "dcm", slices: int = 4, phases: int = 1) -> Path:
    """The phantom's first ``slices`` slices as a DICOM series, 2 mm apart (``phases`` > 1: a cine whose
    phases are 40 ms apart), one file per image named IM00000.dcm ... in the order of slice, then phase."""
    image = phantom()[0][:slices]
    volume = np.stack([image] * phases) if phases > 1 else image
    return write_series(d / name, volume, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3),
                        trigger_ms=[40.0 * t for t in range(phases)] if phases > 1 else None)


def edit_dicom(path: Path, **tags) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path)


def two_series_in_one_folder(d: Path) -> None:
    """Two series of the same slice positions (as when two acquisitions are exported together)."""
    dicom_folder(d)
    second = dicom_folder(d, "second")
    for path in sorted(second.iterdir()):
        edit_dicom(path, SeriesNumber=2, SeriesDescription="repeat")
        path.rename(d / "dcm" / f"B{path.name}")
    second.rmdir()


CASES += [
    Case("dicom_series_mixing_orientations", "27", lambda d: predict(d, "dcm"), 1,
         ("dcm", "mixes slice orientations", "IM00001.dcm", "series 1 'synthetic'"),
         lambda d: edit_dicom(dicom_folder(d) / "IM00001.dcm", ImageOrientationPatient=[0, 1, 0, 0, 0, -1])),
    Case("dicom_series_missing_a_slice", "27", lambda d: predict(d, "dcm"), 1,
         ("dcm", "missing or unevenly spaced slices", "4 mm between slice positions 0 and 4 mm", "IM00002.dcm",
          "series 1 'synthetic'", "others are 2 mm apart"),
         lambda d: (dicom_folder(d) / "IM00001.dcm").unlink()),
    Case("dicom_cine_with_a_phase_missing_at_one_slice", "27", lambda d: predict(d, "dcm"), 1,
         ("dcm", "inconsistent phases", "2 images at slice position 4 mm", "series 1 'synthetic'", "but 3"),
         lambda d: (dicom_folder(d, phases=3) / "IM00006.dcm").unlink()),
    Case("dicom_two_series_in_one_folder", "27", lambda d: predict(d, "dcm"), 1,
         ("dcm", "holds 2 series", "series 1 'synthetic'", "series 2 'repeat'", "give the folder of one series"),
         two_series_in_one_folder),
    Case("format_dicom_seg_of_a_nifti", "27", lambda d: [*predict(d), "--format", "dicom-seg"], 2,
         ("--format dicom-seg", "other.nii.gz", "not a DICOM series folder")),
    Case("format_dicom_seg_of_a_nifti_train", "27", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--format",
                                                                     "dicom-seg"), 2,
         ("--format dicom-seg", "other.nii.gz", "not a DICOM series folder")),
    Case("format_dicom_seg_of_a_partly_annotated_nifti_train", "27",
         lambda d: ["train", "--labeled", str(d / "img.nii.gz"), str(d / "lbl.nii.gz"), "--annotated-slices", "1",
                    "--unlabeled", str(d / "dcm"), "--format", "dicom-seg", "--out", str(d / "out"), *TINY], 2,
         ("--format dicom-seg", "img.nii.gz", "not a DICOM series folder"), lambda d: dicom_folder(d)),
    Case("dicom_seg_frames_beyond_the_cine", "27",
         lambda d: [*predict(d, "dcm"), "--format", "dicom-seg", "--dicom-seg-frames", "99"], 2,
         ("--dicom-seg-frames", "dcm", "no frame 99", "it has 10: 0 to 9"), lambda d: dicom_folder(d, slices=2,
                                                                                                  phases=10)),
    Case("resume_with_format", "27", lambda d: _resume(d, "--format", "nifti"), 2,
         ("--resume DIR continues", "--format"), earlier_run),
    Case("resume_with_dicom_seg_frames", "27", lambda d: _resume(d, "--dicom-seg-frames", "all"), 2,
         ("--resume DIR continues", "--dicom-seg-frames"), earlier_run),
    Case("format_with_shard", "27", lambda d: [*predict(d), "--shard", "0/1", "--format", "nifti"], 2,
         ("--format", "--shard", "a cohort folder holds .seg.nrrd files")),
    Case("format_with_skip_existing", "27", lambda d: [*predict(d), "--skip-existing", "--format", "seg.nrrd"], 2,
         ("--format", "--skip-existing")),
    Case("dicom_seg_frames_with_an_input_list", "27",
         lambda d: ["predict", "--model", str(d / "model.pt"), "--inputs", str(d / "cohort.txt"), "--out",
                    str(d / "out"), "--dicom-seg-frames", "all"], 2, ("--dicom-seg-frames", "--inputs"),
         lambda d: (d / "cohort.txt").write_text("other.nii.gz\n")),
]


# --- issue 26 (round two): every format's truncation, models, evaluate, datasets, resume, bench ---------


def write_as(d: Path, name: str, compress: bool = False, array: np.ndarray | None = None) -> None:
    """img.nii.gz's voxels (or ``array``) in the format of ``name`` (Analyze, MetaImage, NRRD, ...)."""
    write_volume(d, name, array, compress=compress)


def cut(d: Path, name: str, keep: float = 0.7) -> None:
    truncate(d, name, keep)


def dicom_series(d: Path, folder: str = "dcm") -> None:
    """The image as a DICOM series of one file per slice, sharing one series (positions in the tags)."""
    # ITK's GDCM writer leaves the process in the C locale (text files would then be read and written as
    # ASCII by every later test of this process): put the locale back.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_series(d, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(d: Path, folder: str) -> None:
    image = sitk.Cast(make_image(phantom()[0]), sitk.sitkInt16)
    (d / folder).mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {"0020|000e": "1.2.826.0.1.3680043.2.1125.42", "0020|000d": "1.2.826.0.1.3680043.2.1125.43",
            "0008|0060": "MR", "0020|0037": "1\\0\\0\\0\\1\\0", "0010|0010": "SYNTHETIC"}
    for k in range(image.GetDepth()):
        frame = image[:, :, k]
        for tag, value in tags.items():
            frame.SetMetaData(tag, value)
        frame.SetMetaData("0020|0013", str(k + 1))
        frame.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        frame.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.44.{k + 1}")
        writer.SetFileName(str(d / folder / f"slice{k:03d}.dcm"))
        writer.Execute(frame)


def float_nifti(d: Path, name: str, bad: float) -> None:
    array = phantom()[0].astype(np.float32)
    array[3, 20, 20] = bad
    write_volume(d, name, array, compress=name.endswith(".gz"))


def undeclared_segment_value(d: Path) -> None:
    """A .seg.nrrd whose voxels hold a value (5) that no segment declares."""
    import slicerio

    seg_nrrd(d, "stray.seg.nrrd", [("ring", phantom()[1] == 1)])
    segmentation = slicerio.read_segmentation(str(d / "stray.seg.nrrd"))
    voxels = np.array(segmentation["voxels"])
    voxels[20, 24, 3] = 5
    segmentation["voxels"] = voxels
    slicerio.write_segmentation(str(d / "stray.seg.nrrd"), segmentation)


def summary_text(d: Path, text: str) -> None:
    prediction_folder(d)
    (d / "pred" / "summary.json").write_text(text)


def reference_with(d: Path, value: int, where: str = "refs") -> None:
    prediction_folder(d)
    labels = phantom()[1]
    labels[3, 2:6, 2:6] = value
    write_volume(d, f"{where}/lbl.nii.gz", labels)


def dataset_meta(d: Path, meta) -> None:
    dataset(d)
    (d / "ds" / "dataset.json").write_text(json.dumps(meta))


def foreign_checkpoint(d: Path, run: str | None, state_of_another_network: bool) -> None:
    """The run folder of _job, with a checkpoint.pt written by another run."""
    from PLCLSegmentationLib.engine.method.train import Checkpoint

    (d / "run").mkdir()
    (d / "run" / "job.json").write_text(json.dumps(_job(d)))
    state = torch.load(d / "model.pt", weights_only=True)["state_dict"] if state_of_another_network else {}
    Checkpoint(1, state, {}, 0, [], run=run).save(d / "run" / "checkpoint.pt")


def no_label_on_slice_0(d: Path) -> None:
    labels = phantom()[1]
    labels[0] = 0
    write_volume(d, "lbl0.nii.gz", labels)


def bench(d: Path, *extra: str) -> list[str]:
    return ["bench", "--data", str(d / "ds"), "--out", str(d / "bench"), "--iterations", "2", "--seeds", "0",
            "--set", "patch_size=32", "--device", "cpu", *extra]


def model_field(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda d: model_variant(d, name, change)


def _nan_first_weight(payload: dict, value: float = float("nan")) -> None:
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], value)


def _resume(d: Path, *extra: str) -> list[str]:
    return ["train", "--resume", str(d / "earlier"), *extra]


def _evaluate(d: Path, *extra: str) -> list[str]:
    return ["evaluate", "--pred", str(d / "pred"), "--labels", str(d / "refs"), *extra]


def _setting(key: str, value: str, *fragments: str) -> Case:
    case = _set(key, value, 2, *fragments, point="26-settings")
    return dataclasses.replace(case, id=f"26_{case.id}")


P = predict
CASES += [
    # 1. truncation, for every format the readers accept
    Case("analyze_img_cut_short", "26.1", lambda d: P(d, "a.hdr"), 1, ("a.hdr", "truncated", "a.img"),
         lambda d: (write_as(d, "a.hdr"), cut(d, "a.img"))),
    Case("analyze_img_cut_short_given_as_img", "26.1", lambda d: P(d, "a.img"), 1, ("a.img", "truncated"),
         lambda d: (write_as(d, "a.hdr"), cut(d, "a.img"))),
    Case("analyze_without_its_img", "26.1", lambda d: P(d, "a.hdr"), 1, ("a.hdr", ".img file is not there"),
         lambda d: (write_as(d, "a.hdr"), (d / "a.img").unlink())),
    Case("analyze_cut_short_as_unlabeled", "26.1", lambda d: train(d)[:5] + [str(d / "a.hdr")] + train(d)[6:], 1,
         ("a.hdr", "truncated"), lambda d: (write_as(d, "a.hdr"), cut(d, "a.img"))),
    Case("mha_cut_short", "26.1", lambda d: P(d, "v.mha"), 1, ("v.mha", "truncated", "header describes"),
         lambda d: (write_as(d, "v.mha"), cut(d, "v.mha"))),
    Case("mha_compressed_cut_short", "26.1", lambda d: P(d, "v.mha"), 1, ("v.mha", "truncated"),
         lambda d: (write_as(d, "v.mha", compress=True), cut(d, "v.mha"))),
    Case("mha_label_cut_short", "26.1", lambda d: train(d, "img.nii.gz", "l.mha"), 1, ("l.mha", "truncated"),
         lambda d: (write_as(d, "l.mha", array=phantom()[1]), cut(d, "l.mha"))),
    Case("mhd_raw_cut_short", "26.1", lambda d: P(d, "v.mhd"), 1, ("v.mhd", "truncated", "v.raw"),
         lambda d: (write_as(d, "v.mhd"), cut(d, "v.raw"))),
    Case("mhd_compressed_cut_short", "26.1", lambda d: P(d, "v.mhd"), 1, ("v.mhd", "truncated"),
         lambda d: (write_as(d, "v.mhd", compress=True), cut(d, "v.zraw"))),
    Case("mhd_without_its_raw", "26.1", lambda d: P(d, "v.mhd"), 1, ("v.mhd", "v.raw that is not there"),
         lambda d: (write_as(d, "v.mhd"), (d / "v.raw").unlink())),
    Case("nrrd_raw_cut_short", "26.1", lambda d: P(d, "v.nrrd"), 1, ("v.nrrd", "truncated", "header describes"),
         lambda d: (write_as(d, "v.nrrd"), cut(d, "v.nrrd"))),
    Case("nrrd_gzip_cut_short", "26-held", lambda d: P(d, "v.nrrd"), 1, ("v.nrrd", "truncated"),
         lambda d: (write_as(d, "v.nrrd", compress=True), cut(d, "v.nrrd"))),
    Case("nrrd_raw_label_cut_short", "26.1", lambda d: train(d, "img.nii.gz", "l.nrrd"), 1, ("l.nrrd", "truncated"),
         lambda d: (write_as(d, "l.nrrd", array=phantom()[1]), cut(d, "l.nrrd", 0.9))),
    Case("nhdr_raw_cut_short", "26.1", lambda d: P(d, "v.nhdr"), 1, ("v.nhdr", "truncated", "v.raw"),
         lambda d: (write_as(d, "v.nhdr"), cut(d, "v.raw"))),
    Case("nhdr_gzip_cut_short", "26.1", lambda d: P(d, "v.nhdr"), 1, ("v.nhdr", "truncated"),
         lambda d: (write_as(d, "v.nhdr", compress=True), cut(d, "v.raw.gz"))),
    Case("nhdr_without_its_data_file", "26.1", lambda d: P(d, "v.nhdr"), 1, ("v.nhdr", "not there"),
         lambda d: (write_as(d, "v.nhdr"), (d / "v.raw").unlink())),
    Case("dicom_series_with_a_slice_cut_short", "26.1", lambda d: P(d, "dcm"), 1, ("slice003.dcm",),
         lambda d: (dicom_series(d), cut(d, "dcm/slice003.dcm", 0.8))),
    Case("dicom_series_cut_short_as_labeled_image", "26.1", lambda d: train(d, "dcm", "lbl.nii.gz"), 1,
         ("slice000.dcm",), lambda d: (dicom_series(d), cut(d, "dcm/slice000.dcm", 0.6))),
    Case("sequence_nrrd_cut_short", "26-held", lambda d: P(d, "cine.seq.nrrd"), 1, ("cine.seq.nrrd", "truncated"),
         lambda d: (seq_nrrd(d, "cine.seq.nrrd"), cut(d, "cine.seq.nrrd", 0.6))),
    Case("cine_nifti_cut_short_labeled_frame", "26-held", lambda d: labeled_frame(d, "0"), 1,
         ("cine.nii.gz", "truncated"),
         lambda d: (cine(d), cut(d, "cine.nii.gz", 0.6))),
    # 2. non-finite weights
    Case("model_nan_weights", "26.2", lambda d: P(d, model="m.pt"), 1, ("m.pt", "NaN or infinite"),
         model_field("m.pt", _nan_first_weight)),
    Case("model_inf_weights", "26.2", lambda d: P(d, model="m.pt"), 1, ("m.pt", "NaN or infinite"),
         model_field("m.pt", lambda p: _nan_first_weight(p, float("inf")))),
    Case("init_model_nan_weights", "26.2", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--init-model",
                                                           str(d / "m.pt")), 1, ("m.pt", "NaN or infinite"),
         model_field("m.pt", _nan_first_weight)),
    # 4. --annotated-slices: ranges checked against the image before they are expanded
    Case("annotated_slices_range_of_a_trillion", "26.4",
         lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--annotated-slices", "0-999999999999"), 2,
         ("img.nii.gz", "slice 999999999999 is out of range", "7 slices")),
    Case("annotated_slices_huge_single_index", "26.4",
         lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--annotated-slices", "2,99999999999999999999"), 2,
         ("img.nii.gz", "out of range")),
    Case("annotated_slices_decreasing_range", "26-held",
         lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--annotated-slices", "5-3"), 2, ("'5-3'", "increasing")),
    Case("annotated_slices_negative", "26-held",
         lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--annotated-slices", "-2"), 2, ("--annotated-slices",)),
    Case("annotated_slices_count_mismatch", "26-held",
         lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--annotated-slices", "1", "--annotated-slices", "2"), 2,
         ("2 --annotated-slices values for 1 annotated volumes",)),
    # 5. --set budget
    Case("set_budget", "26.5", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--set", "budget=quick"), 2,
         ("--set budget='quick'", "--budget")),
    Case("set_budget_unknown", "26.5", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--set", "budget=3"), 2,
         ("--set budget=3",)),
    # 6. bench: every method's and variant's whole configuration before any run
    Case("bench_variant_levels_against_the_set_patch_size", "26.6", lambda d: bench(d, "--variant", "deep:levels=7"),
         2, ("--variant deep", "patch_size 32 must be a multiple of 64"), dataset),
    Case("bench_variant_budget", "26.6", lambda d: bench(d, "--variant", 'b:budget="full"'), 2,
         ("--variant b:budget", "--budget"), dataset),
    Case("bench_variant_unknown_key", "26-held", lambda d: bench(d, "--variant", "x:no_such=1"), 2, ("--variant",),
         dataset),
    Case("bench_variant_bad_value", "26-held", lambda d: bench(d, "--variant", "x:batch_size=0"), 2,
         ("batch_size=0",), dataset),
    Case("bench_variant_name_twice", "26-held",
         lambda d: bench(d, "--variant", "x:rounds=1", "--variant", "x:rounds=2"),
         2, ("given twice",), dataset),
    Case("bench_variant_without_settings", "26-held", lambda d: bench(d, "--variant", "x"), 2, ("NAME:KEY=VALUE",),
         dataset),
    Case("bench_set_for_all_methods_wrong", "26.6", lambda d: bench(d, "--set", "levels=9"), 2,
         ("method", "levels=9"), dataset),
    Case("bench_unknown_method", "26-held", lambda d: bench(d, "--methods", "plcl,magic"), 2, ("unknown methods",),
         dataset),
    Case("bench_labeled_slices_0", "26-held", lambda d: bench(d, "--labeled-slices", "0"), 2, ("--labeled-slices",),
         dataset),
    Case("bench_whole_volumes_alone", "26-held", lambda d: bench(d, "--as-whole-volumes"), 2, ("--as-whole-volumes",),
         dataset),
    Case("bench_propagation_frames_2", "26-held", lambda d: bench(d, "--propagation-frames", "2"), 2,
         ("--propagation-frames 2",), dataset),
    Case("bench_minutes_too_short", "26.6", lambda d: bench(d, "--iterations", "0", "--minutes", "0.01"), 2,
         ("--minutes 0.01",), dataset),
    # 7. evaluate: a damaged summary.json, or one without classes
    Case("evaluate_summary_not_json", "26.7", lambda d: _evaluate(d), 1, ("summary.json", "cannot be read"),
         lambda d: summary_text(d, "{ this is not json")),
    Case("evaluate_summary_classes_empty", "26.7", lambda d: _evaluate(d), 1, ("summary.json", "lists no classes"),
         lambda d: summary_text(d, json.dumps({"classes": []}))),
    Case("evaluate_summary_without_classes", "26.7", lambda d: _evaluate(d), 1, ("summary.json", "lists no classes"),
         lambda d: summary_text(d, json.dumps({"volumes": []}))),
    Case("evaluate_summary_a_list", "26.7", lambda d: _evaluate(d), 1, ("summary.json", "not a JSON object"),
         lambda d: summary_text(d, "[1, 2]")),
    Case("evaluate_summary_class_without_name", "26.7", lambda d: _evaluate(d), 1, ("summary.json", "malformed"),
         lambda d: summary_text(d, json.dumps({"classes": [{"value": 1, "color": [1, 0, 0]}]}))),
    Case("evaluate_summary_class_value_0", "26.7", lambda d: _evaluate(d), 1, ("summary.json", "distinct values"),
         lambda d: summary_text(d, json.dumps({"classes": [{"value": 0, "name": "x", "color": [1, 0, 0]}]}))),
    # 8. values outside the classes are refused, not counted as background
    Case("evaluate_reference_value_outside_the_classes", "26.8", lambda d: _evaluate(d), 1,
         ("refs/lbl.nii.gz", "label values 3 outside the classes"), lambda d: reference_with(d, 3)),
    Case("evaluate_prediction_value_outside_the_classes", "26.8", lambda d: _evaluate(d), 1,
         ("pred/lbl.nii.gz", "label values 9 outside the classes"), lambda d: reference_with(d, 9, "pred")),
    Case("seg_nrrd_voxel_value_no_segment_declares", "26.8", lambda d: train(d, "img.nii.gz", "stray.seg.nrrd"), 1,
         ("stray.seg.nrrd", "voxel values 5", "no segment declares"), undeclared_segment_value),
    Case("evaluate_seg_nrrd_reference_with_an_undeclared_value", "26.8", lambda d: _evaluate(d), 1,
         ("lbl.seg.nrrd", "voxel values 5"),
         lambda d: (prediction_folder(d), undeclared_segment_value(d), (d / "refs" / "lbl.nii.gz").unlink(),
                    shutil.move(d / "stray.seg.nrrd", d / "refs" / "lbl.seg.nrrd"))),
    # 9. model fields, dataset.json and --out paths that used to end in a traceback
    Case("model_percentiles_as_strings", "26.9", lambda d: P(d, model="m.pt"), 1, ("m.pt", "percentiles"),
         model_field("m.pt", lambda p: p["info"]["normalisation"].update(percentiles=["1.0", "99.0"]))),
    Case("model_percentiles_not_a_list", "26.9", lambda d: P(d, model="m.pt"), 1, ("m.pt", "percentiles"),
         model_field("m.pt", lambda p: p["info"]["normalisation"].update(percentiles=5))),
    Case("model_percentiles_reversed", "26-held", lambda d: P(d, model="m.pt"), 1, ("m.pt", "percentiles"),
         model_field("m.pt", lambda p: p["info"]["normalisation"].update(percentiles=[99.0, 1.0]))),
    Case("dataset_json_a_list", "26.9", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a", "--out",
                                                   str(d / "out"), *TINY], 1, ("dataset.json", "JSON object"),
         lambda d: dataset_meta(d, [1, 2, 3])),
    Case("dataset_labels_a_list", "26.9", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a",
                                                     "--out", str(d / "out"), *TINY], 1, ("dataset.json", "'labels'"),
         lambda d: dataset_meta(d, {"labels": ["bg", "ring"], "cases": {"train": ["a"]}})),
    Case("dataset_labels_not_numbers", "26-held", lambda d: ["evaluate", "--pred", str(d / "pred"), "--data",
                                                          str(d / "ds"), "--split", "val"], 1,
         ("dataset.json", "'labels'"),
         lambda d: (prediction_folder(d), dataset_meta(d, {"labels": {"x": "bg"}, "cases": {"val": ["a"]}}))),
    Case("dataset_cases_a_list", "26-held", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a",
                                                    "--out", str(d / "out"), *TINY], 1, ("dataset.json", "'cases'"),
         lambda d: dataset_meta(d, {"labels": {"0": "bg"}, "cases": ["a"]})),
    Case("out_through_a_symlink_loop_train", "26.9", lambda d: train(d, out="loop/out"), 1, ("loop/out",),
         lambda d: (d / "loop").symlink_to(d / "loop")),
    Case("out_through_a_symlink_loop_predict", "26.9", lambda d: P(d, out="loop/out"), 1, ("loop/out",),
         lambda d: (d / "loop").symlink_to(d / "loop")),
    # 10. NaN/Inf voxels: the same rule for NIfTI as for NRRD and MHA
    Case("nan_voxel_nii_gz", "26.10", lambda d: P(d, "nan.nii.gz"), 1, ("nan.nii.gz", "NaN or infinite"),
         lambda d: float_nifti(d, "nan.nii.gz", float("nan"))),
    Case("inf_voxel_nii", "26.10", lambda d: P(d, "inf.nii"), 1, ("inf.nii", "NaN or infinite"),
         lambda d: float_nifti(d, "inf.nii", float("inf"))),
    Case("nan_voxel_nii_gz_annotated_image", "26.10", lambda d: train(d, "nan.nii.gz"), 1,
         ("nan.nii.gz", "NaN or infinite"), lambda d: float_nifti(d, "nan.nii.gz", float("nan"))),
    Case("nan_voxel_mha", "26-held", lambda d: P(d, "nan.mha"), 1, ("nan.mha", "NaN"),
         lambda d: write_volume(d, "nan.mha", np.full((7, 48, 40), np.nan, np.float32))),
    # 11. case names never reach outside the dataset
    Case("dataset_case_with_dotdot", "26.11", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a",
                                                         "--out", str(d / "out"), *TINY], 1,
         ("dataset.json", "'../img'", "outside"),
         lambda d: dataset_meta(d, {"labels": {"0": "bg"}, "cases": {"train": ["a", "../img"]}})),
    Case("dataset_case_absolute", "26.11", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a",
                                                      "--out", str(d / "out"), *TINY], 1, ("dataset.json", "outside"),
         lambda d: dataset_meta(d, {"labels": {"0": "bg"}, "cases": {"train": [str(d / "img")]}})),
    Case("labeled_cases_with_dotdot", "26.11", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases",
                                                          "../../img", "--out", str(d / "out"), *TINY], 1,
         ("images", "'../../img' is not a case name"), dataset),
    Case("unlabeled_cases_absolute", "26.11", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a",
                                                         "--unlabeled-cases", str(d / "other"), "--out",
                                                         str(d / "out"), *TINY], 1, ("is not a case name",), dataset),
    # 13. misleading or missing
    Case("annotated_slices_holding_no_label", "26.13",
         lambda d: train(d, "img.nii.gz", "lbl0.nii.gz", "--annotated-slices", "0"), 1,
         ("lbl0.nii.gz", "none of the annotated slices"), no_label_on_slice_0),
    Case("minutes_0.001", "26.13", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--minutes", "0.001"), 2,
         ("--minutes 0.001", "from 0.1")),
    Case("minutes_two_years", "26.13", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--minutes", "1051200"), 2,
         ("--minutes 1.0512e+06", "to 527040")),
    Case("minutes_nan", "26-held", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--minutes", "nan"), 2,
         ("--minutes nan",)),
    Case("evaluate_json_into_a_missing_folder", "26.13", lambda d: _evaluate(d, "--json", str(d / "no" / "r.json")),
         1, ("no", "folder not found"), prediction_folder),
    Case("model_neighbour_shares_not_square", "26.13", lambda d: P(d, model="m.pt"), 1,
         ("m.pt", "neighbour_shares"), model_field("m.pt", lambda p: p["info"].update(neighbour_shares=[[1, 0]]))),
    Case("model_neighbour_shares_above_one", "26.13", lambda d: P(d, model="m.pt"), 1,
         ("m.pt", "neighbour_shares"),
         model_field("m.pt", lambda p: p["info"].update(neighbour_shares=[[2.0] * 4 for _ in range(4)]))),
    Case("model_slice_coverage_short", "26.13", lambda d: P(d, model="m.pt"), 1, ("m.pt", "slice_coverage"),
         model_field("m.pt", lambda p: p["info"].update(slice_coverage=[1.0, 0.5]))),
    Case("model_slice_coverage_text", "26.13", lambda d: P(d, model="m.pt"), 1, ("m.pt", "slice_coverage"),
         model_field("m.pt", lambda p: p["info"].update(slice_coverage=["1.0", 0.5, 0.5, 0.5]))),
    Case("model_slice_coverage_negative", "26.13", lambda d: P(d, model="m.pt"), 1, ("m.pt", "slice_coverage"),
         model_field("m.pt", lambda p: p["info"].update(slice_coverage=[1.0, -0.5, 0.5, 0.5]))),
    Case("model_single_objects_short", "26.13", lambda d: P(d, model="m.pt"), 1, ("m.pt", "single_objects"),
         model_field("m.pt", lambda p: p["info"].update(single_objects=[True]))),
    Case("model_in_plane_reference_parallel", "26.13", lambda d: P(d, model="m.pt"), 1, ("m.pt", "in_plane_reference"),
         model_field("m.pt", lambda p: p["info"].update(in_plane_reference=[[1, 0, 0], [1, 0, 0]]))),
    Case("model_in_plane_reference_zero", "26.13", lambda d: P(d, model="m.pt"), 1, ("m.pt", "in_plane_reference"),
         model_field("m.pt", lambda p: p["info"].update(in_plane_reference=[[0, 0, 0], [0, 1, 0]]))),
    Case("model_in_plane_reference_short", "26-held", lambda d: P(d, model="m.pt"), 1, ("m.pt", "in_plane_reference"),
         model_field("m.pt", lambda p: p["info"].update(in_plane_reference=[[1, 0], [0, 1]]))),
    Case("model_in_plane_reference_text", "26.13", lambda d: P(d, model="m.pt"), 1, ("m.pt", "in_plane_reference"),
         model_field("m.pt", lambda p: p["info"].update(in_plane_reference="axial"))),
    # 14. --resume
    Case("resume_with_out", "26.14", lambda d: _resume(d, "--out", str(d / "elsewhere")), 2, ("--out",), earlier_run),
    Case("resume_with_seed", "26.14", lambda d: _resume(d, "--seed", "3"), 2, ("--seed",), earlier_run),
    Case("resume_with_annotated_slices", "26.14", lambda d: _resume(d, "--annotated-slices", "1"), 2,
         ("--annotated-slices",), earlier_run),
    Case("resume_with_data", "26.14", lambda d: _resume(d, "--data", str(d / "ds")), 2, ("--data",), earlier_run),
    Case("resume_with_labeled_cases", "26.14", lambda d: _resume(d, "--labeled-cases", "a"), 2, ("--labeled-cases",),
         earlier_run),
    Case("resume_another_runs_checkpoint", "26.14", lambda d: ["train", "--resume", str(d / "run")], 1,
         ("checkpoint.pt", "another run"), lambda d: foreign_checkpoint(d, "0123456789abcdef", False)),
    Case("resume_a_checkpoint_of_another_network", "26.14", lambda d: ["train", "--resume", str(d / "run")], 1,
         ("checkpoint.pt", "does not fit"), lambda d: foreign_checkpoint(d, None, True)),
    Case("resume_a_damaged_job_json", "26-held", lambda d: ["train", "--resume", str(d / "run")], 1,
         ("job.json", "not a job file"),
         lambda d: ((d / "run").mkdir(), (d / "run" / "job.json").write_text('{"labeled": 3}'))),
    # every option of every command: settings
    _setting("patch_size", "7", "patch_size=7"),
    _setting("base_channels", "0", "base_channels=0"),
    _setting("embedding_dim", "2000", "embedding_dim=2000"),
    _setting("embedding_levels", "3", "embedding_levels 3", "at most 2 with levels 3"),
    _setting("contrastive_images", "0", "contrastive_images=0"),
    _setting("warmup_iterations", "0", "warmup_iterations=0"),
    _setting("rounds", "-1", "rounds=-1"),
    _setting("teacher_ema", "1", "teacher_ema=1"),
    _setting("pseudo_label_confidence", "2", "pseudo_label_confidence=2"),
    _setting("temperature", "0", "temperature=0"),
    _setting("temperature_start", "-1", "temperature_start=-1"),
    _setting("inference_tile", "8", "inference_tile=8"),
    _setting("inference_overlap", "0.95", "inference_overlap=0.95"),
    _setting("snapshots", "-1", "snapshots=-1"),
    _setting("checkpoint_every", "0", "checkpoint_every=0"),
    _setting("segmentation_loss", "bce", "segmentation_loss must be"),
    _setting("augmentation", "wild", "augmentation must be"),
    _setting("precision", "fp16", "precision must be"),
    _setting("intensity_percentiles", "[99, 1]", "intensity_percentiles"),
    _setting("rotation_degrees", "200", "rotation_degrees=200"),
    _setting("target_spacing_mm", "0", "target_spacing_mm=0"),
    _setting("contrast_range", "[0, 1]", "contrast_range"),
    _setting("time_budget_s", "0", "time_budget_s=0"),
    _setting("compile", "1", "compile=1", "true or false"),
    # every option of every command: train, predict, evaluate
    Case("iterations_and_minutes", "26-options", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--minutes", "1"),
         2, ("not both",)),
    Case("iterations_negative", "26-options", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--iterations", "-5"),
         2, ("--iterations -5",)),
    Case("n_unlabeled_negative", "26-options", lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a",
                                                          "--n-unlabeled", "-1", "--out", str(d / "out"), *TINY], 2,
         ("--n-unlabeled -1",), dataset),
    Case("data_folder_without_dataset_json", "26-options",
         lambda d: ["train", "--data", str(d), "--labeled-cases", "a", "--out", str(d / "out"), *TINY], 1,
         ("dataset.json", "not found")),
    Case("labeled_case_not_in_the_dataset", "26-options",
         lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "zz", "--out", str(d / "out"), *TINY], 1,
         ("zz", "no image file"), dataset),
    Case("unlabeled_split_unknown", "26-options",
         lambda d: ["train", "--data", str(d / "ds"), "--labeled-cases", "a", "--unlabeled-split", "test", "--out",
                    str(d / "out"), *TINY], 1, ("dataset.json", "no split 'test'"), dataset),
    Case("init_model_missing", "26-options", lambda d: train(d, "img.nii.gz", "lbl.nii.gz", "--init-model",
                                                             str(d / "none.pt")), 1, ("none.pt", "not found")),
    Case("missing_labeled_image", "26-options", lambda d: train(d, "nowhere.nii.gz"), 1,
         ("nowhere.nii.gz", "not found")),
    Case("missing_unlabeled_image", "26-options", lambda d: train(d)[:5] + [str(d / "gone.nrrd")] + train(d)[6:], 1,
         ("gone.nrrd", "not found")),
    Case("labeled_frame_negative", "26-options", lambda d: labeled_frame(d, "-1"), 2, ("FRAME '-1'",), cine),
    Case("label_negative_values", "26-options", lambda d: train(d, "img.nii.gz", "neg.nii.gz"), 1,
         ("neg.nii.gz", "label values from -1"),
         lambda d: write_volume(d, "neg.nii.gz", phantom()[1].astype(np.int16) - 1)),
    Case("label_fractional_values", "26-options", lambda d: train(d, "img.nii.gz", "half.nii.gz"), 1,
         ("half.nii.gz", "non-integer"),
         lambda d: write_volume(d, "half.nii.gz", phantom()[1].astype(np.float32) / 2)),
    Case("label_2d", "26-options", lambda d: train(d, "img.nii.gz", "flat.nrrd"), 1, ("flat.nrrd", "2D image"),
         lambda d: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((48, 40), np.uint8)), str(d / "flat.nrrd"))),
    Case("predict_unknown_device", "26-options", lambda d: P(d)[:-3] + ["--device", "tpu", str(d / "other.nii.gz")], 2,
         ("--device", "'tpu'", "cuda:N")),
    Case("predict_device_bad_gpu_number", "26-options",
         lambda d: P(d)[:-3] + ["--device", "cuda:one", str(d / "other.nii.gz")], 2, ("--device", "'cuda:one'")),
    # A GPU this machine does not have: no CUDA at all here, too few GPUs on a GPU machine.
    Case("predict_device_gpu_absent", "26-options",
         lambda d: P(d)[:-3] + ["--device", "cuda:99", str(d / "other.nii.gz")], 2, ("--device cuda:99", "CUDA GPU")),
    Case("model_is_a_folder", "26-options", lambda d: P(d, model="folder.pt"), 1, ("folder.pt", "not found"),
         lambda d: (d / "folder.pt").mkdir()),
    Case("model_empty_file", "26-options", lambda d: P(d, model="empty.pt"), 1,
         ("empty.pt", "not a PLCLSegmentation model"), lambda d: (d / "empty.pt").write_bytes(b"")),
    Case("model_of_a_newer_format", "26-options", lambda d: P(d, model="m.pt"), 1, ("m.pt", "newer"),
         model_field("m.pt", lambda p: p.update(format_version=99))),
    Case("model_of_another_format", "26-options", lambda d: P(d, model="m.pt"), 1, ("m.pt", "not a PLCLSegmentation"),
         model_field("m.pt", lambda p: p.update(format="something-else"))),
    Case("model_without_classes", "26-options", lambda d: P(d, model="m.pt"), 1, ("m.pt", "classes"),
         model_field("m.pt", lambda p: p["info"].update(classes=[]))),
    Case("model_inference_overlap_0.95", "26-options", lambda d: P(d, model="m.pt"), 1, ("m.pt", "inference_overlap"),
         model_field("m.pt", lambda p: p["info"].update(inference_overlap=0.95))),
    Case("model_weights_not_tensors", "26-options", lambda d: P(d, model="m.pt"), 1, ("m.pt", "state_dict"),
         model_field("m.pt", lambda p: p.update(state_dict={"w": [1, 2]}))),
    Case("evaluate_data_without_split", "26-options",
         lambda d: ["evaluate", "--pred", str(d / "pred"), "--data", str(d / "ds")], 2, ("--split",),
         lambda d: (prediction_folder(d), dataset(d))),
    Case("evaluate_without_references", "26-options", lambda d: ["evaluate", "--pred", str(d / "pred")], 2,
         ("--labels DIR",), prediction_folder),
    Case("evaluate_missing_label_folder", "26-options", lambda d: ["evaluate", "--pred", str(d / "pred"), "--labels",
                                                                   str(d / "nolabels")], 1,
         ("nolabels", "not found"), prediction_folder),
    Case("evaluate_unknown_split", "26-options",
         lambda d: ["evaluate", "--pred", str(d / "pred"), "--data", str(d / "ds"), "--split", "test"], 1,
         ("no split 'test'",), lambda d: (prediction_folder(d), dataset(d))),
    Case("evaluate_without_summary_or_data", "26-options", _evaluate, 2, ("cannot tell the classes",),
         lambda d: (prediction_folder(d), (d / "pred" / "summary.json").unlink())),
    Case("evaluate_prediction_without_reference", "26-options", _evaluate, 1, ("extra.nii.gz", "no reference"),
         lambda d: (prediction_folder(d), shutil.copy(d / "lbl.nii.gz", d / "pred" / "extra.nii.gz"))),
    Case("evaluate_prediction_on_another_grid", "26-options", _evaluate, 1, ("pred/lbl.nii.gz", "not on the grid"),
         lambda d: (prediction_folder(d), write_volume(d, "pred/lbl.nii.gz", phantom()[1], origin=(0.0, 0.0, 0.0)))),
]


# --- issue 30: the options of a cohort (--inputs, --shard, --skip-existing, plcl cohort) ------------------


def cohort(d: Path, *extra: str, inputs: str = "list.txt", out: str = "out", model: str = "model.pt") -> list[str]:
    return ["predict", "--model", str(d / model), "--inputs", str(d / inputs), "--out", str(d / out), "--device",
            "cpu", *extra]


def cohort_slurm(d: Path, *extra: str, inputs: str = "list.txt", out: str = "out",
                 model: str = "model.pt") -> list[str]:
    return ["cohort", "slurm", "--model", str(d / model), "--inputs", str(d / inputs), "--out", str(d / out),
            "--tasks", "2", *extra]


def input_list(d: Path, text: str = "other.nii.gz\nimg.nii.gz\n", name: str = "list.txt") -> None:
    (d / name).write_text(text)


def cohort_folder_of(d: Path, model: str = "model.pt", shards: int = 1, out: str = "out") -> None:
    """A cohort folder as a shard of ``model`` over list.txt in ``shards`` shards leaves it."""
    from PLCLSegmentationLib.engine.run.cohort_folder import claim_cohort_folder, cohort_description

    claim_cohort_folder(d / out, cohort_description(str(d / model), [c.to_dict() for c in tiny_model_info().classes],
                                                    str(d / "list.txt"), [], shards))


def another_models_cohort(d: Path) -> None:
    """out/ holds a cohort segmented by another model (other weights, the same classes)."""
    info = tiny_model_info()
    torch.manual_seed(1)
    save_model(d / "other_model.pt", info.build_network(), info)
    input_list(d)
    cohort_folder_of(d, "other_model.pt")
    (d / "other_model.pt").unlink()


def shard_running(d: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    input_list(d)
    cohort_folder_of(d)
    handle = open(d / "out" / "shards" / ".shard-0000-of-0001.lock", "a+")  # noqa: SIM115 - closed by the cleanup
    handle.write("4242\n")
    handle.flush()
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(handle)


#: No scheduler around: what ``--shard auto`` reads is unset.
NO_SCHEDULER = dict.fromkeys(SHARD_INDEX_VARIABLES + SHARD_COUNT_VARIABLES + ("SLURM_ARRAY_TASK_MIN",))


def _shard(text: str, *fragments: str, point: str = "30") -> Case:
    return Case(f"cohort_shard_{text.replace('/', '_of_')}", point, lambda d: cohort(d, f"--shard={text}"), 2,
                (f"--shard {text}", *fragments), input_list, environment=NO_SCHEDULER)


CASES += [
    # --shard: I/N with 0 <= I < N (0-based), or auto from the scheduler's variables
    _shard("4/4", "I must be 0 to N-1"),
    _shard("5/4", "I must be 0 to N-1"),
    _shard("0/0", "I must be 0 to N-1"),
    _shard("-1/4", "I must be 0 to N-1"),
    _shard("x/y", "expected I/N"),
    _shard("3", "expected I/N"),
    _shard("1.5/4", "expected I/N"),
    Case("cohort_shard_auto_without_a_scheduler", "30", lambda d: cohort(d, "--shard", "auto"), 2,
         ("--shard auto", "SLURM_ARRAY_TASK_ID", "give --shard I/N"), input_list, environment=NO_SCHEDULER),
    Case("cohort_shard_auto_without_a_count", "30", lambda d: cohort(d, "--shard", "auto"), 2,
         ("--shard auto", "PLCL_SHARD_COUNT"), input_list, environment={**NO_SCHEDULER, "SLURM_ARRAY_TASK_ID": "1"}),
    Case("cohort_shard_auto_task_beyond_the_count", "30", lambda d: cohort(d, "--shard", "auto"), 2,
         ("--shard auto", "task 5 of 4"), input_list,
         environment={**NO_SCHEDULER, "SLURM_ARRAY_TASK_ID": "5", "PLCL_SHARD_COUNT": "4"}),
    Case("cohort_shard_auto_not_numbers", "30", lambda d: cohort(d, "--shard", "auto"), 2,
         ("--shard auto", "whole numbers"), input_list,
         environment={**NO_SCHEDULER, "JOB_COMPLETION_INDEX": "first", "PLCL_SHARD_COUNT": "4"}),
    # what runs the network, and the quality estimate: a value of their choices; a cohort runs torch for now
    Case("backend_not_a_choice", "30", lambda d: [*predict(d), "--backend", "tensorrt"], 2,
         ("--backend", "invalid choice", "tensorrt")),
    Case("precision_not_a_choice", "30", lambda d: [*predict(d), "--precision", "fp16"], 2,
         ("--precision", "invalid choice", "fp16")),
    Case("estimate_not_a_choice", "30", lambda d: [*predict(d), "--estimate", "maybe"], 2,
         ("--estimate", "invalid choice", "maybe")),
    Case("cohort_with_a_backend", "30", lambda d: cohort(d, "--backend", "onnxruntime"), 2,
         ("--backend and --precision", "--inputs"), input_list),
    Case("cohort_with_a_precision", "30", lambda d: cohort(d, "--precision", "fp32"), 2,
         ("--backend and --precision", "--inputs"), input_list),
    # --inputs: the list is there, readable, and names files that are there, each once
    Case("cohort_missing_list", "30", lambda d: cohort(d, inputs="nowhere.txt"), 1, ("nowhere.txt", "does not exist")),
    Case("cohort_list_with_a_missing_file", "30", lambda d: cohort(d), 1,
         ("gone.nii.gz", "does not exist", "list.txt:3"),
         lambda d: input_list(d, "other.nii.gz\n# a comment\ngone.nii.gz\n")),
    Case("cohort_csv_list_with_a_missing_file", "30", lambda d: cohort(d, inputs="list.csv"), 1,
         ("gone.nii.gz", "does not exist", "list.csv:3"),
         lambda d: input_list(d, "subject,path\ns1,other.nii.gz\ns2,gone.nii.gz\n", "list.csv")),
    Case("cohort_list_missing_file_of_this_shard", "30", lambda d: cohort(d, "--shard", "1/2"), 1,
         ("gone.nii.gz", "list.txt:2"), lambda d: input_list(d, "other.nii.gz\ngone.nii.gz\nimg.nii.gz\n")),
    Case("cohort_list_empty", "30", lambda d: cohort(d), 1, ("list.txt", "lists no images"),
         lambda d: input_list(d, "# nothing yet\n\n")),
    Case("cohort_folder_without_images", "30", lambda d: cohort(d, inputs="empty"), 1, ("empty", "lists no images"),
         lambda d: (d / "empty").mkdir()),
    Case("cohort_csv_without_a_path_column", "30", lambda d: cohort(d, inputs="list.csv"), 1,
         ("list.csv", "no 'path' column"), lambda d: input_list(d, "subject,file\ns1,other.nii.gz\n", "list.csv")),
    Case("cohort_list_not_text", "30", lambda d: cohort(d, inputs="list.txt"), 1, ("list.txt", "not a text file"),
         lambda d: (d / "list.txt").write_bytes(b"\xff\xfe\x00\x81" * 64)),
    Case("cohort_list_is_an_image", "30", lambda d: cohort(d, inputs="other.nii.gz"), 1,
         ("other.nii.gz", "not a text file")),
    Case("cohort_list_naming_one_name_twice", "30", lambda d: cohort(d), 1,
         ("list.txt:2", "same name 'other'", "list.txt:1"),
         lambda d: (input_list(d, "other.nii.gz\nsub/other.nrrd\n"), (d / "sub").mkdir())),
    Case("cohort_argument_and_list_naming_one_name_twice", "30", lambda d: cohort(d, str(d / "other.nii.gz")), 1,
         ("list.txt:1", "same name 'other'", "argument"), input_list),
    Case("cohort_list_with_an_input_inside_the_outputs", "30", lambda d: cohort(d, out="."), 1,
         ("lies where outputs",), lambda d: (input_list(d, "predictions/p.nii.gz\n"), (d / "predictions").mkdir(),
                                             shutil.copy(d / "other.nii.gz", d / "predictions" / "p.nii.gz"))),
    # --out: a cohort folder of this model, list and shard count only
    Case("cohort_out_of_another_model", "30", lambda d: cohort(d), 1, ("out", "cohort of another model"),
         another_models_cohort),
    Case("cohort_out_of_another_model_skip_existing", "30", lambda d: cohort(d, "--skip-existing"), 1,
         ("out", "cohort of another model"), another_models_cohort),
    Case("cohort_out_of_another_shard_count", "30", lambda d: cohort(d, "--shard", "0/3"), 1,
         ("out", "another shard count"), lambda d: (input_list(d), cohort_folder_of(d, shards=2))),
    Case("cohort_out_of_another_list", "30", lambda d: cohort(d, inputs="list2.txt"), 1, ("out", "another input list"),
         lambda d: (input_list(d), input_list(d, name="list2.txt"), cohort_folder_of(d))),
    Case("cohort_out_of_a_plain_run", "30", lambda d: cohort(d, out="earlier"), 1, ("earlier", "plain run"),
         lambda d: (input_list(d), earlier_run(d))),
    Case("cohort_description_damaged", "30", lambda d: cohort(d), 1, ("cohort.json", "not JSON"),
         lambda d: (input_list(d), (d / "out").mkdir(), (d / "out" / "cohort.json").write_text("{ torn"))),
    Case("cohort_shard_run_by_another_process", "30", lambda d: cohort(d), 1, ("out", "shard 0/1 is being run"),
         shard_running),
    Case("predict_into_a_cohort_folder", "30", lambda d: predict(d), 1, ("out", "is a cohort folder"),
         lambda d: (input_list(d), cohort_folder_of(d))),
    Case("train_into_a_cohort_folder", "30", train, 1, ("out", "is a cohort folder"),
         lambda d: (input_list(d), cohort_folder_of(d))),
    # options that do not go together
    Case("cohort_with_format", "30", lambda d: cohort(d, "--format", "nifti"), 2, ("--format",), input_list),
    Case("predict_without_images_or_list", "30", lambda d: predict(d)[:-1], 2, ("IMAGE ... or --inputs LIST",)),
    # plcl cohort slurm checks the model, the whole list and the folder before writing its script
    Case("cohort_slurm_tasks_0", "30", lambda d: cohort_slurm(d)[:-1] + ["0"], 2, ("--tasks 0",), input_list),
    Case("cohort_slurm_missing_list", "30", lambda d: cohort_slurm(d, inputs="nowhere.txt"), 1,
         ("nowhere.txt", "does not exist")),
    Case("cohort_slurm_list_with_a_missing_file", "30", cohort_slurm, 1, ("gone.nii.gz", "list.txt:2"),
         lambda d: input_list(d, "other.nii.gz\ngone.nii.gz\nimg.nii.gz\n")),
    Case("cohort_slurm_out_of_another_model", "30", cohort_slurm, 1, ("out", "cohort of another model"),
         another_models_cohort),
    Case("cohort_slurm_damaged_model", "30", lambda d: cohort_slurm(d, model="m.pt"), 1, ("m.pt", "NaN or infinite"),
         lambda d: (input_list(d), model_field("m.pt", _nan_first_weight)(d))),
    Case("cohort_slurm_gpus_negative", "30", lambda d: cohort_slurm(d, "--gpus-per-task", "-1"), 2,
         ("--gpus-per-task",), input_list),
    # plcl cohort status and collect read a cohort folder
    Case("cohort_status_of_a_plain_folder", "30", lambda d: ["cohort", "status", str(d)], 1,
         ("is not a cohort folder",)),
    Case("cohort_collect_of_a_missing_folder", "30", lambda d: ["cohort", "collect", str(d / "nowhere")], 1,
         ("nowhere", "is not a cohort folder")),
    Case("cohort_status_of_a_damaged_description", "30", lambda d: ["cohort", "status", str(d / "out")], 1,
         ("cohort.json", "not JSON"),
         lambda d: ((d / "out").mkdir(), (d / "out" / "cohort.json").write_text("[1, 2"))),
]


def _job(d: Path) -> dict:
    return {"labeled": [[str(d / "img.nii.gz"), str(d / "lbl.nii.gz")]], "unlabeled": [str(d / "other.nii.gz")],
            "out": str(d / "run"), "config": {"patch_size": 32, "levels": 3, "warmup_iterations": 2, "rounds": 0,
                                              "device": "cpu", "budget": "quick"}}


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", CASES, ids=[f"{c.point}-{c.id}" for c in CASES])
def test_bad_input(case: Case, base: Path, tmp_path: Path, capsys, monkeypatch):
    d = tmp_path / "case"
    shutil.copytree(base, d)
    monkeypatch.chdir(d)
    for name, value in (case.environment or {}).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        if case.prepare:
            case.prepare(d)
        before = _snapshot(d)
        capsys.readouterr()
        try:
            code = main(case.argv(d))
        except SystemExit as stop:  # argparse's own usage errors
            code = stop.code
        err = capsys.readouterr().err
        assert code == case.code, err
        lines = [ln for ln in err.splitlines() if "error:" in ln]
        assert len(lines) == 1, err
        for fragment in case.fragments:
            assert fragment in lines[0], lines[0]
        for text in case.never:
            assert text not in err, err
        after = _snapshot(d)
        assert sorted(after) == sorted(before), "files written or removed"
        changed = [name for name in before if before[name] != after[name]]
        assert not changed, f"inputs changed: {changed}"
        assert not (d / "HOSTILE_CODE_RAN").exists()
    finally:
        while _held:
            _held.pop().close()


def test_every_point_of_issue_11_that_a_table_can_show_has_cases():
    points = {c.point for c in CASES}
    assert {"1", "2", "3", "4", "5", "6", "7", "9", "10", "held", "cine"} <= points
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_point_of_issue_26_that_a_table_can_show_has_cases():
    """Points 3 (file-size limits) and 12 (a one-frame sequence) are fault tests in test_faults.py. A case
    of a point (26.N) failed on the code before the fix; "26-held", "26-settings", "26-options": the
    table grown to every option, cases that held already and must keep holding."""
    points = {c.point for c in CASES}
    assert {f"26.{n}" for n in (1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14)} <= points
    assert len(CASES) >= 150


# --- faults and behaviours a table cannot show --------------------------------------------------


def test_no_unannotated_volume_trains_supervised_with_a_warning(base, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--labeled", str(base / "img.nii.gz"), str(base / "lbl.nii.gz"), "--out", str(out), *TINY])
    assert code == 0
    assert "warning: no unannotated volume" in capsys.readouterr().err
    assert (out / "model.pt").is_file() and not (out / ".plcl.lock").exists()
    assert json.loads((out / "summary.json").read_text())["volumes"] == []


def test_set_seed_and_device_train(base, tmp_path):
    """--set seed=... and --set device=... used to raise a TypeError (given twice to the config)."""
    out = tmp_path / "out"
    code = main(train(base, out=str(out))[:-2] + ["--set", "seed=3", "--set", "device=\"cpu\""])
    assert code == 0
    assert json.loads((out / "job.json").read_text())["config"]["seed"] == 3


def test_user_inputs_are_never_modified(base, tmp_path):
    d = tmp_path / "case"
    shutil.copytree(base, d)
    before = _snapshot(d)
    assert main(train(d, out=str(tmp_path / "out"))) == 0
    assert _snapshot(d) == before


@pytest.mark.parametrize("writer", ["torch", "itk", "mkstemp"])
def test_disk_full_is_one_line_naming_the_file(base, tmp_path, capsys, monkeypatch, writer):
    """A full disk during the run: exit 1, 'no space left' and the file, no traceback, no temporary file."""
    import SimpleITK

    from PLCLSegmentationLib.engine.files import volumes
    from PLCLSegmentationLib.engine.method import modelfile

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def itk_full(*args, **kwargs):  # how ITK reports it: a RuntimeError with the C library's text
        raise RuntimeError("itk::ERROR: NrrdImageIO: Write: No space left on device")

    if writer == "torch":
        monkeypatch.setattr(modelfile.torch, "save", enospc)  # the checkpoint or the model, whichever comes first
        target = ".pt"
    elif writer == "itk":
        monkeypatch.setattr(SimpleITK, "WriteImage", itk_full)
        target = "other.nrrd"
    else:
        monkeypatch.setattr(volumes.tempfile, "mkstemp", enospc)  # the disk full before the run writes
        target = "job.json"
    out = tmp_path / "out"
    code = main(train(base, out=str(out)))
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no space left" in lines[0] and target in lines[0], err
    assert "Traceback" not in err
    assert not [p for p in out.rglob("*") if ".partial" in p.name] if out.exists() else True


def test_an_os_error_from_anywhere_is_one_line(base, tmp_path, capsys, monkeypatch):
    from PLCLSegmentationLib.engine.run import writers

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/x.nrrd")

    monkeypatch.setattr(writers, "write_segmentation", refuse)
    code = main(predict(base, out=str(tmp_path / "out")).copy())
    err = capsys.readouterr().err
    assert code == 1 and "error: /somewhere/x.nrrd: Permission denied" in err and "Traceback" not in err


def test_leftover_partial_files_of_a_killed_run_are_removed(base, tmp_path):
    """kill -9 cannot be caught: the next run that holds the folder removes the torn temporary files."""
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (out / ".model.pt.abc123.partial.pt").write_bytes(b"")
    (out / "predictions" / ".x.seg.nrrd.k2j4.partial.seg.nrrd").write_bytes(b"torn")
    assert main(predict(base, out=str(out))) == 0
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    assert (out / "predictions" / "other.seg.nrrd").is_file()


def test_a_crashed_run_does_not_leave_its_folder_stuck(base, tmp_path):
    """The lock is the operating system's: a run killed with SIGKILL while holding it releases it."""
    out = tmp_path / "out"
    code = ("import os, signal, sys; from pathlib import Path; "
            "from PLCLSegmentationLib.engine.files.outfolder import hold_output_folder\n"
            f"with hold_output_folder(Path({str(out)!r})):\n    os.kill(os.getpid(), signal.SIGKILL)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation")}
    child = subprocess.run([sys.executable, "-c", code], env=env)
    assert child.returncode == -9 and (out / ".plcl.lock").exists()
    assert main(predict(base, out=str(out))) == 0


def test_two_trainings_into_one_folder_at_once(base, tmp_path):
    """Two runs started together: one trains, the other is refused; no mixed files."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation")}
    args = [sys.executable, "-m", "PLCLSegmentationLib.engine", *train(base, out=str(out)), "--set", "batch_size=2",
            "--set", "contrastive_images=2"]
    children = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    results = [(c.wait(timeout=300), c.stderr.read()) for c in children]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "in use by another plcl run" in refused or "earlier run" in refused, refused
    summary = json.loads((out / "summary.json").read_text())
    assert [v["name"] for v in summary["volumes"]] == ["other"]


def _child(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation")}
    return subprocess.Popen([sys.executable, "-m", "PLCLSegmentationLib.engine", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_from_another_working_folder_continues_in_place_with_the_whole_history(base, tmp_path):
    """Relative paths at the start; --resume from elsewhere continues the same run in the same folder."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    shutil.copytree(base, start)
    elsewhere.mkdir()
    child = _child("train", "--labeled", "img.nii.gz", "lbl.nii.gz", "--unlabeled", "other.nii.gz", "--out", "run",
                   "--budget", "quick", "--set", "patch_size=32", "--set", "levels=3", "--iterations", "12",
                   "--set", "batch_size=2", "--set", "contrastive_images=2", "--device", "cpu", "--events", "jsonl",
                   cwd=start)
    for line in child.stdout:
        event = json.loads(line)
        if event["event"] == "progress":
            child.send_signal(signal.SIGINT)
            break
    rest, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    cancelled = [json.loads(ln) for ln in rest.splitlines()][-1]
    run = start / "run"
    assert cancelled["event"] == "cancelled" and f"--resume {run}" in cancelled["message"]
    job = json.loads((run / "job.json").read_text())
    assert job["out"] == str(run) and job["labeled"] == [[str(start / "img.nii.gz"), str(start / "lbl.nii.gz")]]

    resumed = _child("train", "--resume", os.path.relpath(run, elsewhere), "--events", "jsonl", cwd=elsewhere)
    out, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    progress = [e for e in map(json.loads, out.splitlines()) if e["event"] == "progress" and e["stage"] != "predict"]
    stopped_at = json.loads((run / "training.json").read_text())["resumed_at_iteration"]
    assert 1 <= stopped_at < 12 and progress[0]["iteration"] > stopped_at and progress[-1]["iteration"] == 12
    assert list(elsewhere.iterdir()) == []
    losses = json.loads((run / "training.json").read_text())["losses"]
    assert [entry["iteration"] for entry in losses] == list(range(1, 13))
    assert (run / "predictions" / "other.seg.nrrd").is_file()


def test_the_first_interrupt_of_predict_is_acknowledged_at_once(base, tmp_path):
    images = []
    for index in range(12):
        shutil.copy(base / "other.nii.gz", tmp_path / f"v{index}.nii.gz")
        images.append(str(tmp_path / f"v{index}.nii.gz"))
    child = _child("predict", "--model", str(base / "model.pt"), "--out", str(tmp_path / "out"), "--device", "cpu",
                   "--events", "jsonl", *images, cwd=tmp_path)
    for line in child.stdout:
        if json.loads(line)["event"] == "start":
            child.send_signal(signal.SIGINT)
            break
    rest, stderr = child.communicate(timeout=120)
    assert "stopping after the current step" in stderr, stderr
    assert child.returncode in (0, 130), stderr
    if child.returncode == 130:
        assert json.loads(rest.splitlines()[-1])["event"] == "cancelled"


def test_predict_holds_one_volume_at_a_time(base, tmp_path, monkeypatch):
    """Every image is checked first, then read, predicted and written one at a time: at each write,
    at most one image's voxels and one prepared volume are alive, whatever the number of images."""
    import gc
    import weakref

    from PLCLSegmentationLib.engine.method import predictor
    from PLCLSegmentationLib.engine.run import prediction, writers

    arrays: list = []
    prepared: list = []
    alive_at_writes: list[tuple[int, int]] = []
    read_volume, prepare_volume, write_segmentation = (prediction.read_volume, predictor.prepare_volume,
                                                       writers.write_segmentation)

    def reading(path):
        volume = read_volume(path)
        arrays.append(weakref.ref(volume.array))
        return volume

    def preparing(*args, **kwargs):
        result = prepare_volume(*args, **kwargs)
        prepared.append(weakref.ref(result[0]))
        return result

    def writing(*args, **kwargs):
        gc.collect()
        alive_at_writes.append((sum(r() is not None for r in arrays), sum(r() is not None for r in prepared)))
        return write_segmentation(*args, **kwargs)

    monkeypatch.setattr(prediction, "read_volume", reading)
    monkeypatch.setattr(predictor, "prepare_volume", preparing)
    monkeypatch.setattr(writers, "write_segmentation", writing)
    images = []
    for index in range(5):
        shutil.copy(base / "other.nii.gz", tmp_path / f"v{index}.nii.gz")
        images.append(str(tmp_path / f"v{index}.nii.gz"))
    assert main(["predict", "--model", str(base / "model.pt"), "--out", str(tmp_path / "out"), "--device", "cpu",
                 *images]) == 0
    assert len(alive_at_writes) == 5
    assert all(volumes <= 1 and prepared_volumes <= 1 for volumes, prepared_volumes in alive_at_writes), \
        alive_at_writes

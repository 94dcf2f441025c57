"""The cine part of ``plcl demo``: a beating SYNTHETIC heart, two annotated frames, every frame segmented.

The end-diastolic and end-systolic frames of one sequence are annotated (``--labeled-frame``); its
other frames and a second sequence train unannotated; the 3D demo's model is the warm start
(``--init-model``, as a user would reuse a model). The model then segments every frame of a
held-out sequence (``plcl predict``), and the predicted volume curves and ejection fractions are
set against the phantom's exact ones. Train and predict go through the command's own request and
runs, as ``plcl train`` and ``plcl predict`` do.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..events import EventSink
from ..files.outfolder import earlier_outputs
from ..files.volumes import Grid, atomic_path, write_image
from ..protocol import MODEL_FILE
from ..request import TrainOptions, make_train_job
from ..run.prediction import run_prediction
from ..run.training import run_training
from .synthetic_cine import CAVITIES, make_cine_dataset

CINE_FRAMES = 20  # one cycle; the generator makes 30 by default, 20 keep `make demo` near 2 minutes
#: Fine-tuning iterations of the 3D demo's model (a quarter of their warm-up, one pseudo-label round).
CINE_ITERATIONS = 160


def run_cine_demo(root: Path, model: Path, sink: EventSink, cancel: threading.Event, device: str = "auto",
                  iterations: int | None = None, frames: int = CINE_FRAMES, pixels: int | None = None
                  ) -> dict[str, Any]:
    """``model``: the warm start (the 3D demo's); ``frames`` and ``pixels`` (per side) size the
    sequences (smaller for tests)."""
    data = make_cine_dataset(root / "synthetic_cine", n_sequences=3, n_frames=frames, seed=0, pixels=pixels)
    truth = json.loads((data / "sequences.json").read_text())
    roles, known = truth["roles"], truth["sequences"]
    [name] = roles["annotated"]
    image = data / known[name]["image"]
    annotated = sorted({known[name]["end_diastole_frame"], known[name]["end_systole_frame"]})
    labels = [_frame_label(data / known[name]["label"], t, root / "cine_annotations" / f"{name}_t{t:02d}.nii.gz")
              for t in annotated]
    run, predicted = root / "cine_run", root / "cine_predict"
    for folder in (run, predicted):  # the demo's own earlier run: new runs need fresh folders
        if folder.is_dir() and earlier_outputs(folder):
            shutil.rmtree(folder)
    options = TrainOptions(labeled_frame=[(str(image), str(t), str(label)) for t, label in zip(annotated, labels)],
                           unlabeled=[str(data / known[n]["image"]) for n in roles["unannotated"]],
                           init_model=str(model), budget="quick", overrides=["patch_size=64"],
                           iterations=iterations or CINE_ITERATIONS, out=str(run), device=device)
    trained = run_training(make_train_job(options), sink, cancel)
    held_out = [str(data / known[n]["image"]) for n in roles["held_out"]]
    summary = run_prediction(str(run / MODEL_FILE), held_out, str(predicted), device, sink, cancel)

    rows = [_compare(entry, known[entry["name"]], "held out") for entry in summary["sequences"]]
    rows += [_compare(entry, known[entry["name"]], "annotated" if entry["name"] == name else "unannotated")
             for entry in trained["sequences"]]
    report = {"synthetic": True, "annotated": {"sequence": name, "frames": annotated}, "sequences": rows}
    with atomic_path(root / "cine_volumes.json") as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    figure = _figure(rows[0], root / "cine_volume_curve.png")
    _print(report, run, predicted, figure)
    return report


def _frame_label(labels_4d: Path, frame: int, path: Path) -> Path:
    """Frame ``frame`` of a 4D label map as a 3D label map on the frame's grid (what a user annotates)."""
    image = sitk.ReadImage(str(labels_4d))
    size = list(image.GetSize())
    frame_image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, frame])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, sitk.GetArrayFromImage(frame_image), Grid.of(frame_image))
    return path


def _compare(entry: dict[str, Any], known: dict[str, Any], role: str) -> dict[str, Any]:
    """A sequence's predicted volume curves and ejection fractions beside the phantom's exact ones."""
    result: dict[str, Any] = {"sequence": entry["name"], "role": role, "frames": len(entry["frames"]),
                              "time_step": entry["time_step"], "time_unit": entry["time_unit"],
                              "curve_plot": entry["curve_plot"], "structures": {}}
    for structure in CAVITIES:
        predicted = entry["volume_curve_ml"][structure]
        ef = entry["volume_summary"][structure]["ejection_fraction"]
        true_ef = known["ejection_fraction"][structure]
        result["structures"][structure] = {
            "known_ml": known["volumes_ml"][structure], "predicted_ml": predicted,
            "known_ejection_fraction": true_ef, "predicted_ejection_fraction": ef,
            "ejection_fraction_difference_points": None if ef is None else ef - true_ef,
            "mean_absolute_volume_error_ml": sum(abs(a - b) for a, b in zip(predicted, known["volumes_ml"][structure]))
            / len(predicted),
        }
    return result


def _figure(row: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: F401 - optional: no picture without it
    except ImportError:
        return None
    from .figures import volume_curves_against_truth

    step = row["time_step"]
    curves = {s: (v["known_ml"], v["predicted_ml"], v["known_ejection_fraction"], v["predicted_ejection_fraction"])
              for s, v in row["structures"].items()}
    return volume_curves_against_truth(curves, path, step, row["time_unit"],
                                       title=f"{row['sequence']} ({row['role']}), SYNTHETIC phantom")


def _print(report: dict[str, Any], run: Path, predicted: Path, figure: Path | None) -> None:
    annotated = report["annotated"]
    print(f"\nCine: SYNTHETIC beating-heart sequences; annotated frames {annotated['frames']} of "
          f"{annotated['sequence']} (end-diastole, end-systole)\n")
    print("| sequence | role | structure | known EF % | predicted EF % | difference (points) | mean volume error ml |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in report["sequences"]:
        for structure, v in row["structures"].items():
            ef = v["predicted_ejection_fraction"]
            difference = v["ejection_fraction_difference_points"]
            print(f"| {row['sequence']} | {row['role']} | {structure} | {v['known_ejection_fraction']:.1f} | "
                  f"{'-' if ef is None else f'{ef:.1f}'} | {'-' if difference is None else f'{difference:+.1f}'} | "
                  f"{v['mean_absolute_volume_error_ml']:.1f} |")
    print("\nCine results:")
    print(f"  held-out frames:  {predicted}/predictions/<sequence>_tXX.seg.nrrd, the whole sequence in "
          f"{predicted}/sequences/")
    if report["sequences"][0]["curve_plot"]:
        print(f"  volume curves:    {report['sequences'][0]['curve_plot']}  (summary.json 'sequences')")
    print(f"  against truth:    {run.parent / 'cine_volumes.json'}")
    if figure:
        print(f"  picture:          {figure}")

"""A test double of ``python -m PLCLSegmentationLib.engine``: same command line, same events and files.

Built on the engine's own torch-free parts: its argument parser and training schedule (cli.py), its
event writer, stop-file watcher and output description (events.py), its volume files (volumes.py),
its slice axes (slicing.py) and its least certain slices (method/quality.py's slice_uncertainties).

It learns nothing: the prediction of a volume is a few boxes (one per class) placed in its middle,
the uncertainty map is smooth noise. It reads its inputs and writes its outputs with the engine's
own ``volumes`` module, so the files are what the real engine would read and write.

Cine (4D) inputs follow the contract (engine/events.py, issue 13): a 4D NRRD (time axis first, as
Slicer writes a volume sequence) or NIfTI (time last) given to --unlabeled, predict, or
--labeled-frame IMAGE FRAME LABEL; every frame not annotated is predicted as NAME_tXX with
"sequence" and "frame" in its summary entry, and summary.json gets a "sequences" entry per 4D input.

Each prediction's summary entry carries the review contract (docs/protocol.md): ``slice_axis`` (the
engine's rule, slicing.canonical), ``structures`` (an estimated Dice per class, worst first, null where
the class is predicted nowhere) and ``slices`` (least certain first), and a ``quality`` event follows
its output events. The values are plausible, not learnt: the uncertainty map's level differs from
slice to slice so that the slices have a clear order.

It stops like the engine: on SIGINT/SIGTERM or when OUT/stop.request appears (events.STOP_FILE).

Behaviour switches (environment variables), for the tests of the Slicer module:
  FAKE_ENGINE_STEP_S      seconds per iteration (default 0.005)
  FAKE_ENGINE_FAIL_AT     crash with a traceback at this iteration (exit 1)
  FAKE_ENGINE_GRANDCHILD  path: start a long-running grandchild process and write its pid there
  FAKE_ENGINE_IGNORE_TERM ignore SIGTERM (to test that cancel kills the tree after the grace time)
  FAKE_ENGINE_DROP_FRAME  leave this frame of every 4D input out of summary.json (a broken engine)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PLCLSegmentation"))

from PLCLSegmentationLib.engine import cli, errors, request, slicing  # noqa: E402
from PLCLSegmentationLib.engine.events import JsonLinesSink
from PLCLSegmentationLib.engine.files import volumes  # noqa: E402
from PLCLSegmentationLib.engine.method.quality import slice_uncertainties
from PLCLSegmentationLib.engine.protocol import EXIT_CANCELLED, EXIT_ERROR, OUTPUT_KINDS, STOP_FILE, SUMMARY_FILE

_cancel = threading.Event()


def _on_term(signum: int, frame: object) -> None:
    _cancel.set()


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def fake_prediction(volume: volumes.Volume, classes: list[volumes.ClassInfo]) -> np.ndarray:
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    k, j, i = volume.array.shape
    for n, info in enumerate(classes):
        j0 = j // 4 + n * max(1, j // (4 * max(1, len(classes))))
        labels[k // 3: max(k // 3 + 1, 2 * k // 3), j0: j0 + max(1, j // 8), i // 4: i // 2] = info.value
    return labels


def read_frames(path: str) -> list[volumes.Volume] | None:
    """The frames of a 4D image (None for a 3D one), each a Volume named NAME_tXX on the frames' grid."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() > 1 and image.GetDimension() == 3:  # NRRD: the list axis first
        array = sitk.GetArrayFromImage(image)  # [k, j, i, t]
        grid = volumes.Grid.of(image)
        frames = [array[..., t] for t in range(array.shape[-1])]
    elif image.GetDimension() == 4:  # NIfTI: time last
        array = sitk.GetArrayFromImage(image)  # [t, k, j, i]
        first = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
        grid = volumes.Grid.of(first)
        frames = list(array)
    else:
        return None
    name = volumes.volume_name(path)
    width = max(2, len(str(len(frames) - 1)))
    return [volumes.Volume(f"{name}_t{t:0{width}d}", str(path), np.asarray(f, np.float32), grid)
            for t, f in enumerate(frames)]


def time_axis(path: str) -> tuple[float | None, str | None]:
    """The time step and unit of a 4D NRRD (from its axis 0 index values), else (None, None)."""
    if not str(path).endswith(".nrrd"):
        return None, None
    header = Path(path).read_bytes().split(b"\n\n")[0].decode("ascii", "replace").splitlines()
    values = [line.split(":=", 1)[1].split() for line in header if line.startswith("axis 0 index values:=")]
    units = [line.split(":", 1)[1].split()[0].strip('"') for line in header if line.startswith("units:")]
    if not values or len(values[0]) < 2:
        return None, None
    times = [float(v) for v in values[0]]
    return times[1] - times[0], (units[0] if units else None) or None


def fake_uncertainty(volume: volumes.Volume, axis: int) -> np.ndarray:
    """Smooth noise in [0, 0.5), scaled by a level of its own on each slice along ``axis``."""
    rng = np.random.default_rng(zlib.crc32(volume.name.encode()))
    uncertainty = rng.random(volume.array.shape, dtype=np.float32) * 0.5
    shape = [1, 1, 1]
    shape[axis] = volume.array.shape[axis]
    levels = rng.permutation(volume.array.shape[axis]).astype(np.float32) + 1.0
    return uncertainty * (levels / levels.max()).reshape(shape)


def review(labels: np.ndarray, uncertainty: np.ndarray, classes: list[volumes.ClassInfo],
           axis: int) -> tuple[list[dict], list[dict]]:
    """(structures worst first, slices least certain first) as the review contract has them."""
    structures = []
    for info in classes:
        mask = labels == info.value
        mean = float(uncertainty[mask].mean()) if mask.any() else None
        structures.append({"name": info.name, "value": info.value,
                           "estimated_dice": None if mean is None else round(1.0 - mean, 4),
                           "uncertainty": 1.0 if mean is None else round(mean, 4)})
    structures.sort(key=lambda s: (s["estimated_dice"] is None, s["estimated_dice"] or 0.0))
    indices = np.zeros(256, np.uint8)  # the engine's slice review takes class indices, not label values
    indices[[info.value for info in classes]] = np.arange(1, len(classes) + 1)
    return structures, slice_uncertainties(indices[labels], uncertainty, axis, [info.name for info in classes])


def predict_volume(sink: JsonLinesSink, out: Path, volume: volumes.Volume, classes: list[volumes.ClassInfo],
                   labels: np.ndarray | None = None, frame: int | None = None,
                   annotated_slices: tuple[np.ndarray, list[int]] | None = None) -> dict:
    """Write one volume's (fake) prediction and uncertainty; its summary entry. ``annotated_slices``: the
    annotation's labels and the slices of it the prediction keeps."""
    seg = out / "predictions" / f"{volume.name}.seg.nrrd"
    unc = out / "uncertainty" / f"{volume.name}.nrrd"
    seg.parent.mkdir(parents=True, exist_ok=True)
    unc.parent.mkdir(parents=True, exist_ok=True)
    labels = fake_prediction(volume, classes) if labels is None else labels
    axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
    uncertainty = fake_uncertainty(volume, axis)
    structures, slices = review(labels, uncertainty, classes, axis)  # the network's, as the engine estimates
    score = float(uncertainty.mean())
    if annotated_slices is not None:  # kept as annotated: certain, not to review
        known, rows = annotated_slices
        slicing.keep_annotated_slices(labels, uncertainty, known, axis, rows)
        slices = [s for s in slices if s["index"] not in rows]
    volumes.write_segmentation(seg, labels, volume.grid, classes)
    volumes.write_image(unc, uncertainty, volume.grid)
    sink.emit("output", kind="prediction", path=str(seg), name=volume.name)
    sink.emit("output", kind="uncertainty", path=str(unc), name=volume.name)
    sink.emit("quality", name=volume.name, frame=frame, structures=structures,
              worst_slice=slices[0]["index"] if slices else None)
    entry = {"name": volume.name, "image": volume.path, "segmentation": str(seg), "uncertainty": str(unc),
             "uncertainty_score": score, "slice_axis": slicing.AXIS_NAMES[axis],
             "structures": structures, "slices": slices}
    if annotated_slices is not None:
        entry["annotated_slices"] = list(annotated_slices[1])
    return entry


def write_outputs(sink: JsonLinesSink, out: Path, images: list[str], classes: list[volumes.ClassInfo],
                  model: str, command: str, outputs: dict[str, str] | None = None,
                  annotated: dict[str, dict[int, np.ndarray]] | None = None,
                  partial: dict[str, tuple[np.ndarray, list[int]]] | None = None) -> None:
    """``annotated``: for each 4D image, its annotated frames' labels (those frames are not predicted);
    ``partial``: for each volume annotated on some slices, its labels and those slices (kept as annotated,
    as the engine keeps them)."""
    entries, sequences = [], []
    for path in images:
        frames = read_frames(path)
        if frames is not None:
            known = (annotated or {}).get(path, {})
            curves = {c.name: [] for c in classes}
            for index, frame in enumerate(frames):
                labels = known.get(index)
                if labels is None:
                    entry = {**predict_volume(sink, out, frame, classes, frame=index),
                             "sequence": volumes.volume_name(path), "frame": index}
                    if str(index) != os.environ.get("FAKE_ENGINE_DROP_FRAME"):
                        entries.append(entry)
                    labels = fake_prediction(frame, classes)
                voxel_ml = float(np.prod(frame.grid.spacing)) / 1000.0
                for info in classes:
                    curves[info.name].append(float((labels == info.value).sum()) * voxel_ml)
            step, unit = time_axis(path)
            sequences.append({
                "name": volumes.volume_name(path), "image": path, "frames": [f.name for f in frames],
                "annotated_frames": sorted(known), "time_step": step, "time_unit": unit, "segmentation": None,
                "volume_curve_ml": curves, "curve_plot": None,
                "volume_summary": {name: {"max_ml": max(v), "max_frame": int(np.argmax(v)), "min_ml": min(v),
                                          "min_frame": int(np.argmin(v)),
                                          "ejection_fraction": 100.0 * (max(v) - min(v)) / max(v) if max(v) else None}
                                   for name, v in curves.items()}})
            continue
        entries.append(predict_volume(sink, out, volumes.read_volume(path), classes,
                                      annotated_slices=(partial or {}).get(path)))
    summary = {"version": "fake", "command": command, "model": model, "classes": [c.to_dict() for c in classes],
               "outputs": {kind: (outputs or {}).get(kind) for kind in OUTPUT_KINDS},
               "uncertainty_measure": "normalised predictive entropy (fake)",
               "quality_measure": "1 - the mean uncertainty over each structure's predicted voxels (fake)",
               "volumes": entries,
               "sequences": sequences}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    sink.emit("output", kind="summary", path=str(out / SUMMARY_FILE))


def iterate(sink: JsonLinesSink, out: Path, total: int, start: float) -> None:
    step = float(os.environ.get("FAKE_ENGINE_STEP_S", "0.005"))
    fail_at = int(os.environ.get("FAKE_ENGINE_FAIL_AT", "-1"))
    sink.emit("stage", stage="warmup", round=None, total=total)
    for iteration in range(1, total + 1):
        time.sleep(step)
        if iteration == fail_at:
            raise RuntimeError(f"simulated crash at iteration {iteration}")
        loss = 1.0 / (1.0 + 0.1 * iteration)  # the losses of a warm-up step, named as the engine names them
        sink.emit("progress", stage="warmup", iteration=iteration, total=total,
                  losses={"segmentation": loss, "total": loss}, elapsed_s=time.time() - start,
                  eta_s=(total - iteration) * step, slices_per_s=10.0)
        if _cancel.is_set():
            checkpoint = out / "checkpoint.pt"
            checkpoint.write_text("fake checkpoint")
            raise KeyboardInterrupt(str(checkpoint))


def main(argv: list[str]) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_ENGINE_IGNORE_TERM") else _on_term)
    signal.signal(signal.SIGINT, _on_term)
    sink = JsonLinesSink()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli.watch_stop_file(out / STOP_FILE, _cancel)
    start = time.time()
    sink.emit("start", command=args.command, version="fake", device="cpu", out=str(out))
    grandchild_file = os.environ.get("FAKE_ENGINE_GRANDCHILD")
    if grandchild_file:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        Path(grandchild_file).write_text(str(child.pid))
    print("fake engine: reading inputs", file=sys.stderr, flush=True)
    try:
        if args.command == "train":
            classes: list[volumes.ClassInfo] = []
            partial: dict[str, tuple[np.ndarray, list[int]]] = {}  # volumes annotated on some slices
            specs = args.annotated_slices or ["all"] * len(args.labeled)
            for (image, label), spec in zip(args.labeled, specs):
                if read_frames(image) is not None:
                    raise errors.InputError(image, "is a 4D image; give an annotated frame with --labeled-frame")
                volume = volumes.read_volume(image)
                labels, found = volumes.read_annotation(label, volume)
                classes = classes or found or [volumes.ClassInfo(int(v), f"label {int(v)}", (1.0, 0.0, 0.0))
                                                for v in np.unique(labels) if v > 0]
                axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
                rows = slicing.annotated_slices(slicing.parse_spec(spec), labels, axis)
                if len(rows) < labels.shape[axis]:
                    partial[image] = (labels, rows)
            annotated: dict[str, dict[int, np.ndarray]] = {}
            for image, frame, label in args.labeled_frame:
                frames = read_frames(image)
                if frames is None:
                    raise errors.InputError(image, "is not a 4D image; give it with --labeled")
                if not frame.isdigit() or int(frame) >= len(frames):
                    raise errors.InputError(image, f"has no frame {frame} ({len(frames)} frames)")
                labels, found = volumes.read_annotation(label, frames[int(frame)])
                annotated.setdefault(image, {})[int(frame)] = labels
                classes = classes or found or []
            if args.init_model:
                model = json.loads(Path(args.init_model).read_text())
                if [c["name"] for c in model["classes"]] != [c.name for c in classes]:
                    raise errors.InputError(args.init_model, "has other classes than the annotations")
            total = request.train_config(request.TrainOptions.from_namespace(args),
                                         bool(args.unlabeled or args.labeled_frame)).total_iterations
            iterate(sink, out, total, start)
            files = {"model": out / "model.pt", "checkpoint": out / "checkpoint.pt", "training": out / "training.json",
                     "job": out / "job.json"}
            files["model"].write_text(json.dumps({"fake": True, "classes": [c.to_dict() for c in classes],
                                                  "init_model": args.init_model, "iterations": total}))
            files["checkpoint"].write_text("fake checkpoint: weights, optimiser state and pseudo-labels")
            files["training"].write_text(json.dumps({"iterations": total}))
            files["job"].write_text(json.dumps({"labeled": args.labeled, "labeled_frame": args.labeled_frame,
                                                "unlabeled": args.unlabeled}))
            sink.emit("output", kind="model", path=str(files["model"]))
            cine = [image for image in annotated if image not in args.unlabeled]
            write_outputs(sink, out, [*args.unlabeled, *partial, *cine], classes, str(files["model"]), "train",
                          {kind: str(path) for kind, path in files.items()}, annotated, partial)
        else:
            model = json.loads(Path(args.model).read_text())
            classes = [volumes.ClassInfo.from_dict(c) for c in model["classes"]]
            sink.emit("stage", stage="predict", round=None, total=len(args.images))
            write_outputs(sink, out, list(args.images), classes, args.model, "predict")
    except KeyboardInterrupt as stop:
        sink.emit("cancelled", checkpoint=str(stop), message=f"stopped on request; resume with --resume {out}")
        return EXIT_CANCELLED
    except errors.InputError as error:
        sink.emit("error", message=str(error), file=error.path)
        return EXIT_ERROR
    except Exception as error:
        import traceback

        traceback.print_exc(file=sys.stderr)
        sink.emit("error", message=f"{type(error).__name__}: {error}", file=None)
        return EXIT_ERROR
    sink.emit("done", out=str(out), elapsed_s=time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A test double of ``python -m PLCLSegmentationLib.engine``: same command line, same events and files.

Built on the engine's own torch-free parts: its argument parser and training schedule (cli.py), its
event writer, stop-file watcher and output description (events.py), its volume files (volumes.py).

It learns nothing: the prediction of a volume is a few boxes (one per class) placed in its middle,
the uncertainty map is smooth noise. It reads its inputs and writes its outputs with the engine's
own ``volumes`` module, so the files are what the real engine would read and write.

It stops like the engine: on SIGINT/SIGTERM or when OUT/stop.request appears (events.STOP_FILE).

Behaviour switches (environment variables), for the tests of the Slicer module:
  FAKE_ENGINE_STEP_S      seconds per iteration (default 0.005)
  FAKE_ENGINE_FAIL_AT     crash with a traceback at this iteration (exit 1)
  FAKE_ENGINE_GRANDCHILD  path: start a long-running grandchild process and write its pid there
  FAKE_ENGINE_IGNORE_TERM ignore SIGTERM (to test that cancel kills the tree after the grace time)
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

from PLCLSegmentationLib.engine import cli, volumes  # noqa: E402
from PLCLSegmentationLib.engine.events import (  # noqa: E402
    EXIT_CANCELLED,
    EXIT_ERROR,
    OUTPUT_KINDS,
    STOP_FILE,
    SUMMARY_FILE,
    JsonLinesSink,
)

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


def write_outputs(sink: JsonLinesSink, out: Path, images: list[str], classes: list[volumes.ClassInfo],
                  model: str, command: str, outputs: dict[str, str] | None = None) -> None:
    entries = []
    for path in images:
        volume = volumes.read_volume(path)
        seg = out / "predictions" / f"{volume.name}.seg.nrrd"
        unc = out / "uncertainty" / f"{volume.name}.nrrd"
        seg.parent.mkdir(parents=True, exist_ok=True)
        unc.parent.mkdir(parents=True, exist_ok=True)
        volumes.write_segmentation(seg, fake_prediction(volume, classes), volume.grid, classes)
        rng = np.random.default_rng(zlib.crc32(volume.name.encode()))
        uncertainty = rng.random(volume.array.shape, dtype=np.float32) * 0.5
        volumes.write_image(unc, uncertainty, volume.grid)
        sink.emit("output", kind="prediction", path=str(seg), name=volume.name)
        sink.emit("output", kind="uncertainty", path=str(unc), name=volume.name)
        entries.append({"name": volume.name, "image": path, "segmentation": str(seg), "uncertainty": str(unc),
                        "uncertainty_score": float(uncertainty.mean())})
    summary = {"version": "fake", "command": command, "model": model, "classes": [c.to_dict() for c in classes],
               "outputs": {kind: (outputs or {}).get(kind) for kind in OUTPUT_KINDS},
               "uncertainty_measure": "normalised predictive entropy (fake)", "volumes": entries}
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
        loss = 1.0 / (1.0 + 0.1 * iteration)
        sink.emit("progress", stage="warmup", iteration=iteration, total=total,
                  losses={"dice": loss, "contrastive": loss / 2}, elapsed_s=time.time() - start,
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
            for image, label in args.labeled:
                volume = volumes.read_volume(image)
                labels, found = volumes.read_annotation(label, volume)
                classes = classes or found or [volumes.ClassInfo(int(v), f"label {int(v)}", (1.0, 0.0, 0.0))
                                                for v in np.unique(labels) if v > 0]
            if args.init_model:
                model = json.loads(Path(args.init_model).read_text())
                if [c["name"] for c in model["classes"]] != [c.name for c in classes]:
                    raise volumes.InputError(args.init_model, "has other classes than the annotations")
            total = cli.train_config(args, bool(args.unlabeled)).total_iterations
            iterate(sink, out, total, start)
            files = {"model": out / "model.pt", "checkpoint": out / "checkpoint.pt", "training": out / "training.json",
                     "job": out / "job.json"}
            files["model"].write_text(json.dumps({"fake": True, "classes": [c.to_dict() for c in classes],
                                                  "init_model": args.init_model, "iterations": total}))
            files["checkpoint"].write_text("fake checkpoint: weights, optimiser state and pseudo-labels")
            files["training"].write_text(json.dumps({"iterations": total}))
            files["job"].write_text(json.dumps({"labeled": args.labeled, "unlabeled": args.unlabeled}))
            sink.emit("output", kind="model", path=str(files["model"]))
            write_outputs(sink, out, list(args.unlabeled), classes, str(files["model"]), "train",
                          {kind: str(path) for kind, path in files.items()})
        else:
            model = json.loads(Path(args.model).read_text())
            classes = [volumes.ClassInfo.from_dict(c) for c in model["classes"]]
            sink.emit("stage", stage="predict", round=None, total=len(args.images))
            write_outputs(sink, out, list(args.images), classes, args.model, "predict")
    except KeyboardInterrupt as stop:
        sink.emit("cancelled", checkpoint=str(stop), message="stopped on request")
        return EXIT_CANCELLED
    except volumes.InputError as error:
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

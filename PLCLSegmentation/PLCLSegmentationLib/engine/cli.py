"""The ``plcl`` command: train, predict, evaluate, demo, bench."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from .. import __version__
from .cohort.commands import add_cohort_arguments
from .errors import DISK_FULL_ERRNOS, ConfigError, InputError
from .events import EventSink, JsonLinesSink
from .parent_pipe import watch_parent_pipe
from .protocol import (
    ANNOTATED_SLICES_ORDER,
    BACKENDS,
    BUDGETS,
    DEFAULT_BACKEND,
    DEFAULT_BUDGET,
    DEFAULT_DEVICE,
    DEFAULT_DICOM_SEG_FRAMES,
    DEFAULT_ESTIMATE,
    ESTIMATES,
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    OUTPUT_FORMATS,
    PRECISIONS,
    STOP_FILE,
    device_argument,
)
from .request import TrainOptions, make_train_job


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, type=device_argument, metavar="DEVICE",
                        help=f"where to run: auto, cpu, cuda, cuda:N or mps (default: {DEFAULT_DEVICE} = CUDA, "
                             "else Apple MPS, else CPU)")
    parser.add_argument("--events", choices=["jsonl"], default=None,
                        help="print one JSON object per line on stdout for programs (schema: docs/protocol.md)")


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", action="append", default=[], choices=list(OUTPUT_FORMATS),
                        help="how each segmentation is written (repeatable; default seg.nrrd): seg.nrrd (Slicer), "
                        "nifti (a .nii.gz label map of the class values), dicom-seg (DICOM SEG, for DICOM inputs; "
                        "needs the [dicom] extra)")
    parser.add_argument("--dicom-seg-frames", metavar="ed,es|all|LIST", default=None,
                        help="with --format dicom-seg, the frames of a cine that get a DICOM SEG: ed and es (the "
                        f"default, {DEFAULT_DICOM_SEG_FRAMES}: end-diastole and end-systole from the predicted "
                        "volumes), all, or 0-based frame indices")


def has_lab() -> bool:
    """The lab (demo, bench) is there in a source checkout; the Slicer extension and the wheel ship without it."""
    return importlib.util.find_spec(f"{__package__}.lab") is not None


#: Commands the lab implements: without it they are usage errors that say where to get it.
LAB_COMMANDS = ("demo", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plcl", description="Semi-supervised segmentation from a few annotated "
                                     "volumes: pseudo-label self-training with a local contrastive loss.")
    parser.add_argument("--version", action="version", version=f"plcl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on annotated + unannotated volumes and segment the latter")
    train.add_argument("--labeled", nargs=2, action="append", default=[], metavar=("IMAGE", "LABEL"),
                       help="an annotated volume and its label map or Slicer .seg.nrrd (repeatable)")
    train.add_argument("--labeled-frame", nargs=3, action="append", default=[], metavar=("IMAGE", "FRAME", "LABEL"),
                       help="an annotated frame of a 4D (cine) image: FRAME is its 0-based index, LABEL its label "
                       "map or .seg.nrrd on the frame's grid; the other frames are unannotated (repeatable)")
    train.add_argument("--annotated-slices", action="append", default=[], metavar="all|labelled|LIST",
                       help="which slices of an annotated volume are annotated: all (default: unlabelled "
                       "slices teach background), labelled (only slices holding a label), or file slice "
                       "indices along the slicing axis, 0-based, e.g. 3,8-10; the others are trained on "
                       "as unannotated. Once for every annotated volume, or once per volume in the order "
                       f"{', then '.join(ANNOTATED_SLICES_ORDER)}")
    train.add_argument("--unlabeled", nargs="+", action="extend", default=[], metavar="IMAGE",
                       help="unannotated volumes (a 4D image: every frame): used for training and segmented at the end")
    train.add_argument("--data", metavar="DIR", help="a dataset folder (dataset.json, images/, labels/)")
    train.add_argument("--labeled-cases", metavar="A,B", help="with --data: the annotated cases")
    train.add_argument("--unlabeled-split", metavar="SPLIT", help="with --data: unannotated cases from this split "
                       "(the annotated cases are left out)")
    train.add_argument("--unlabeled-cases", metavar="C,D", help="with --data: unannotated cases by name")
    train.add_argument("--n-unlabeled", type=int, metavar="K",
                       help="with --data: use only the first K unannotated cases")
    train.add_argument("--out", metavar="DIR", help="output folder (model, predictions, uncertainty, summary)")
    train.add_argument("--budget", choices=list(BUDGETS), default=None,
                       help=f"training budget preset (default {DEFAULT_BUDGET}; see docs/cli.md)")
    train.add_argument("--iterations", type=int, help="total training iterations, spread as in the budget")
    train.add_argument("--minutes", type=float, help="train for this long instead (wall clock, pseudo-labelling "
                       "included), spread as in the budget")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--resume", metavar="DIR", help="continue the cancelled run in DIR")
    train.add_argument("--init-model", metavar="MODEL", help="start from this model's weights (fine-tuning: "
                       "a quarter of the warm-up and one pseudo-label round of the schedule; same classes)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a configuration field (see config.py), e.g. --set contrastive_weight=0")
    _add_outputs(train)
    _add_common(train)

    predict = commands.add_parser("predict", help="segment volumes with a saved model")
    predict.add_argument("--model", required=True, metavar="MODEL")
    predict.add_argument("--out", required=True, metavar="DIR")
    predict.add_argument("images", nargs="*", metavar="IMAGE")
    # A cohort (docs/cli.md, "Cohorts"): a list of inputs, split into shards that run as array tasks.
    predict.add_argument("--inputs", metavar="LIST", help="the images to segment: a text file of paths (one a "
                         "line), a CSV file with a 'path' column, or a folder; writes a cohort folder")
    predict.add_argument("--shard", metavar="I/N|auto", help="segment only inputs p with p mod N = I (0-based); "
                         "auto: I and N from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, and PLCL_SHARD_COUNT "
                         "or SLURM_ARRAY_TASK_COUNT")
    predict.add_argument("--skip-existing", action="store_true", help="leave out inputs whose outputs are complete "
                         "(all files written and recorded in a results file of the cohort folder)")
    predict.add_argument("--backend", default=None, choices=list(BACKENDS),
                         help=f"what runs the network (default {DEFAULT_BACKEND}: see docs/cost-model.md): torch, or "
                         "on the CPU an exported copy in onnxruntime or openvino (the [onnx] and [openvino] extras)")
    predict.add_argument("--precision", default=None, choices=list(PRECISIONS),
                         help="what the network computes in (default auto: bfloat16 where the device computes it "
                         "natively, else float32)")
    predict.add_argument("--estimate", default=DEFAULT_ESTIMATE, choices=list(ESTIMATES),
                         help=f"the estimated Dice per structure (default {DEFAULT_ESTIMATE}): full compares the "
                         "prediction with three mirrored copies of the input (4 network passes a volume), fast "
                         "with one (2 passes), off leaves it out (1 pass; uncertainty stays)")
    _add_outputs(predict)
    _add_common(predict)

    evaluate = commands.add_parser("evaluate", help="Dice and HD95 of predictions against reference labels")
    evaluate.add_argument("--pred", required=True, metavar="DIR",
                          help="predictions: an output folder of train/predict, or a folder of .seg.nrrd / label maps")
    evaluate.add_argument("--labels", metavar="DIR", help="reference label maps named like the predictions")
    evaluate.add_argument("--data", metavar="DIR", help="a dataset folder, with --split")
    evaluate.add_argument("--split", metavar="SPLIT", help="with --data: evaluate the cases of this split")
    evaluate.add_argument("--json", metavar="FILE", help="where to write the report (default PRED/metrics.json)")
    evaluate.add_argument("--events", choices=["jsonl"], default=None)

    cohort = commands.add_parser("cohort", help="segment a cohort on a Slurm cluster (slurm), follow it (status), "
                                 "gather its results in one table (collect)")
    add_cohort_arguments(cohort)

    demo = commands.add_parser("demo", help="generate a small synthetic dataset, train, segment and evaluate")
    demo.add_argument("--out", default="demo_output", metavar="DIR")
    demo.add_argument("--iterations", type=int, default=None)
    _add_common(demo)
    bench = commands.add_parser("bench", help="compare the method with its baselines on a dataset "
                                "(accuracy, time, memory)")
    if has_lab():
        from .lab.bench import add_bench_arguments

        add_bench_arguments(bench)
    return parser














def _run(args: argparse.Namespace, sink: EventSink, cancel: threading.Event) -> int:
    from .run.prediction import run_prediction
    from .run.training import run_training

    if args.command == "train":
        job = make_train_job(TrainOptions.from_namespace(args))
        run_training(job, sink, cancel, resume=bool(args.resume))
    elif args.command == "predict":
        if args.inputs or args.shard or args.skip_existing:
            if args.format or args.dicom_seg_frames:
                raise ConfigError("--format and --dicom-seg-frames are not taken with --inputs, --shard or "
                                  "--skip-existing yet: a cohort folder holds .seg.nrrd files")
            if args.backend or args.precision:
                raise ConfigError("--backend and --precision are not taken with --inputs, --shard or "
                                  f"--skip-existing yet: a cohort runs with --backend {DEFAULT_BACKEND}")
            from .run.cohort_prediction import run_cohort_prediction

            return run_cohort_prediction(args.model, args.images, args.inputs, args.shard, args.skip_existing,
                                         args.out, args.device or DEFAULT_DEVICE, sink, cancel, args.estimate)
        if not args.images:
            raise ConfigError("plcl predict: give the images to segment (IMAGE ... or --inputs LIST)")
        run_prediction(args.model, args.images, args.out, args.device or DEFAULT_DEVICE, sink, cancel,
                       formats=args.format, seg_frames=args.dicom_seg_frames or DEFAULT_DICOM_SEG_FRAMES,
                       backend=args.backend or DEFAULT_BACKEND, precision=args.precision or "auto",
                       estimate=args.estimate)
    elif args.command == "cohort":
        from .cohort.commands import run_cohort

        return run_cohort(args, sink)
    elif args.command == "evaluate":
        from .evaluation.report import run_evaluation

        run_evaluation(args, sink)
    elif args.command == "demo":
        from .lab.demo import run_demo

        run_demo(args.out, sink, cancel, device=args.device or DEFAULT_DEVICE, iterations=args.iterations)
    elif args.command == "bench":
        from .lab.bench import run_bench

        run_bench(args, sink, cancel)
    return EXIT_OK


def _install_signal_handlers(cancel: threading.Event) -> None:
    def handle(signum: int, frame: Any) -> None:
        if cancel.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        cancel.set()
        # Acknowledged at once (the step under way may take a while): a log line, not an event.
        print("plcl: stopping after the current step (interrupt again to stop at once)", file=sys.stderr, flush=True)

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handle)


def watch_stop_file(path: Path, cancel: threading.Event, interval_s: float = 0.2) -> threading.Thread:
    """Set ``cancel`` when ``path`` appears: a stop request, handled exactly like SIGINT (events.STOP_FILE).
    A request left over from an earlier run, there before this one started, is not this run's: it is
    ignored (and removed once the run holds its folder, outfolder.py) unless it is written again."""
    def identity(file: Path) -> tuple[int, int] | None:
        try:
            status = file.stat()
        except OSError:
            return None
        return status.st_ino, status.st_mtime_ns

    leftover = identity(path)

    def watch() -> None:
        while not cancel.wait(interval_s):
            now = identity(path)
            if now is not None and now != leftover:
                cancel.set()

    thread = threading.Thread(target=watch, daemon=True, name="plcl-stop-file")
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in LAB_COMMANDS and not has_lab():
        print(f"plcl: error: plcl {argv[0]} is a lab tool, not installed here: run it from a source checkout "
              "(pip install -e '.[lab]')", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(argv)
    sink: EventSink = JsonLinesSink() if getattr(args, "events", None) == "jsonl" else EventSink()
    cancel = threading.Event()
    _install_signal_handlers(cancel)
    out = getattr(args, "out", None) or getattr(args, "resume", None)
    stop_file = Path(out) / STOP_FILE if out and args.command in ("train", "predict") else None
    if stop_file is not None:
        if getattr(args, "resume", None):
            stop_file.unlink(missing_ok=True)  # the request that stopped the run being resumed
        watch_stop_file(stop_file, cancel)
    watch_parent_pipe(cancel)  # only where the caller asked (PLCL_PARENT_PIPE=1): its death stops the run
    from .errors import Cancelled

    try:
        return _run(args, sink, cancel)
    except Cancelled as stop:
        sink.emit("cancelled", checkpoint=stop.checkpoint,
                  message="stopped on request" + (f"; resume with --resume {Path(stop.checkpoint).parent}"
                                                  if stop.checkpoint else ""))
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        sink.emit("cancelled", checkpoint=None, message="stopped immediately (second interrupt)")
        return EXIT_CANCELLED
    except InputError as error:  # OutputError too (a full disk names the file it could not write)
        sink.emit("error", message=str(error), file=error.path)
        return EXIT_ERROR
    except ConfigError as error:
        sink.emit("error", message=str(error), file=None)
        return EXIT_USAGE
    except OSError as error:  # the system refused a read or write: one line, no trace
        name = error.filename
        reason = "no space left on the device" if error.errno in DISK_FULL_ERRNOS else (error.strerror or str(error))
        sink.emit("error", message=f"{name}: {reason}" if name else reason, file=None if name is None else str(name))
        return EXIT_ERROR
    except Exception as error:  # an unexpected failure: one line for the user, the trace on stderr
        traceback.print_exc(file=sys.stderr)
        sink.emit("error", message=f"{type(error).__name__}: {error}", file=None)
        return EXIT_ERROR
    finally:
        sink.close()

"""The contract between the engine and its callers (the ``plcl`` command, the Slicer module, scripts).

Torch-free and numpy-free: the Slicer module imports it as it is. Every fact here has this one
owner; the event schema it names is written out in docs/protocol.md (a test holds the two together).
"""

from __future__ import annotations

import argparse
from typing import Any

# --- exit codes -------------------------------------------------------------------------------
EXIT_OK = 0
EXIT_ERROR = 1  # one line naming the file and the problem
EXIT_USAGE = 2  # a command-line usage error
EXIT_DONE_WITH_FAILURES = 3  # a cohort shard finished; some inputs failed (listed in its failures file)
EXIT_CANCELLED = 130  # SIGINT, SIGTERM or the stop file

# --- events (``--events jsonl``: one JSON object a line on stdout) ----------------------------
#: Every event's ``event`` value, with the keys it carries besides ``event`` and ``time``.
EVENT_KEYS: dict[str, tuple[str, ...]] = {
    "start": ("command", "version", "device", "out"),  # train and predict add "precision"
    "stage": ("stage", "round", "total"),
    "progress": ("stage", "iteration", "total", "losses", "elapsed_s", "eta_s", "slices_per_s"),
    "output": ("kind", "path", "name"),
    # per segmented volume or frame, after its output events: its structures worst first, its least certain slice
    "quality": ("name", "frame", "structures", "worst_slice"),
    "warning": ("message",),
    "done": ("out", "elapsed_s"),
    "cancelled": ("checkpoint", "message"),
    "error": ("message", "file"),
}
EVENTS = tuple(EVENT_KEYS)
#: ``stage`` values of ``stage`` and ``progress`` events, in the order a training run goes through them.
STAGES = ("prepare", "warmup", "pseudo_labels", "joint", "predict")
#: ``kind`` of the ``output`` events.
OUTPUT_EVENT_KINDS = ("model", "snapshot", "prediction", "uncertainty", "sequence", "curve", "summary", "metrics")

# --- where a run's files are: the engine owns its run folder ----------------------------------
# A run folder (--out) holds:
#   job.json                      the training request, for --resume
#   checkpoint.pt                 training state (also written on cancel)
#   model.pt                      the model file (method/modelfile.py)
#   training.json                 loss history and timings
#   snapshots/model_<i>.pt        intermediate models (--set snapshots=N)
#   predictions/<name>.seg.nrrd   segmentation of each unannotated or given volume, on its grid
#   uncertainty/<name>.nrrd       normalised predictive entropy per voxel, on its grid
#   sequences/<name>.seq.nrrd     a 4D input's segmentation, all frames, as a label map sequence
#   sequences/<name>.curve.png    its volume curves (run/sequence_outputs.py)
#   summary.json                  classes, outputs and uncertainty scores (least certain first)
#   metrics.json                  plcl evaluate's report, when it is pointed at the folder
#   .plcl.lock                    held while a run writes here (files/outfolder.py)
# A new run needs a folder without an earlier run's outputs; --resume continues a training in its own.
SUMMARY_FILE = "summary.json"  # classes, outputs and uncertainty scores (least certain first)
STOP_FILE = "stop.request"  # its appearance is handled like SIGINT
#: Set to "1" by a caller that keeps a pipe on the engine's stdin: its end of file (the caller exited, crashed
#: or was killed) is then handled like SIGINT (parent_pipe.py). Unset, stdin is never read.
PARENT_PIPE_ENV = "PLCL_PARENT_PIPE"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"  # training state, also written on cancel
JOB_FILE = "job.json"  # the training request, for --resume
TRAINING_FILE = "training.json"  # loss history and timings
METRICS_FILE = "metrics.json"  # plcl evaluate's report
LOCK_FILE = ".plcl.lock"  # held while a run writes the folder
PREDICTIONS_FOLDER = "predictions"  # <name>.seg.nrrd on each input's grid
UNCERTAINTY_FOLDER = "uncertainty"  # <name>.nrrd, normalised predictive entropy per voxel
SEQUENCES_FOLDER = "sequences"  # <name>.seq.nrrd and <name>.curve.png of each 4D input
SNAPSHOTS_FOLDER = "snapshots"  # model_<i>.pt, intermediate models (--set snapshots=N)
#: ``--format`` values: how each segmentation is written into predictions/ (run/writers.py owns the table):
#: NAME.seg.nrrd, NAME.nii.gz (a label map of class values), NAME.seg.dcm (DICOM SEG, DICOM inputs only).
OUTPUT_FORMATS = ("seg.nrrd", "nifti", "dicom-seg")
DEFAULT_OUTPUT_FORMATS = ("seg.nrrd",)
#: ``--dicom-seg-frames`` default: a cine's DICOM SEGs of its end-diastolic and end-systolic frames.
DEFAULT_DICOM_SEG_FRAMES = "ed,es"
#: Keys of summary.json's ``outputs`` (a path, or null when the run wrote no such file), and their files.
OUTPUT_FILES = {"model": MODEL_FILE, "checkpoint": CHECKPOINT_FILE, "training": TRAINING_FILE, "job": JOB_FILE}
OUTPUT_KINDS = tuple(OUTPUT_FILES)
#: Everything a run may write in its folder: a new run refuses a folder that holds any of them.
RUN_FILES = (MODEL_FILE, CHECKPOINT_FILE, JOB_FILE, TRAINING_FILE, SUMMARY_FILE, METRICS_FILE)
RUN_FOLDERS = (PREDICTIONS_FOLDER, UNCERTAINTY_FOLDER, SNAPSHOTS_FOLDER, SEQUENCES_FOLDER)


def frame_name(name: str, index: int, count: int) -> str:
    """The volume name of frame ``index`` of a 4D image named ``name`` with ``count`` frames: NAME_t<index>,
    zero-padded to the width of the last index, at least 2 digits (NAME_t00 ... NAME_t29)."""
    width = max(2, len(str(max(0, count - 1))))
    return f"{name}_t{index:0{width}d}"


# --- the cohort folder: ``plcl predict --inputs/--shard/--skip-existing`` and ``plcl cohort`` -----
# Several shards (array tasks) write one cohort folder at once; beside predictions/, uncertainty/
# and sequences/ (as in a run folder) it holds:
#   cohort.json                         the model (path, sha256, classes), the input list, the shard count
#   shards/shard-I-of-N.results.jsonl   one record per input done (appended after its files are written)
#   shards/shard-I-of-N.failures.jsonl  one record per input that failed (path, one-line reason)
#   shards/.shard-I-of-N.lock           held while that shard runs
#   cohort.sbatch, logs/                the Slurm array script of ``plcl cohort slurm`` and its logs
#   cohort.csv, cohort.parquet, cohort_qc.png   ``plcl cohort collect``'s table and QC page
COHORT_FILE = "cohort.json"
SHARDS_FOLDER = "shards"
RESULTS_SUFFIX = ".results.jsonl"
FAILURES_SUFFIX = ".failures.jsonl"
SBATCH_FILE = "cohort.sbatch"
LOGS_FOLDER = "logs"
COHORT_TABLE = "cohort.csv"
COHORT_PARQUET = "cohort.parquet"
COHORT_QC = "cohort_qc.png"
#: ``--shard auto``: the task's index (Slurm arrays, Kubernetes Indexed Jobs) and the shard count
#: (PLCL_SHARD_COUNT first, as the script of ``plcl cohort slurm`` sets it, else Slurm's array size).
SHARD_INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")
SHARD_COUNT_VARIABLES = ("PLCL_SHARD_COUNT", "SLURM_ARRAY_TASK_COUNT")


def shard_name(index: int, count: int) -> str:
    """The name of shard ``index`` (0-based) of ``count``: shard-0003-of-0010 (widths of at least 4 digits)."""
    width = max(4, len(str(count)))
    return f"shard-{index:0{width}d}-of-{count:0{width}d}"


# --- devices and budgets ----------------------------------------------------------------------
#: ``--device`` values: auto = CUDA, else Apple MPS, else CPU (``cuda:N`` picks a GPU too).
DEVICES = ("auto", "cpu", "cuda", "mps")
DEFAULT_DEVICE = "auto"


def is_device(name: str) -> bool:
    """One of DEVICES, or ``cuda:N`` (one GPU of several, as torch numbers them)."""
    return name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit() and name[5:].isascii())


def device_argument(text: str) -> str:
    """``--device``'s argparse type: a clear usage error for anything else."""
    if not is_device(text):
        raise argparse.ArgumentTypeError(f"{text!r}: auto, cpu, cuda, cuda:N (a GPU of several) or mps")
    return text


#: ``plcl predict --backend``: what runs the network. torch (eager, on any device); onnxruntime and
#: openvino run an exported copy on the CPU (the [onnx] and [openvino] extras); auto: runtime.py's
#: choice (docs/cost-model.md says why). The start event and summary.json name the one that ran.
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
DEFAULT_BACKEND = "auto"
#: ``plcl predict --precision`` (and the ``precision`` setting of training): auto is bfloat16 where
#: the device computes it natively, else float32.
PRECISIONS = ("auto", "fp32", "bf16")
#: ``plcl predict --estimate`` (and ``plcl cohort slurm``'s tasks): how many mirrored copies of the input the
#: quality estimate compares a prediction with (method/quality.py), each one network pass more: full (3,
#: left-right, up-down, both), fast (1, left-right), off (none: estimated_dice is null, uncertainty stays).
#: docs/cost-model.md gives what each costs; docs/results/2026-12-03-review-estimates.md how good each is.
ESTIMATES = {"full": 3, "fast": 1, "off": 0}
DEFAULT_ESTIMATE = "full"

#: Budget presets: overrides of TrainConfig. Times are measured on a 2-core CPU (docs/results).
BUDGETS: dict[str, dict[str, Any]] = {
    # A first look in a few minutes on a laptop CPU.
    "quick": dict(patch_size=96, batch_size=12, contrastive_images=6, warmup_iterations=300,
                  rounds=2, joint_iterations=150),
    # The CPU default: a useful model in about 15 minutes on 2 cores.
    "standard": dict(patch_size=128, batch_size=12, contrastive_images=6, warmup_iterations=900,
                     rounds=3, joint_iterations=350),
    # The paper's schedule and patch size: for a GPU.
    "full": dict(patch_size=192, batch_size=20, contrastive_images=10, warmup_iterations=5000,
                 rounds=3, joint_iterations=5000),
}
DEFAULT_BUDGET = "standard"

# --- annotated slices -------------------------------------------------------------------------
#: The order in which ``--annotated-slices`` values pair with the annotated volumes of ``plcl train``.
ANNOTATED_SLICES_ORDER = ("--labeled pairs", "--labeled-frame triples", "--labeled-cases cases")

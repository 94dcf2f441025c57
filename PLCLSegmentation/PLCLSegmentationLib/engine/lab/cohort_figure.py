"""The README's cohort picture: the QC page of a SYNTHETIC cohort that a real model segments well.

``python -m PLCLSegmentationLib.engine.lab.cohort_figure --out DIR [--volumes 40] [--model MODEL]
[--figure PNG]``

With the project's own commands, each in a child process, into ``DIR``:

1. ``model/``: ``plcl train`` as ``plcl demo`` trains (its eight SYNTHETIC phantoms of seed 0, two
   annotated, its budget and patch size), unless ``--model`` names a model to use.
2. ``inputs/``: ``--volumes`` other SYNTHETIC phantoms (seed 30, lab/synthetic.py) and ``list.txt``;
   ``plcl predict --inputs inputs/list.txt --out SYNTHETIC_cohort`` (a cohort folder), then ``plcl
   cohort collect SYNTHETIC_cohort`` (``cohort.csv`` and ``cohort_qc.png``, titled by the folder's name).
3. ``--figure``: a copy of the QC page (the README's is ``Resources/Screenshots/cohort_qc.png``);
   three lines of the table, some of its columns, are printed for the README.

Nothing here is medical data.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from ..files.dataset import read_dataset
from ..files.volumes import atomic_path
from ..protocol import COHORT_QC, COHORT_TABLE
from .child import run_child
from .demo import DEMO_ITERATIONS
from .synthetic import make_synthetic_dataset

#: plcl demo's training (lab/demo.py): its budget and patch size.
DEMO_TRAINING = ["--budget", "quick", "--set", "patch_size=64", "--iterations", str(DEMO_ITERATIONS)]
#: The cohort's phantoms: another seed than the training's.
COHORT_SEED = 30
#: The folder the QC page is titled by.
COHORT_FOLDER = "SYNTHETIC_cohort"


def train_demo_model(out: Path, device: str) -> str:
    """A model trained as ``plcl demo`` trains its model; the path of its model file."""
    data = make_synthetic_dataset(out / "synthetic_data", n_cases=8, seed=0, oblique=True)
    dataset = read_dataset(data)
    cases = dataset.split("train") + dataset.split("val")  # as the demo: two annotated, the other six not
    run_child(["train", "--data", str(data), "--labeled-cases", ",".join(cases[:2]), "--unlabeled-cases",
               ",".join(cases[2:]), "--device", device, "--out", str(out / "run"), *DEMO_TRAINING], out / "train.log")
    return str(out / "run" / "model.pt")


def make_cohort(folder: Path, volumes: int) -> Path:
    """``volumes`` SYNTHETIC phantoms (images only) and a list of them; the list's path."""
    data = make_synthetic_dataset(folder / "phantoms", n_cases=volumes, seed=COHORT_SEED, oblique=True)
    images = sorted((data / "images").glob("*.nii.gz"))
    with atomic_path(folder / "list.txt") as tmp, open(tmp, "w") as f:
        f.write("# SYNTHETIC cohort (lab/cohort_figure.py)\n" + "".join(f"{p.relative_to(folder)}\n" for p in images))
    return folder / "list.txt"


def excerpt(table: Path, lines: int = 3) -> str:
    """The table's header and first rows, without the input's path and the sequences' columns."""
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    keep = [i for i, name in enumerate(rows[0])
            if name not in ("input", "frames", "spacing_mm") and not name.endswith(("_ed_ml", "_es_ml", "_percent"))]
    return "\n".join(",".join(row[i] for i in keep) for row in rows[:lines])


def run(out: Path, volumes: int, model: str | None, device: str, figure: Path | None) -> Path:
    model_path = model or train_demo_model(out / "model", device)
    cohort = out / COHORT_FOLDER
    listing = make_cohort(out / "inputs", volumes)
    run_child(["predict", "--model", model_path, "--inputs", str(listing), "--out", str(cohort), "--device", device],
              out / "predict.log")
    run_child(["cohort", "collect", str(cohort)], out / "collect.log")
    page = cohort / COHORT_QC
    print(f"QC page of {volumes} SYNTHETIC volumes: {page}\n\n{excerpt(cohort / COHORT_TABLE)}")
    if figure:
        with atomic_path(figure) as tmp:
            shutil.copyfile(page, tmp)
        print(f"\ncopied to {figure} ({figure.stat().st_size // 1024} KB)")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m PLCLSegmentationLib.engine.lab.cohort_figure",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, metavar="DIR", help="a new folder for the model, cohort and page")
    parser.add_argument("--volumes", type=int, default=40, help="SYNTHETIC volumes in the cohort (default 40)")
    parser.add_argument("--model", help="a model file to use instead of training one as plcl demo does")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--figure", type=Path, metavar="PNG", help="where to copy the QC page")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out}: not empty; give a new folder")
    if args.volumes < 1:
        parser.error("--volumes must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    run(out, args.volumes, args.model, args.device, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

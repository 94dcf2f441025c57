"""The device check (`make gpu-check`): on a machine with an NVIDIA GPU and its own CUDA torch.

1. installs what the engine needs beside that torch (SimpleITK, slicerio, pynrrd, pytest) from wheels
   in a folder (such machines often have no package index), into a folder outside the checkout;
2. runs the tests marked ``cuda``;
3. prints the training throughput table at the 128 px (standard) and 192 px (full) patches;
4. trains for a short while, predicts the held-out split and evaluates it, on a dataset folder given
   to it or, without one, on SYNTHETIC data it generates (no dataset needs to travel).

Usage (the machine's own python, not the project's CPU .venv):
    python3 Testing/gpu_check.py [--wheels DIR] [--data DATASET] [--out DIR] [--minutes M]
Fetch the wheels on a machine with an index (docs/development.md, "GPU check"). ``--device cpu`` rehearses the
whole check on a CPU in a few minutes (tiny budgets).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = {"SimpleITK": "SimpleITK", "slicerio": "slicerio", "nrrd": "pynrrd", "pytest": "pytest"}


def missing_modules() -> list[str]:
    return [module for module in NEEDED if importlib.util.find_spec(module) is None]


def install(wheels: Path, site: Path) -> None:
    """Every wheel of the folder into ``site``, without an index and without dependencies (numpy and
    torch are the machine's own)."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        sys.exit(f"gpu-check: {wheels}: no .whl files; fetch them as docs/development.md's 'GPU check' says")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *files], check=True)


def plcl(*args: str, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "PLCLSegmentationLib.engine", *args]
    print("\n$ plcl " + " ".join(args), flush=True)
    subprocess.run(command, check=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="folder of wheels for the modules this python lacks")
    parser.add_argument("--site", type=Path, default=Path("/tmp/plcl-gpu-site"), help="where to install them")
    parser.add_argument("--data", type=Path, help="a dataset folder (dataset.json, images/, labels/); "
                        "default: generated SYNTHETIC data")
    parser.add_argument("--out", type=Path, default=Path("/tmp/plcl-gpu-check"))
    parser.add_argument("--minutes", type=float, default=1.5, help="training time of the short run")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a rehearsal")
    parser.add_argument("--throughput-iterations", type=int, default=40)
    args = parser.parse_args()
    started = time.monotonic()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu-check: torch {torch.__version__} sees no CUDA GPU on this machine")
    env = dict(os.environ)
    paths = [str(REPO / "PLCLSegmentation")]
    if missing_modules():
        if not args.wheels:
            sys.exit(f"gpu-check: this python lacks {', '.join(NEEDED[m] for m in missing_modules())}: "
                     "give --wheels DIR (docs/development.md, 'GPU check')")
        install(args.wheels, args.site)
        sys.path.insert(0, str(args.site))
        paths.append(str(args.site))
        importlib.invalidate_caches()
        if missing_modules():
            sys.exit(f"gpu-check: still missing after installing {args.wheels}: {', '.join(missing_modules())}")
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), flush=True)

    for name in ("run", "predicted", "throughput_standard", "throughput_full"):  # this check's own earlier outputs
        shutil.rmtree(args.out / name, ignore_errors=True)

    print("\n== tests marked cuda ==", flush=True)
    tests = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "Testing"), "-m", "cuda", "-q", "-ra",
                            "-p", "no:cacheprovider"], env=env, cwd=REPO)

    data = args.data
    if data is None:
        sys.path.insert(0, paths[0])
        from PLCLSegmentationLib.engine.lab.synthetic import make_synthetic_dataset

        data = make_synthetic_dataset(args.out / "synthetic_data", n_cases=10, seed=0, oblique=True)
        print(f"\nSYNTHETIC dataset generated at {data}", flush=True)
    dataset = json.loads((Path(data) / "dataset.json").read_text())
    labelled = [c for c in dataset["cases"]["train"] if (Path(data) / "labels" / f"{c}.nii.gz").exists()]
    eval_split = "val" if dataset["cases"].get("val") else "train"

    print("\n== training throughput ==", flush=True)
    for budget in ("standard", "full") if args.device == "cuda" else ("standard",):  # a CPU rehearsal: 128 px only
        bench = args.out / f"throughput_{budget}"
        plcl("bench", "--data", str(data), "--out", str(bench), "--methods", "", "--seeds", "0", "--budget", budget,
             "--labeled-cases", labelled[0], "--throughput-iterations", str(args.throughput_iterations),
             "--device", args.device, env=env)
        report = (bench / "results.md").read_text()
        print(report[report.index("## Training throughput"):], flush=True)

    print("\n== short train, predict, evaluate ==", flush=True)
    run = args.out / "run"
    budget = "full" if args.device == "cuda" else "quick"
    plcl("train", "--data", str(data), "--labeled-cases", ",".join(labelled[:2]), "--unlabeled-split", "train",
         "--budget", budget, "--minutes", str(args.minutes), "--device", args.device, "--out", str(run), env=env)
    images = [str(Path(data) / "images" / f"{c}.nii.gz") for c in dataset["cases"][eval_split]]
    plcl("predict", "--model", str(run / "model.pt"), "--out", str(args.out / "predicted"), "--device", args.device,
         *images, env=env)
    plcl("evaluate", "--pred", str(args.out / "predicted"), "--data", str(data), "--split", eval_split, env=env)
    training = json.loads((run / "training.json").read_text())
    print(f"\ntraining: {training['iterations']} iterations, {training['slices_per_s']:.0f} slices/s, "
          f"precision {training.get('precision')}; whole check {time.monotonic() - started:.0f} s", flush=True)
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())

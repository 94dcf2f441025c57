"""Which Python runs the engine, and installing what it needs (with the user's consent).

By default the engine runs in Slicer's own Python (``PythonSlicer``), with the current environment
(Slicer's library paths). torch is installed there on first use through the PyTorch extension's
``PyTorchUtils`` logic, which picks a CUDA or CPU build that fits the machine; the small
pure-Python packages with ``slicer.util.pip_install``. Nothing is installed at import time, nor
without the user agreeing, nor while testing.

Alternatively the user names a Python interpreter (e.g. an environment with a CUDA build of torch);
it then runs with Slicer's *startup* environment, so that Slicer's own Python paths do not leak
into it, and must have the packages installed already (:func:`probe_interpreter` says which are
missing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

ENGINE_MODULE = "PLCLSegmentationLib.engine"
#: import name -> pip requirement (torch comes from the PyTorch extension, SimpleITK and numpy with Slicer)
REQUIREMENTS: dict[str, str] = {
    "numpy": "numpy>=1.22",
    "SimpleITK": "SimpleITK>=2.2",
    "slicerio": "slicerio>=1.4",
    "tqdm": "tqdm>=4.60",
    "torch": "torch>=2.1",
}
TORCH_REQUIREMENT = ">=2.1"


def lib_parent() -> Path:
    """The folder holding the ``PLCLSegmentationLib`` package (the module's folder in Slicer)."""
    return Path(__file__).resolve().parents[1]


def in_slicer_application() -> bool:
    try:
        import slicer

        return hasattr(slicer, "app") and slicer.app is not None
    except ImportError:
        return False


def testing_enabled() -> bool:
    if not in_slicer_application():
        return True
    import slicer

    return bool(slicer.app.testingEnabled())


def slicer_python() -> str:
    """Slicer's own Python interpreter; outside Slicer, this Python."""
    if in_slicer_application():
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if candidate.exists():
            return str(candidate)
    return sys.executable


def engine_command(python: str = "") -> list[str]:
    """The command line that starts the engine: ``<python> -m PLCLSegmentationLib.engine``."""
    return [python or slicer_python(), "-m", ENGINE_MODULE]


def child_environment(external_python: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the engine process: the package on PYTHONPATH, unbuffered UTF-8 output."""
    if base is not None:
        env = dict(base)
    elif external_python and in_slicer_application():
        import slicer

        env = dict(slicer.util.startupEnvironment())
    else:
        env = dict(os.environ)
    paths = [str(lib_parent())]
    if not external_python and env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def missing_modules(names: list[str] | None = None) -> list[str]:
    """Import names of REQUIREMENTS that this Python cannot import (checked without importing them)."""
    return [name for name in (names or list(REQUIREMENTS)) if importlib.util.find_spec(name) is None]


_PROBE = (
    "import importlib.util, json, sys\n"
    "names = json.loads(sys.argv[1])\n"
    "info = {'missing': [n for n in names if importlib.util.find_spec(n) is None], 'python': sys.version.split()[0]}\n"
    "if 'torch' not in info['missing']:\n"
    "    import torch\n"
    "    info['torch'] = torch.__version__\n"
    "    info['cuda'] = bool(torch.cuda.is_available())\n"
    "    info['mps'] = bool(getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available())\n"
    "print(json.dumps(info))\n"
)


def probe_interpreter(python: str, env: dict[str, str] | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask an interpreter which packages it lacks and what torch can use: {missing, python, torch, cuda, mps}.

    Raises RuntimeError with one clear line if it cannot be run.
    """
    if not python:
        raise RuntimeError("No Python interpreter given.")
    if not (Path(python).is_file() or shutil.which(python)):
        raise RuntimeError(f"Python interpreter not found: {python}")
    try:
        completed = subprocess.run([python, "-c", _PROBE, json.dumps(list(REQUIREMENTS))], capture_output=True,
                                   text=True, timeout=timeout_s, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"Could not run {python}: {error}") from None
    lines = [ln for ln in completed.stdout.splitlines() if ln.startswith("{")]
    if completed.returncode != 0 or not lines:
        detail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{python} is not a usable Python interpreter: {detail}")
    return json.loads(lines[-1])


class InterpreterChecks:
    """Probes of external interpreters, each run once in a background thread and remembered.

    :meth:`check` never blocks: it returns the probe's answer ({missing, python, torch, ...} or
    {"error": message}), or None while the probe runs. An interpreter that changed on disk (its
    modification time) is probed again.
    """

    def __init__(self, probe: Callable[[str], dict[str, Any]] | None = None) -> None:
        self._probe = probe or (lambda python: probe_interpreter(python, env=child_environment(True)))
        self._results: dict[tuple[str, float], dict[str, Any] | None] = {}
        self._lock = threading.Lock()

    def check(self, python: str) -> dict[str, Any] | None:
        key = (python, _mtime(python))
        with self._lock:
            if key in self._results:
                return self._results[key]
            self._results[key] = None
        threading.Thread(target=self._run, args=(key,), daemon=True, name="plcl-probe").start()
        return None

    def _run(self, key: tuple[str, float]) -> None:
        try:
            result = self._probe(key[0])
        except Exception as error:  # one clear line for the user
            result = {"error": str(error)}
        with self._lock:
            self._results[key] = result


def _mtime(path: str) -> float:
    found = path if os.path.isfile(path) else shutil.which(path)
    try:
        return os.stat(found).st_mtime if found else -1.0
    except OSError:
        return -1.0


def ensure_slicer_packages(confirm: Callable[[str], bool], log: Callable[[str], None] = print) -> bool:
    """Install what Slicer's Python lacks to run the engine, after ``confirm(question)`` returns True.

    Returns True when everything is available. Only in the Slicer application; never while testing
    (a missing package is then an error).
    """
    missing = missing_modules()
    if not missing:
        return True
    if testing_enabled():
        raise RuntimeError(f"Missing Python packages for the engine: {', '.join(missing)}")
    question = ("PLCLSegmentation trains its model with PyTorch. These Python packages will be downloaded and "
                f"installed into Slicer: {', '.join(missing)}. This can take several minutes. Continue?")
    if not confirm(question):
        return False
    import slicer

    others = [REQUIREMENTS[name] for name in missing if name != "torch"]
    if others:
        log(f"Installing {', '.join(others)}...")
        slicer.util.pip_install(others)
    if "torch" in missing:
        log("Installing PyTorch with the PyTorch extension (this can take several minutes)...")
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("The PyTorch extension is needed: install it with the Extensions Manager, "
                               "restart Slicer and try again.") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch could not be installed; see the Python console for details.")
    importlib.invalidate_caches()
    still = missing_modules()
    if still:
        raise RuntimeError(f"Still missing after installation: {', '.join(still)}; restart Slicer and try again.")
    return True


def default_models_dir() -> Path:
    """A per-user folder outside the Slicer installation, so that upgrading Slicer keeps the models."""
    if sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support"
    else:
        root = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return root / "PLCLSegmentation" / "models"

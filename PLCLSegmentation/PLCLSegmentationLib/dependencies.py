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
import tempfile
import time
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


def find_interpreter(python: str) -> str | None:
    """The executable file ``python`` names (a path, or a bare name on PATH), or None."""
    if not python:
        return None
    if os.path.isfile(python):
        return python if os.access(python, os.X_OK) else None
    if os.path.basename(python) == python:
        return shutil.which(python)
    return None


def probe_interpreter(python: str, env: dict[str, str] | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask an interpreter which packages it lacks and what torch can use: {missing, python, torch, cuda, mps}.
    Blocks (scripts); the panel uses :class:`InterpreterChecks`.

    Raises RuntimeError with one clear line if it cannot be run.
    """
    probe = Probe.start(python, env)
    while (result := probe.answer(timeout_s)) is None:  # answer() gives up after timeout_s itself
        time.sleep(0.05)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


class Probe:
    """One run of the probe script in a child process, started without a thread: :meth:`answer` looks
    whether it has exited (never waits). Its output goes to temporary files, so the child never blocks
    on a full pipe that nobody reads."""

    def __init__(self, python: str, process: subprocess.Popen[bytes] | None, out: Any, err: Any,
                 error: str = "") -> None:
        self.python = python
        self.process = process
        self.started = time.monotonic()
        self._out, self._err = out, err
        self._result: dict[str, Any] | None = {"error": error} if error else None

    @classmethod
    def start(cls, python: str, env: dict[str, str] | None) -> Probe:
        found = find_interpreter(python)
        if found is None:
            return cls(python, None, None, None, error=f"Python interpreter not found: {python}" if python
                       else "No Python interpreter given.")
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (closed by answer())
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            process = subprocess.Popen([found, "-c", _PROBE, json.dumps(list(REQUIREMENTS))], stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=err, env=env, **kwargs)
        except OSError as error:
            out.close()
            err.close()
            return cls(python, None, None, None, error=f"Could not run {python}: {error.strerror or error}")
        return cls(python, process, out, err)

    def answer(self, timeout_s: float) -> dict[str, Any] | None:
        """{missing, python, torch, ...} or {"error": one line} once the child has exited; None before."""
        if self._result is not None:
            return self._result
        assert self.process is not None
        returncode = self.process.poll()
        if returncode is None:
            if time.monotonic() - self.started <= timeout_s:
                return None
            self.process.kill()
            self.process.wait()
            self._result = {"error": f"{self.python} did not answer within {timeout_s:.0f} s"}
        else:
            self._result = self._read(returncode)
        self._out.close()
        self._err.close()
        return self._result

    def _read(self, returncode: int) -> dict[str, Any]:
        self._out.seek(0)
        self._err.seek(0)
        stdout = self._out.read().decode("utf-8", "replace")
        stderr = self._err.read().decode("utf-8", "replace")
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if returncode != 0 or not lines:
            detail = (stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"{self.python} is not a usable Python interpreter: {detail}"}
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            return {"error": f"{self.python} is not a usable Python interpreter: {lines[-1][:200]}"}


class InterpreterChecks:
    """Probes of external interpreters, each run once as a child process and remembered.

    :meth:`check` never blocks: it returns the probe's answer ({missing, python, torch, ...} or
    {"error": message}), or None while the probe runs. No Python thread is involved (Slicer holds the
    interpreter's lock while idle, so a thread would hardly run): the probe is a child process whose exit
    each call looks at, and the panel calls :meth:`poll` from a ``qt.QTimer`` until the answer comes. Its
    environment is built by the caller's (the main) thread. An interpreter that changed on disk (its
    modification time) is probed again.
    """

    def __init__(self, environment: Callable[[], dict[str, str]] | None = None, timeout_s: float = 120.0) -> None:
        self._environment = environment or (lambda: child_environment(True))
        self.timeout_s = timeout_s
        self._probes: dict[tuple[str, float], Probe] = {}

    def check(self, python: str) -> dict[str, Any] | None:
        key = (python, _mtime(python))
        probe = self._probes.get(key)
        if probe is None:
            probe = self._probes[key] = Probe.start(python, self._environment())
        return probe.answer(self.timeout_s)

    def poll(self) -> bool:
        """Look at every running probe; True while one still runs."""
        return any(probe.answer(self.timeout_s) is None for probe in list(self._probes.values()))


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
        log(f"Not started: the engine needs {', '.join(missing)}, not installed. Click again to install them, "
            "or choose a Python that has them (Training, Python).")
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

"""One run of the engine, from its exported inputs to its results in the scene.

:class:`RunInputs` is the private temporary folder a run's inputs are exported into (each item adds
its files and its part of the command line); :class:`EngineRun` starts the engine as a child process
(:mod:`.process`), takes in its events on each :meth:`EngineRun.poll` (the loss plot grows, the job's
progress moves), and only when the child has finished successfully imports the results as new nodes,
in one transaction. Cancel or failure leave the scene as it was; the run's files are tidied up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import scene_io
from .engine import slicing
from .engine.protocol import STOP_FILE, SUMMARY_FILE
from .jobs import PREDICT, TRAIN, Job, JobState
from .parameters import ModuleState, VolumeRecord
from .plots import LOSS_CHART, LOSS_SERIES, LOSS_TABLE
from .process import EngineProcess, Message, RunState
from .run_results import Expected, Imported, RunResults, read_summary
from .scene_io import SceneTransaction
from .services import OWNER_ATTRIBUTE, PLCLError, SlicerServices


@dataclass
class RunInputs:
    """A run's private temporary folder of exported files, and what the engine is told about them."""

    folder: Path
    labeled: list[tuple[Path, Path, str]] = field(default_factory=list)  # image, label, --annotated-slices
    labeled_frames: list[tuple[Path, int, Path]] = field(default_factory=list)  # 4D image, frame, label
    unlabeled: list[Path] = field(default_factory=list)  # to segment (and learn from, in training)
    expected: dict[str, Expected] = field(default_factory=dict)  # record key -> its results to import

    @classmethod
    @contextlib.contextmanager
    def exporting(cls) -> Iterator[RunInputs]:
        """A new folder, removed again if the export fails; it names its owner (remove_stale_inputs)."""
        inputs = cls(Path(tempfile.mkdtemp(prefix=INPUTS_PREFIX)))
        try:
            (inputs.folder / OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}", encoding="utf-8")
            yield inputs
        except BaseException:
            shutil.rmtree(inputs.folder, ignore_errors=True)
            raise

    def image(self, record: VolumeRecord) -> Path:
        """The record's volume as a file (written once)."""
        path = self.folder / "images" / f"{record.key}.nrrd"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            scene_io.write_volume(record.volume, str(path))
        return path

    def label(self, name: str) -> Path:
        path = self.folder / "labels" / name
        path.parent.mkdir(exist_ok=True)
        return path

    def train_arguments(self) -> list[str]:
        argv: list[str] = []
        for image, label, _ in self.labeled:
            argv += ["--labeled", str(image), str(label)]
        for image, frame, label in self.labeled_frames:
            argv += ["--labeled-frame", str(image), str(frame), str(label)]
        # One per --labeled pair, then one per --labeled-frame (a frame is annotated whole).
        slices = [spec for _, _, spec in self.labeled] + [slicing.ALL] * len(self.labeled_frames)
        if any(spec != slicing.ALL for spec in slices):
            argv += [arg for spec in slices for arg in ("--annotated-slices", spec)]
        if self.unlabeled:
            argv += ["--unlabeled", *(str(path) for path in self.unlabeled)]
        return argv


#: A run's exported inputs: a folder in the temporary folder, and the file in it naming its Slicer process.
INPUTS_PREFIX = "plcl-inputs-"
OWNER_FILE = "owner.txt"
#: Where a process cannot be asked whether it runs (Windows), a folder older than this is stale.
STALE_AFTER_S = 7 * 24 * 3600.0


def remove_stale_inputs(folder: Path | None = None) -> list[Path]:
    """Remove the exported inputs (patients' volumes) that a crashed or killed Slicer left behind: folders
    whose owner process on this machine no longer runs. Returns the folders removed."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{INPUTS_PREFIX}*"):
        if path.is_dir() and not path.is_symlink() and _stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _stale(path: Path) -> bool:
    try:
        pid_text, host = (path / OWNER_FILE).read_text(encoding="utf-8").split(maxsplit=1)
        pid = int(pid_text)
    except (OSError, ValueError):  # no owner written (an older version, or killed while creating it)
        pid, host = 0, ""
    if pid and host.strip() != socket.gethostname():
        return False  # a shared temporary folder: another machine's run
    if pid and os.name == "posix":
        try:
            os.kill(pid, 0)  # signal 0 only asks (on Windows os.kill would end the process)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    with contextlib.suppress(OSError):
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    return False


def new_run_folder(models_dir: Path, kind: str) -> Path:
    folder = models_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    return folder


class EngineRun:
    """One run: ``job`` says what it is; the scene of ``services`` gets its results."""

    def __init__(self, services: SlicerServices, job: Job, process_factory: Callable[..., EngineProcess],
                 environment: dict[str, str] | None, grace_s: float,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.services = services
        self.progress = progress  # (text with {done} and {total}, index, total) before each result is added
        self.job = job
        self.process_factory = process_factory
        self.environment = environment
        self.grace_s = grace_s

    @property
    def state(self) -> ModuleState:
        return ModuleState(self.services.scene)

    @property
    def finished(self) -> bool:
        return self.job.state.finished

    def start(self) -> Job:
        job = self.job
        job.process = self.process_factory(job.argv, env=self.environment, log_path=job.log_path,
                                           grace_s=self.grace_s, stop_file=job.out_dir / STOP_FILE)
        try:
            job.process.start()
        except OSError as error:
            self._discard(keep_out=False)
            raise PLCLError(f"Could not start the engine ({job.argv[0]}): {error.strerror or error}") from None
        job.state = JobState.RUNNING
        return job

    def cancel(self) -> None:
        """The child finishes its step and exits, the whole tree is ended; nothing is imported."""
        if self.job.state == JobState.RUNNING:
            self.job.state = JobState.CANCELLING
            self.job.process.cancel()

    def poll(self) -> list[Message]:
        """Take in what the child said since the last call; on its exit, import or clean up. Never blocks."""
        job = self.job
        if job.state.finished:
            return []
        messages = job.process.poll()
        points = []
        for message in messages:
            if message.kind == "event":
                point = job.handle(message.data)
                if point is not None:
                    points.append(point)
            elif message.kind == "log":
                job.add_log(message.data)
        if points and job.plot is not None:
            job.plot.append(points)
        if job.process.state.finished:
            self._finish()
        return messages

    def wait(self, timeout_s: float, interval_s: float,
             on_messages: Callable[[list[Message]], None] | None = None) -> Job:
        """Poll until the run finishes; past ``timeout_s`` the child is ended and TimeoutError raised."""
        deadline = time.monotonic() + timeout_s
        while not self.job.state.finished:
            messages = self.poll()
            if on_messages is not None and messages:
                on_messages(messages)
            if self.job.state.finished:
                break
            if time.monotonic() > deadline:
                self.job.process.kill()
                self.job.process.wait(30)
                self.poll()
                raise TimeoutError(f"the run did not finish within {timeout_s:.0f} s and was stopped")
            time.sleep(interval_s)
        return self.job

    def shutdown(self, timeout_s: float) -> None:
        """End the child at once, and with it the run: its inputs and folder are removed, nothing imported."""
        job = self.job
        if job.state.finished:
            return
        if job.process is not None:
            job.process.kill()
            deadline = time.monotonic() + timeout_s
            while not job.process.state.finished and time.monotonic() < deadline:
                self.poll()  # the exit arrives once the child's output is read to its end
                time.sleep(0.02)
        if not job.state.finished:  # the child did not report its exit in time: forget the run anyway
            job.state = JobState.CANCELLED
            job.finished = time.monotonic()
            self._discard(keep_out=False)
            shutil.rmtree(job.inputs_dir, ignore_errors=True)

    # --- the child has exited -------------------------------------------------------------------
    def _finish(self) -> None:
        job = self.job
        outcome = job.process.state
        try:
            if outcome == RunState.DONE:
                job.state = JobState.IMPORTING
                try:
                    self._import()
                except Exception as error:  # nothing was added: the transaction rolled back
                    job.error = f"the results could not be imported: {error}"
                    job.state = JobState.FAILED
                    self._discard(keep_out=True)
                else:
                    job.state = JobState.DONE
                    self._tidy_after_success()
            elif outcome == RunState.CANCELLED:
                job.state = JobState.CANCELLED
                self._discard(keep_out=False)
            else:
                job.error = job.process.error or job.error or "the engine failed"
                job.tail = list(job.process.tail)
                job.state = JobState.FAILED
                self._discard(keep_out=True)
        finally:
            job.finished = time.monotonic()
            shutil.rmtree(job.inputs_dir, ignore_errors=True)

    def _discard(self, keep_out: bool) -> None:
        """Undo everything the run added to the scene; keep its folder (with the log) only if asked."""
        job = self.job
        if job.plot is not None:
            for node in job.plot.nodes:
                scene_io.remove_node(self.services.scene, node)
            job.plot = None
        if not keep_out:
            shutil.rmtree(job.out_dir, ignore_errors=True)

    def _import(self) -> None:
        job = self.job
        results = RunResults(job.out_dir, read_summary(job.out_dir), job.classes)
        records = {r.key: r for r in self.state.records()}
        transaction = SceneTransaction(self.services.scene)
        imported: list[Imported] = []
        try:
            ordered = sorted(job.expected.values(), key=lambda e: e.order)
            for index, expected in enumerate(ordered):
                if self.progress is not None:
                    self.progress("Adding {done} of {total} results to the scene...", index, len(ordered))
                result = expected.take(self.services, transaction, records.get(expected.key), results, job.warnings)
                if result is not None:
                    imported.append(result)
        except BaseException:
            transaction.rollback()
            raise
        for result in imported:
            result.apply(self.services, job.warnings)
            job.imported.append(result.record.name)
            job.imported_kinds.append(result.kind)
        state = self.state
        if imported:
            state.save(*(r.record for r in imported))
        if job.kind == TRAIN:
            model = results.path((results.summary.get("outputs") or {}).get("model"))
            if model is None:
                raise PLCLError(f"the engine wrote no model file in {job.out_dir}")
            job.kept = [model]
            state.set("modelPath", str(model))
            state.set("classes", [c.to_dict() for c in job.classes])
            self._remove_old_plots(keep=job.plot.nodes if job.plot is not None else [])
        state.set("lastRun", {"kind": job.kind, "elapsed_s": round(job.elapsed_s, 1), "out": str(job.out_dir),
                              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "warm_start": job.warm_start})

    def _remove_old_plots(self, keep: Sequence[Any]) -> None:
        scene = self.services.scene
        keep_ids = {n.GetID() for n in keep}
        stale = []
        for node_class in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode"):
            for index in range(scene.GetNumberOfNodesByClass(node_class)):
                node = scene.GetNthNodeByClass(index, node_class)
                if node.GetAttribute(OWNER_ATTRIBUTE) in (LOSS_TABLE, LOSS_CHART, LOSS_SERIES) \
                        and node.GetID() not in keep_ids:
                    stale.append(node)
        for node in stale:
            scene_io.remove_node(scene, node)

    def _tidy_after_success(self) -> None:
        """A prediction's folder goes; a training's keeps its model, summary and log. Everything else
        (the checkpoint with pseudo-labels derived from the patients' volumes, the imported
        predictions) is removed from the user's data folder."""
        job = self.job
        if job.kind == PREDICT:
            shutil.rmtree(job.out_dir, ignore_errors=True)
            return
        keep = {p.resolve() for p in [*job.kept, job.out_dir / SUMMARY_FILE, job.log_path]}
        for path in job.out_dir.iterdir():
            if path.resolve() in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()

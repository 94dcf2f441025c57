"""The model file the scene refers to: a copy saved where the user chooses, or a file loaded."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .parameters import ModuleState
from .services import PLCLError


def save_model(state: ModuleState, path: str | os.PathLike[str]) -> str:
    """Copy the current model to ``path`` (and make it the model the scene refers to)."""
    source = state.model_path
    if not source or not Path(source).is_file():
        raise PLCLError("There is no trained model to save yet.")
    target = Path(path)
    if target.suffix != ".pt":
        target = target.with_name(target.name + ".pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() != Path(source).resolve():  # the model file carries its classes: nothing else
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.part")
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    state.set("modelPath", str(target))
    return str(target)


def load_model(state: ModuleState, path: str | os.PathLike[str]) -> str:
    """Use the model file ``path`` for predictions and retraining."""
    model = Path(path)
    if not model.is_file():
        raise PLCLError(f"Model file not found: {model}")
    # Its classes are in the file, read by the engine: a prediction's segments carry their names,
    # colours and terminology; a retrain matches the annotations to them by name.
    state.set("modelPath", str(model.resolve()))
    state.set("classes", [])
    return str(model)

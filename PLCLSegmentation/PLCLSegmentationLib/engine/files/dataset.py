"""Dataset folders: ``dataset.json``, ``images/<case>.<ext>``, ``labels/<case>.<ext>`` (labels optional)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".mhd")


@dataclass
class Dataset:
    root: Path
    name: str
    label_names: dict[int, str]
    cases: dict[str, list[str]]

    def _find(self, folder: str, case: str) -> Path | None:
        if not case or case in (".", "..") or "/" in case or "\\" in case or os.path.isabs(case):
            raise InputError(str(self.root / folder), f"case {case!r} is not a case name of this dataset (a file "
                                                      "name in images/ and labels/, without folders)")
        for suffix in _SUFFIXES:
            path = self.root / folder / f"{case}{suffix}"
            if path.is_file():
                return path
        return None

    def image(self, case: str) -> str:
        path = self._find("images", case)
        if path is None:
            raise InputError(str(self.root / "images" / case), "no image file for this case (tried "
                             f"{', '.join(_SUFFIXES)})")
        return str(path)

    def label(self, case: str) -> str | None:
        path = self._find("labels", case)
        return None if path is None else str(path)

    def labeled_pair(self, case: str) -> tuple[str, str]:
        image = self.image(case)
        label = self.label(case)
        if label is None:
            raise InputError(str(self.root / "labels" / case), "case has no label file, so it cannot be annotated")
        return image, label

    def split(self, split: str) -> list[str]:
        if split not in self.cases:
            raise InputError(str(self.root / "dataset.json"), f"has no split '{split}' (splits: "
                             f"{', '.join(self.cases) or 'none'})")
        return list(self.cases[split])

    def split_images(self, split: str) -> list[str]:
        return [self.image(c) for c in self.split(split)]


def read_dataset(path: str | Path) -> Dataset:
    root = Path(path)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(str(meta_path), "not found; a dataset folder holds dataset.json, images/ and labels/")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(str(meta_path), f"is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise InputError(str(meta_path), f"must hold a JSON object with 'labels' and 'cases', not a "
                                         f"{type(meta).__name__}")
    labels = meta.get("labels", {})
    try:
        if not isinstance(labels, dict):
            raise ValueError
        names = {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        raise InputError(str(meta_path), "'labels' must map integer label values to names, e.g. "
                                         "{\"0\": \"background\", \"1\": \"left ventricle\"}") from None
    cases = meta.get("cases", {})
    if not isinstance(cases, dict) or not all(isinstance(v, list) for v in cases.values()):
        raise InputError(str(meta_path), "'cases' must map split names to lists of case names")
    for split, names_of_split in cases.items():
        for case in names_of_split:
            _check_case_name(meta_path, split, case)
    return Dataset(root, str(meta.get("name", root.name)), names, {k: [str(c) for c in v] for k, v in cases.items()})


def _check_case_name(meta_path: Path, split: str, case: object) -> None:
    """A case is a file name in images/ and labels/: never a path that reaches outside the dataset."""
    if not isinstance(case, (str, int)) or isinstance(case, bool):
        raise InputError(str(meta_path), f"split '{split}' lists {case!r}; case names are strings")
    text = str(case)
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.path.isabs(text) or "\0" in text:
        raise InputError(str(meta_path), f"split '{split}' lists case {text!r}; a case name is a file name in "
                                         "images/ and labels/, without folders (it may not reach outside the "
                                         "dataset)")

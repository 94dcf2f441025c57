"""Dataset folders: ``dataset.json``, ``images/<case>.<ext>``, ``labels/<case>.<ext>`` (labels optional)."""

from __future__ import annotations

import json
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
    try:
        names = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
    except ValueError:
        raise InputError(str(meta_path), "'labels' must map integer label values to names") from None
    cases = meta.get("cases", {})
    if not isinstance(cases, dict) or not all(isinstance(v, list) for v in cases.values()):
        raise InputError(str(meta_path), "'cases' must map split names to lists of case names")
    return Dataset(root, str(meta.get("name", root.name)), names, {k: [str(c) for c in v] for k, v in cases.items()})

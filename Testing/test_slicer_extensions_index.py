"""The checks the Extensions Index's CI (Slicer/ExtensionsIndex, scripts/check_description_files.py) runs
on a submission, applied to this repository as a fresh clone has it, without the network: what the CI
fetches (the icon, the screenshots) must be images of this repository at the submitted revision, and
what it asks of GitHub (the repository's topic) must be in the publishing steps."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "PLCLSegmentation.json"
EXTENSION = ENTRY.stem  # the Index names an extension after its catalog entry's file
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")  # the CI accepts png, jpeg, gif
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")


def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def repository() -> tuple[str, str]:
    """(owner, name) of the repository the entry submits."""
    parts = urlsplit(entry()["scm_url"].strip().rstrip("/")).path.strip("/").split("/")
    return parts[0], Path(parts[-1]).stem if parts[-1].endswith(".git") else parts[-1]


def cmake_literal(variable: str) -> str | None:
    """A variable of the top-level CMakeLists.txt as the CI reads it: a literal double-quoted string in a
    set() (the CI does not run CMake: ``${...}`` stays as it is)."""
    found = re.findall(rf'set\s*\({variable}\s*"([^"]+)"\s*\)', (ROOT / "CMakeLists.txt").read_text(), re.IGNORECASE)
    return found[0].strip() if found else None


def repository_file(url: str) -> Path:
    """The file of this repository that ``url`` serves at the submitted revision (a raw GitHub URL)."""
    owner, name = repository()
    revision = entry()["scm_revision"]
    for prefix in (f"https://raw.githubusercontent.com/{owner}/{name}/{revision}/",
                   f"https://github.com/{owner}/{name}/raw/{revision}/"):
        if url.startswith(prefix):
            return ROOT / url[len(prefix):]
    raise AssertionError(f"{url} is not a file of {owner}/{name} at {revision}")


def assert_image(url: str) -> None:
    assert url.startswith("https://"), f"{url}: the CI downloads it, a literal https URL"
    path = repository_file(url)
    assert path.is_file(), f"{url}: {path.relative_to(ROOT)} is not in the repository"
    assert path.read_bytes().startswith(IMAGE_MAGIC), f"{path.relative_to(ROOT)} is not a PNG, JPEG or GIF"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path.relative_to(ROOT))], cwd=ROOT,
                             capture_output=True)
    assert tracked.returncode == 0, f"{path.relative_to(ROOT)} is not committed: a clone would not have it"


def test_the_catalog_entry_is_lf_only_json_with_a_schema():
    raw = ENTRY.read_bytes()
    assert b"\r" not in raw, "the CI wants LF-only line endings"
    assert entry().get("$schema")
    assert urlsplit(entry()["scm_url"]).scheme in ("https", "git")
    assert entry()["category"] == "Segmentation"  # one of the Index's accepted categories


def test_extension_and_repository_names():
    assert not EXTENSION.lower().startswith("slicer"), "the extension's name must not start with Slicer"
    owner, name = repository()
    assert name.startswith(REPOSITORY_PREFIXES), f"the repository's name must start with Slicer, not {name!r}"
    assert name == "SlicerPLCLSegmentation"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    project = re.findall(r'project\s*\(\s*([^\s\)\n\r]+)', cmake, re.IGNORECASE)
    assert project and project[0].strip("\"'") == EXTENSION, "project() must be the extension's name"


def test_icon_and_screenshots_are_literal_urls_of_images_in_the_repository():
    icon = cmake_literal("EXTENSION_ICONURL")
    assert icon, "EXTENSION_ICONURL must be a literal URL"
    assert_image(icon)
    screenshots = (cmake_literal("EXTENSION_SCREENSHOTURLS") or "").split()
    assert screenshots, "EXTENSION_SCREENSHOTURLS must hold at least one literal URL"
    for url in screenshots:
        assert_image(url)
    # The legacy description says the same.
    s4ext = dict(line.split(" ", 1) for line in (ROOT / "PLCLSegmentation.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#") and " " in line)
    assert s4ext["iconurl"] == icon and s4ext["screenshoturls"].split() == screenshots
    assert s4ext["scmurl"] == entry()["scm_url"]


def test_a_licence_file_at_the_root_and_a_small_repository():
    found = [name for name in LICENSE_NAMES if (ROOT / name).is_file()]
    assert found, "the CI wants a licence file at the repository's root"
    assert "BSD 3-Clause" in (ROOT / found[0]).read_text()  # pyproject.toml's licence
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    size = sum((ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (ROOT / f).is_file())
    assert size < 100 * 1024 * 1024, f"the CI refuses repositories over 100 MB ({size / 2**20:.0f} MB)"


def test_the_publishing_steps_name_what_the_ci_asks_of_github():
    text = (ROOT / "docs" / "slicer-module.md").read_text()
    steps = text[text.index("## Publishing"):]
    for needed in ("SlicerPLCLSegmentation", "3d-slicer-extension", "LICENSE", "EXTENSION_ICONURL",
                   "EXTENSION_SCREENSHOTURLS", "OWNER"):
        assert needed in steps, needed

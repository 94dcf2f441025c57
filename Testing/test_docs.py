"""The documents hold together: the protocol as written is the protocol in the code, links lead
somewhere, and the README stays a short document for users. Fast: no torch, no data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from PLCLSegmentationLib.engine import protocol

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PROTOCOL_DOC = DOCS / "protocol.md"
README_MAX_LINES = 250

CODE_NAME = re.compile(r"`([^`]+)`")
# [text](target) and ![alt](target); the target ends at the first space (an optional "title") or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def section(text: str, heading: str) -> str:
    """The text under a markdown heading (any level), up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        match = re.match(r"(#+)\s+(.*?)\s*$", line)
        if match and match.group(2) == heading:
            level = len(match.group(1))
            body = []
            for following in lines[start + 1:]:
                deeper = re.match(r"(#+)\s", following)
                if deeper and len(deeper.group(1)) <= level:
                    break
                body.append(following)
            return "\n".join(body)
    raise AssertionError(f"{PROTOCOL_DOC.name}: no heading {heading!r}")


def first_table(text: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first table under ``heading``; tables may be indented in a list."""
    rows: list[list[str]] = []
    for line in section(text, heading).splitlines():
        line = line.strip()
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"{PROTOCOL_DOC.name}: no table under {heading!r}"
    header, rule, *body = rows
    assert all(set(cell) <= set("-: ") for cell in rule), f"{PROTOCOL_DOC.name}: malformed table under {heading!r}"
    return body


def code_names(cell: str) -> list[str]:
    return CODE_NAME.findall(cell)


def one_name(cell: str, heading: str) -> str:
    names = code_names(cell)
    assert len(names) == 1, f"{PROTOCOL_DOC.name}, {heading!r}: a row's first cell must hold one `name`: {cell!r}"
    return names[0]


def assert_same(documented: set[str], in_code: set[str], what: str) -> None:
    missing = sorted(in_code - documented)
    unknown = sorted(documented - in_code)
    assert not missing and not unknown, (
        f"{what}: in protocol.py but not in docs/protocol.md: {missing}; in docs/protocol.md but not in protocol.py: "
        f"{unknown}")


@pytest.fixture(scope="module")
def protocol_doc() -> str:
    return PROTOCOL_DOC.read_text(encoding="utf-8")


def test_the_exit_codes_are_documented_as_the_code_defines_them(protocol_doc):
    rows = first_table(protocol_doc, "Exit codes")
    documented = {one_name(row[1], "Exit codes"): row[0] for row in rows}
    in_code = {name: str(value) for name, value in vars(protocol).items() if name.startswith("EXIT_")}
    assert_same(set(documented), set(in_code), "exit codes")
    assert documented == in_code, f"exit codes differ: documented {documented}, in protocol.py {in_code}"


def test_the_events_and_their_keys_are_documented_as_the_code_defines_them(protocol_doc):
    rows = first_table(protocol_doc, "Events")
    documented = {one_name(row[0], "Events"): code_names(row[1]) for row in rows}
    assert len(documented) == len(rows), "an event is documented twice"
    assert_same(set(documented), set(protocol.EVENT_KEYS), "events")
    for event, keys in protocol.EVENT_KEYS.items():
        assert_same(set(documented[event]), set(keys), f"keys of the {event!r} event")
    assert set(protocol.EVENTS) == set(protocol.EVENT_KEYS)


@pytest.mark.parametrize("heading, names", [
    ("Stages", protocol.STAGES),
    ("Output event kinds", protocol.OUTPUT_EVENT_KINDS),
])
def test_the_stages_and_output_event_kinds_are_documented_as_the_code_defines_them(protocol_doc, heading, names):
    documented = [one_name(row[0], heading) for row in first_table(protocol_doc, heading)]
    assert len(documented) == len(set(documented)), f"{heading}: a name is documented twice"
    assert_same(set(documented), set(names), heading)


def test_the_summary_outputs_are_documented_as_the_code_defines_them(protocol_doc):
    rows = first_table(protocol_doc, "summary.json")
    documented = {one_name(row[0], "summary.json"): one_name(row[1], "summary.json") for row in rows}
    assert_same(set(documented), set(protocol.OUTPUT_KINDS), "summary.json outputs")
    assert documented == protocol.OUTPUT_FILES, "summary.json outputs name other files than protocol.py"


def test_the_run_folder_is_documented_as_the_code_defines_it(protocol_doc):
    documented = {one_name(row[0], "The run folder") for row in first_table(protocol_doc, "The run folder")}
    in_code = set(protocol.RUN_FILES) | {f"{folder}/" for folder in protocol.RUN_FOLDERS}
    in_code |= {protocol.LOCK_FILE, protocol.STOP_FILE}
    assert_same(documented, in_code, "the run folder")


def test_the_stop_file_and_summary_names_in_the_doc_are_the_code_names(protocol_doc):
    assert f"`OUT/{protocol.STOP_FILE}`" in protocol_doc and f"`{protocol.SUMMARY_FILE}`" in protocol_doc


def documents() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def anchors(document: Path) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*?)\s*$", document.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_and_image_points_to_an_existing_file():
    assert len(documents()) > 5, "docs/ is missing"
    broken = []
    for document in documents():
        text = document.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands are not links
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (document.parent / path) if path else document
            if not linked.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "links to missing files or headings:\n" + "\n".join(broken)


def test_the_readme_is_short_and_shows_the_two_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}: details go to docs/)"
    assert "make demo" in text and "make test" in text


def test_the_link_pattern_finds_links_and_images():
    """The link pattern finds links and images, with and without titles (the check is not vacuous)."""
    sample = '[a](docs/cli.md) ![b](Resources/x.png "title") [c](https://example.org) [d](#here)'
    assert LINK.findall(sample) == ["docs/cli.md", "Resources/x.png", "https://example.org", "#here"]

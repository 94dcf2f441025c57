"""``plcl cohort collect``'s table and QC page from a cohort folder of hand-written records (no engine
run): the cases to look at first, lowest estimated Dice then least certain, and panels named in words."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from PLCLSegmentationLib.engine.cohort.collect import collect
from PLCLSegmentationLib.engine.cohort.qc_plot import look_first, look_first_text, panels, qc_page
from PLCLSegmentationLib.engine.protocol import COHORT_FILE, RESULTS_SUFFIX, SHARDS_FOLDER

CLASSES = ["right ventricle", "left ventricle"]


def estimate(rv: float | None, lv: float | None) -> dict[str, float | None]:
    return {"right ventricle": rv, "left ventricle": lv}


def cohort_folder(out: Path, cases: list[tuple[str, float, dict | None]], huge: str = "") -> Path:
    """A cohort folder whose one shard recorded ``cases`` (name, uncertainty score, estimates or None for
    an engine before them); volumes spread evenly, ``huge``'s left ventricle four times the others'."""
    records = []
    for i, (name, uncertainty, estimates) in enumerate(cases):
        found = {"name": name, "input": f"/cohort/{name}.nii.gz", "kind": "volume", "size": [8, 8, 4],
                 "spacing_mm": [1.5, 1.5, 8], "uncertainty_score": uncertainty, "files": [],
                 "ml": {"right ventricle": 80.0 + 0.5 * i,
                        "left ventricle": 400.0 if name == huge else 100.0 + 0.5 * i}}
        if estimates is not None:
            found["dice_est"] = estimates
        records.append(found)
    (out / SHARDS_FOLDER).mkdir(parents=True)
    (out / COHORT_FILE).write_text(json.dumps({"classes": [{"name": c, "value": i + 1} for i, c in enumerate(CLASSES)],
                                               "shards": 1}))
    (out / SHARDS_FOLDER / f"shard-0000-of-0001{RESULTS_SUFFIX}").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    return out


def usual(i: int) -> tuple[str, float, dict]:
    return f"usual_{i}", 0.1 + 0.01 * i, estimate(0.9 + 0.005 * i, 0.93 + 0.004 * i)


def test_the_cases_to_look_at_first_are_those_of_lowest_estimated_dice_then_least_certain(tmp_path):
    cases = [usual(i) for i in range(8)] + [
        ("most_uncertain_but_good", 0.9, estimate(0.999, 0.98)),
        ("tied_certain", 0.2, estimate(0.8, 0.95)),
        ("tied_uncertain", 0.6, estimate(0.95, 0.8)),
        ("bad_left", 0.1, estimate(0.93, 0.4)),
        ("nothing_found", 0.05, estimate(None, None)),
        ("huge_left", 0.15, estimate(0.93, 0.95))]
    collected = collect(cohort_folder(tmp_path / "out", cases, huge="huge_left"))
    order = look_first(collected, count=5)
    assert [c[0] for c in order] == ["nothing_found", "bad_left", "tied_uncertain", "tied_certain", "usual_0"]
    _, lowest, structure, uncertainty, why = order[1]
    assert (lowest, structure, uncertainty) == (0.4, "left ventricle", 0.1)
    assert why == ["left ventricle estimated Dice low (0.4)"]  # in words, as on the page
    text = look_first_text(collected, width=120, count=5).splitlines()
    assert text[3].split()[:4] == ["bad_left", "0.400", "left", "ventricle"]
    assert text[-1].startswith("and 2 other flagged inputs")  # huge_left and the least certain, past the first 5
    with open(tmp_path / "out" / "cohort.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["huge_left"]["review"] == "left ventricle_ml high (400)"
    review = rows["most_uncertain_but_good"]["review"]
    assert review.startswith("least certain (0.900)") and "dice_est" not in review  # a high estimate is no reason


def test_without_estimates_the_least_certain_come_first(tmp_path):
    cases = [(f"v{i}", u, None) for i, u in enumerate([0.3, 0.7, 0.1, 0.5])]
    collected = collect(cohort_folder(tmp_path / "out", cases))
    assert [c[0] for c in look_first(collected)] == ["v1", "v3", "v0", "v2"]
    assert [[title for _, title, _ in row] for row in panels(collected)] == [
        ["right ventricle: volume"], ["left ventricle: volume"]]


def test_the_page_shows_volumes_in_ml_beside_the_estimated_dice_of_each_structure(tmp_path):
    pytest.importorskip("matplotlib")
    collected = collect(cohort_folder(tmp_path / "out", [usual(i) for i in range(6)]))
    rows = panels(collected)
    assert [[(title, unit) for _, title, unit in row] for row in rows] == [
        [("right ventricle: volume", "ml"), ("right ventricle: estimated Dice", "estimated Dice")],
        [("left ventricle: volume", "ml"), ("left ventricle: estimated Dice", "estimated Dice")]]
    page = qc_page(collected, tmp_path / "out" / "cohort_qc.png", "out")
    assert page is not None and page.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = {"cohort.json", "shards", "cohort.csv", "cohort_qc.png"} | ({"cohort.parquet"} if collected["parquet"]
                                                                          else set())
    assert {p.name for p in page.parent.iterdir()} == written  # no temporary file left


def test_the_parquet_table_holds_what_the_csv_holds(tmp_path):
    """cohort.parquet (written where pyarrow is: the [cohort] extra) is the CSV's table, typed."""
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (the [cohort] extra)")
    cases = [usual(i) for i in range(6)] + [("nothing_found", 0.05, estimate(None, None))]
    collected = collect(cohort_folder(tmp_path / "out", cases, huge="usual_3"))
    assert collected["parquet"] == tmp_path / "out" / "cohort.parquet"
    with open(collected["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    table = pyarrow_parquet.read_table(collected["parquet"]).to_pylist()
    assert [list(r) for r in table] == [list(r) for r in rows] and len(table) == 7
    for read, written in zip(table, rows):
        for column, value in written.items():  # typed: numbers as numbers, an empty cell as null
            if value == "":
                assert read[column] in (None, ""), column
            elif isinstance(read[column], (int, float)):
                assert read[column] == pytest.approx(float(value)), column
            else:
                assert read[column] == value, column
        assert all(isinstance(read[c], float) or read[c] is None for c in collected["numeric"])

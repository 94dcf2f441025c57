"""Pooling plcl bench folders: seeds and variants run apart make one table, or a clear refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from PLCLSegmentationLib.engine.lab.bench_pool import PoolError, main, pool_results

CASES = {"0": {"labeled": ["p1_a", "p1_b"], "unlabeled": ["p2_a"], "evaluation": ["v_a"]},
         "1": {"labeled": ["p2_a", "p2_b"], "unlabeled": ["p1_a"], "evaluation": ["v_a"]}}


def _run(method: str, seed: int, dice: float) -> dict:
    curve = [{"train_seconds": 30.0, "mean_dice": dice / 2}, {"train_seconds": 60.0, "mean_dice": dice}]
    return {"method": method, "seed": seed, "mean_dice": dice, "mean_hd95_mm": 5.0, "curve": curve,
            "dice": {"rv": dice - 0.1, "lv": dice + 0.1}, "train_seconds": 60.0, "iterations": 100,
            "slices_per_s": 10.0, "predict_seconds_per_volume": 0.1, "peak_rss_mb_train": 900.0,
            "peak_rss_mb_predict": 500.0}


def _folder(root: Path, name: str, runs: list[dict], iterations: int = 100, cases: dict | None = None) -> Path:
    labels = {"plcl": ("the method", None), "plcl+ema": ("the method + ema (teacher_ema=0.99)", "plcl")}
    methods = {r["method"]: {"label": labels[r["method"]][0], "variant_of": labels[r["method"]][1]} for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    results = {"version": "0", "date": "today", "machine": f"machine {name}", "command": "plcl bench ...",
               "dataset": "toy", "data": "/data",
               "protocol": {"eval_split": "val", "budget_minutes": None, "budget_iterations": iterations,
                            "preset": "standard", "seeds": seeds, "checkpoint": "the last model",
                            "cases": {str(s): (cases or CASES)[str(s)] for s in seeds}, "n_labeled_patients": 1,
                            "n_unlabeled": None, "labeled_slices": None, "as_whole_volumes": False},
               "methods": methods, "runs": runs, "throughput": None, "propagation": None}
    folder = root / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_seeds_and_variants_run_apart_pool_into_one_table_with_the_ablation(tmp_path):
    a = _folder(tmp_path, "s0_method", [_run("plcl", 0, 0.70)])
    b = _folder(tmp_path, "s0_variant", [_run("plcl+ema", 0, 0.75)])
    c = _folder(tmp_path, "s1_both", [_run("plcl", 1, 0.80), _run("plcl+ema", 1, 0.78)])
    assert main([str(tmp_path / "pooled"), str(a), str(b), str(c)]) == 0
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert pooled["protocol"]["seeds"] == [0, 1] and len(pooled["runs"]) == 4
    assert pooled["methods"]["plcl"]["mean_dice"]["mean"] == pytest.approx(0.75)
    assert pooled["methods"]["plcl+ema"]["dice"]["lv"]["mean"] == pytest.approx(0.865)
    table = (tmp_path / "pooled" / "results.md").read_text()
    assert "seed 0: +0.050, seed 1: -0.020" in table and "| 1 of 2 seeds |" in table
    assert "Pooled from:" in table and "machine s0_method; machine s0_variant" in pooled["machine"]
    assert (tmp_path / "pooled" / "dice_vs_time.png").stat().st_size > 1000  # every run's curve


@pytest.mark.parametrize("second, message", [
    (lambda root: _folder(root, "other_budget", [_run("plcl", 1, 0.8)], iterations=200),
     "protocol budget_iterations 200, not 100"),
    (lambda root: _folder(root, "again", [_run("plcl", 0, 0.71)]), "plcl seed 0 also ran in"),
    (lambda root: _folder(root, "other_cases", [_run("plcl+ema", 0, 0.7)], cases={"0": CASES["1"]}),
     "seed 0 drew other cases"),
    (lambda root: root / "missing", "results.json: not found"),
])
def test_folders_of_other_protocols_or_a_run_twice_are_refused_naming_the_file(tmp_path, second, message):
    first = _folder(tmp_path, "first", [_run("plcl", 0, 0.7)])
    other = second(tmp_path)
    with pytest.raises(PoolError, match=message) as error:
        pool_results([first, other])
    assert str(other / "results.json") in str(error.value)
    assert main([str(tmp_path / "pooled"), str(first), str(other)]) == 1
    assert not (tmp_path / "pooled").exists()


def test_the_output_folder_may_not_be_one_of_the_pooled_folders(tmp_path):
    first = _folder(tmp_path, "first", [_run("plcl", 0, 0.7)])
    before = (first / "results.json").read_text()
    assert main([str(first), str(first)]) == 2
    assert (first / "results.json").read_text() == before

"""plcl bench runs unchanged on a dataset it was not written for (synthetic, oblique, other names)."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import events, run_plcl

from PLCLSegmentationLib.engine.cli import main
from PLCLSegmentationLib.engine.files.dataset import read_dataset
from PLCLSegmentationLib.engine.lab.bench import add_bench_arguments, choose_cases, patient_of
from PLCLSegmentationLib.engine.lab.bench_report import ablation_lines, per_seed_lines
from PLCLSegmentationLib.engine.lab.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One small synthetic dataset for the refusals, which must fail before they read much of it."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("bench_data") / "data", n_cases=6, seed=3)


def plcl_here(capsys, *argv: str) -> tuple[int, str]:
    """``plcl ARGV`` in this process (a refusal needs no child process): its exit code and output."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_patients_group_the_frames_of_one_patient():
    assert patient_of("patient003_frame01") == patient_of("patient003_frame02") == "patient003"
    assert patient_of("synthetic_001") != patient_of("synthetic_002")
    assert patient_of("case7_ES") == "case7"


@pytest.mark.slow  # an end-to-end run: `make test-fast` leaves it out
def test_bench_on_an_oblique_synthetic_dataset_writes_table_figures_and_results(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_cases=6, seed=3)
    out = tmp_path / "bench"
    result = run_plcl("bench", "--data", str(data), "--out", str(out), "--iterations", "2", "--seeds", "0",
                      "--methods", "supervised,plcl", "--n-unlabeled", "2", "--snapshots", "1",
                      "--throughput-iterations", "1", "--budget", "quick", "--set", "patch_size=32",
                      "--set", "levels=3", "--set", "inference_tile=64", "--propagation-frames", "4", "--device", "cpu",
                      "--variant", "w2s:online_pseudo_labels=true,cutmix_probability=0.5,scale_range=[0.9,1.1]")
    assert result.returncode == 0, result.stderr + result.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"supervised", "plcl", "plcl+w2s"}
    # The variant is the method with its settings on top of the bench's.
    job = json.loads((out / "runs" / "seed0" / "plcl+w2s" / "train" / "job.json").read_text())["config"]
    assert job["online_pseudo_labels"] is True and job["cutmix_probability"] == 0.5
    assert job["scale_range"] == [0.9, 1.1] and job["patch_size"] == 32
    assert results["methods"]["plcl+w2s"]["variant_of"] == "plcl"
    for method in results["methods"].values():
        assert 0 <= method["mean_dice"]["mean"] <= 1 and method["peak_rss_mb_train"]["mean"] > 0
    for run in results["runs"]:
        assert len(run["curve"]) == 2 and run["predict_seconds_per_volume"] > 0
    variants = results["throughput"]["variants"]
    assert variants[0]["variant"].startswith("eager") and variants[0]["speedup"] == 1.0
    # torch.compile is measured too; where the toolchain cannot compile, the row says why instead.
    assert variants[-1]["compile"] and (variants[-1]["slices_per_s"] or 0) > 0 or variants[-1]["error"]
    assert results["throughput"]["profile"]
    table = (out / "results.md").read_text()
    assert "| supervised only |" in table and "slowest" in table.lower()
    assert "## Ablation" in table and "+ w2s (online_pseudo_labels=true" in table
    assert "| 0 of 1 seeds |" in table or "| 1 of 1 seeds |" in table
    assert "## Per seed" in table and "| plcl+w2s | 0 |" in table
    # plcl predict timed on a generated cine sequence of the target's frame size (reported, not judged here)
    propagation = results["propagation"]
    assert propagation["frames"] == 4 and sorted(propagation["size"]) == [10, 224, 224]
    assert propagation["model"].endswith("model.pt") and propagation["target_seconds"] is None
    assert 0 < propagation["frame_predict_seconds"] <= propagation["pipeline_seconds"] <= propagation["process_seconds"]
    assert "## Propagation" in table
    assert (out / "dice_vs_time.png").stat().st_size > 1000 and (out / "examples.png").stat().st_size > 1000


def test_bench_refuses_too_few_propagation_frames_before_any_work(data, tmp_path, capsys):
    code, output = plcl_here(capsys, "bench", "--data", str(data), "--out", str(tmp_path / "bench"),
                             "--propagation-frames", "2")
    assert code == 2 and "--propagation-frames 2" in output
    assert not (tmp_path / "bench").exists()


def test_bench_refuses_an_unreadable_propagation_model_before_any_work(data, tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a model")
    for model in (tmp_path / "missing.pt", tmp_path / "notes.pt"):
        capsys.readouterr()
        code = main(["bench", "--data", str(data), "--out", str(tmp_path / "bench"), "--propagation-model",
                     str(model), "--events", "jsonl"])
        errors = [e for e in events(capsys.readouterr().out) if e["event"] == "error"]
        assert code == 1 and len(errors) == 1 and str(model) in errors[0]["message"]
        assert not (tmp_path / "bench").exists()


def test_the_ablation_table_pairs_each_variant_with_the_method_seed_by_seed():
    def run(method, seed, dice):
        return {"method": method, "seed": seed, "mean_dice": dice}

    results = {"methods": {"plcl": {"label": "the method", "mean_dice": {"mean": 0.8, "std": 0.1}},
                           "plcl+a": {"label": "the method + a (x=1)", "variant_of": "plcl",
                                      "mean_dice": {"mean": 0.78, "std": 0.1}}},
               "runs": [run("plcl", 0, 0.70), run("plcl", 1, 0.90), run("plcl", 2, 0.80),
                        run("plcl+a", 0, 0.74), run("plcl+a", 1, 0.82)]}  # seed 2 of the variant missing
    lines = ablation_lines(results)
    row = next(line for line in lines if line.startswith("| the method + a"))
    assert "| -0.020 |" in row and "seed 0: +0.040, seed 1: -0.080" in row and "| 1 of 2 seeds |" in row
    assert ablation_lines({"methods": {"plcl": results["methods"]["plcl"]}, "runs": []}) == []


def test_the_per_seed_table_names_each_seeds_patient_and_the_best_point_of_its_curve():
    def run(method, seed, dice, curve):
        return {"method": method, "seed": seed, "mean_dice": dice, "dice": {"RV": dice - 0.1, "LV": dice + 0.1},
                "mean_hd95_mm": 9.87, "train_seconds": 600.0, "iterations": 1000,
                "curve": [{"train_seconds": t, "mean_dice": d} for t, d in curve]}

    # Seed keys as results.json holds them (strings), as bench_pool reads them back.
    results = {"protocol": {"cases": {"0": {"labeled": ["p7_f1", "p7_f2"]}, "1": {"labeled": ["p2_f1"]}}},
               "methods": {"supervised": {}, "plcl": {}},
               "runs": [run("plcl", 1, 0.8, [(120, 0.83), (600, 0.8)]), run("plcl", 0, 0.7, [(600, 0.7)]),
                        run("supervised", 0, 0.6, []), {"method": "plcl", "seed": 2, "mean_dice": None}]}
    lines = per_seed_lines(results)
    rows = [line for line in lines if line.startswith("| supervised") or line.startswith("| plcl")]
    assert rows == [
        "| supervised | 0 | p7_f1, p7_f2 | 0.600 | 0.500 | 0.700 | 9.9 | 600 | 1000 | n/a |",
        "| plcl | 0 | p7_f1, p7_f2 | 0.700 | 0.600 | 0.800 | 9.9 | 600 | 1000 | 0.700 at 10.0 min |",
        "| plcl | 1 | p2_f1 | 0.800 | 0.700 | 0.900 | 9.9 | 600 | 1000 | 0.830 at 2.0 min |"]
    assert per_seed_lines({**results, "runs": []}) == []


@pytest.mark.parametrize("variant, message", [
    ("noname", "expected NAME:KEY=VALUE"), ("bad name:teacher_ema=0.9", "expected NAME:KEY=VALUE"),
    ("a:no_such_setting=1", "KEY one of"), ("a:teacher_ema=2", "teacher_ema=2: must be from 0"),
    ("a:online_pseudo_labels=1", "online_pseudo_labels=1: expected true or false"),
])
def test_bench_refuses_a_bad_variant_before_any_work(data, tmp_path, capsys, variant, message):
    code, output = plcl_here(capsys, "bench", "--data", str(data), "--out", str(tmp_path / "bench"),
                             "--variant", variant)
    assert code == 2 and message in output
    assert not (tmp_path / "bench").exists()


def test_bench_refuses_two_variants_of_one_name(data, tmp_path, capsys):
    code, output = plcl_here(capsys, "bench", "--data", str(data), "--out", str(tmp_path / "bench"),
                             "--variant", "a:teacher_ema=0.9", "--variant", "a:teacher_ema=0.99")
    assert code == 2 and "given twice" in output


@pytest.mark.parametrize("options, message", [
    (["--n-unlabeled", "-1"], "--n-unlabeled -1: must be 0 or more"),
    (["--labeled-slices", "0"], "--labeled-slices must be at least 1"),
    (["--n-labeled-patients", "9"], "only 4 labelled patients"),
])
def test_bench_refuses_an_impossible_protocol_before_any_work(data, tmp_path, capsys, options, message):
    code, output = plcl_here(capsys, "bench", "--data", str(data), "--out", str(tmp_path / "bench"), *options)
    assert code == 2 and message in output
    assert not (tmp_path / "bench").exists()


def test_the_protocol_offers_every_other_case_of_the_split_unless_told_how_many(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_cases=6, seed=3)
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    dataset = read_dataset(data)
    every = choose_cases(dataset, parser.parse_args(["--data", str(data), "--out", "x"]), seed=0)
    rest = [c for c in dataset.split("train") if c not in every.labeled]
    assert every.unlabeled == sorted(rest) and len(rest) >= 2
    two = choose_cases(dataset, parser.parse_args(["--data", str(data), "--out", "x", "--n-unlabeled", "2"]), 0)
    assert len(two.unlabeled) == 2 and set(two.unlabeled) <= set(rest)

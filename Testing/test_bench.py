"""plcl bench runs unchanged on a dataset it was not written for (synthetic, oblique, other names)."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import events, run_plcl

from PLCLSegmentationLib.engine.cli import main
from PLCLSegmentationLib.engine.errors import ConfigError
from PLCLSegmentationLib.engine.files.dataset import read_dataset
from PLCLSegmentationLib.engine.lab.bench import (
    METHODS,
    add_bench_arguments,
    choose_cases,
    method_specs,
    parse_variants,
    patient_of,
)
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
                      "--throughput-iterations", "1", "--no-throughput-compile", "--budget", "quick",
                      "--set", "patch_size=32",
                      "--set", "levels=3", "--set", "inference_tile=64", "--propagation-frames", "4",
                      "--device", "auto", "--events", "jsonl",
                      "--variant", "w2s:online_pseudo_labels=true,cutmix_probability=0.5,scale_range=[0.9,1.1]")
    assert result.returncode == 0, result.stderr + result.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"supervised", "plcl", "plcl+w2s"}
    stream = events(result.stdout)  # the bench's own events: the device as resolved, the run's seconds
    start = next(e for e in stream if e["event"] == "start")
    assert start["command"] == "bench" and start["device"] in ("cpu", "cuda", "mps")
    assert stream[-1]["event"] == "done" and stream[-1]["elapsed_s"] > 0
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
    # --no-throughput-compile leaves torch.compile's row out (its compilation alone is half a minute here).
    assert len(variants) > 2 and not any(v.get("compile") for v in variants)
    assert results["throughput"]["profile"]
    assert results["throughput"]["patch_size"] == 32  # the bench's --set reaches the comparison too
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


# --- named protocols (issue 29) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cine_like(tmp_path_factory):
    """A fabricated two-frame dataset from SYNTHETIC phantoms: patients p1-p3 with frames _frame01 and
    _frame02 in train, p4 in val, marked by dataset.json; and a marker-free copy of the same files."""
    source = make_synthetic_dataset(tmp_path_factory.mktemp("cine_like") / "source", n_cases=8, seed=5)
    phantoms = read_dataset(source)
    cases = phantoms.split("train") + phantoms.split("val")
    root = tmp_path_factory.mktemp("cine_like") / "data"
    names = [f"p{i // 2 + 1}_frame0{i % 2 + 1}" for i in range(len(cases))]
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
        for case, name in zip(cases, names):
            (root / folder / f"{name}.nii.gz").symlink_to(source / folder / f"{case}.nii.gz")
    meta = json.loads((source / "dataset.json").read_text())
    meta.update(cases={"train": names[:6], "val": names[6:]}, end_diastole="_frame01")
    (root / "dataset.json").write_text(json.dumps(meta))
    unmarked = tmp_path_factory.mktemp("unmarked")
    for folder in ("images", "labels"):
        (unmarked / folder).symlink_to(root / folder)
    meta.pop("end_diastole")
    (unmarked / "dataset.json").write_text(json.dumps(meta))
    return root, unmarked


def bench_args(data, *options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(["--data", str(data), "--out", "x", *options])


def test_one_volume_annotates_the_end_diastolic_frame_of_the_seeds_patient_only(cine_like):
    data, _ = cine_like
    dataset = read_dataset(data)
    for seed in (0, 1, 2):
        patient = choose_cases(dataset, bench_args(data), seed)
        one = choose_cases(dataset, bench_args(data, "--protocol", "one-volume"), seed)
        assert one.labeled == [c for c in patient.labeled if c.endswith("_frame01")] and len(one.labeled) == 1
        assert one.slices is None
        # The rest of the split is unannotated, the patient's end-systolic frame included.
        assert one.unlabeled == sorted(c for c in dataset.split("train") if c not in one.labeled)
    two = choose_cases(dataset, bench_args(data, "--n-labeled-volumes", "2"), 0)
    assert len(two.labeled) == 2 and all(c.endswith("_frame01") for c in two.labeled)
    assert len({patient_of(c) for c in two.labeled}) == 2


def test_one_patient_annotates_both_frames_and_few_slices_three_slices_of_each(cine_like):
    data, _ = cine_like
    dataset = read_dataset(data)
    both = choose_cases(dataset, bench_args(data, "--protocol", "one-patient"), 1)
    assert both == choose_cases(dataset, bench_args(data), 1)  # the bench's default, by name
    assert len(both.labeled) == 2 and len({patient_of(c) for c in both.labeled}) == 1 and both.slices is None
    assert not {patient_of(c) for c in both.unlabeled} & {patient_of(c) for c in both.labeled}
    few = choose_cases(dataset, bench_args(data, "--protocol", "few-slices"), 1)
    assert few.labeled == both.labeled and few.unlabeled == both.unlabeled
    assert set(few.slices) == set(both.labeled) and all(len(s) == 3 for s in few.slices.values())
    assert few.slices == choose_cases(dataset, bench_args(data, "--labeled-slices", "3"), 1).slices


@pytest.mark.parametrize("options, message", [
    (["--protocol", "one-volume", "--labeled-cases", "p1_frame01"], "leave out --labeled-cases"),
    (["--protocol", "one-patient", "--n-labeled-patients", "2"], "leave out --n-labeled-patients 2"),
    (["--protocol", "few-slices", "--labeled-slices", "5"], "3 slices per case; leave out --labeled-slices 5"),
    (["--protocol", "one-volume", "--labeled-slices", "3"], "annotates whole volumes; leave out --labeled-slices 3"),
    (["--protocol", "few-slices", "--as-whole-volumes"], "leave out --as-whole-volumes"),
    (["--protocol", "one-volume", "--n-labeled-volumes", "2"], "give one of them"),
    (["--n-labeled-volumes", "0"], "--n-labeled-volumes 0: must be at least 1"),
])
def test_a_protocol_with_an_option_it_fixes_otherwise_is_one_line_before_any_work(cine_like, tmp_path, capsys,
                                                                                   options, message):
    data, _ = cine_like
    code, output = plcl_here(capsys, "bench", "--data", str(data), "--out", str(tmp_path / "bench"), *options)
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "bench").exists()
    # The same options one by one are still the bench's own (only the combination is refused).
    assert choose_cases(read_dataset(data), bench_args(data, "--protocol", "few-slices", "--labeled-slices", "3"), 0)


def test_an_end_diastolic_protocol_on_a_dataset_without_a_marker_names_dataset_json(cine_like, tmp_path, capsys):
    _, unmarked = cine_like
    code, output = plcl_here(capsys, "bench", "--data", str(unmarked), "--out", str(tmp_path / "bench"),
                             "--protocol", "one-volume")
    assert code == 2 and str(unmarked / "dataset.json") in output and "no end-diastole marker" in output
    assert not (tmp_path / "bench").exists()
    # ACDC is known by its name: its end-diastolic frame is _frame01.
    acdc = tmp_path / "acdc"
    acdc.mkdir()
    for folder in ("images", "labels"):
        (acdc / folder).symlink_to(unmarked / folder)
    meta = json.loads((unmarked / "dataset.json").read_text())
    (acdc / "dataset.json").write_text(json.dumps({**meta, "name": "ACDC (fabricated from SYNTHETIC phantoms)"}))
    one = choose_cases(read_dataset(acdc), bench_args(acdc, "--protocol", "one-volume"), 0)
    assert len(one.labeled) == 1 and one.labeled[0].endswith("_frame01")


def test_a_variant_of_another_method_is_scored_against_that_method():
    specs = method_specs(["plcl_paper"], parse_variants(["plcl_paper+no_cl:contrastive_weight=0", "x:rounds=1"],
                                                         "quick"))
    assert specs["plcl_paper+no_cl"]["variant_of"] == "plcl_paper" and specs["plcl+x"]["variant_of"] == "plcl"
    assert specs["plcl_paper+no_cl"]["set"] == {**METHODS["plcl_paper"]["set"], "contrastive_weight": 0}
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        parse_variants(["magic+a:rounds=1"], "quick")

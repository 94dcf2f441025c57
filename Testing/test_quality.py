"""The review's numbers: uncertainty per slice and structure, the estimated Dice (agreement with mirrored
copies), the end-of-run table, the cohort's estimates, the bench's measures of the estimate and the simulated
review's choice of slices, on known arrays; and a short run that carries them."""

from __future__ import annotations

import numpy as np
import pytest

from PLCLSegmentationLib.engine.cohort.collect import columns, row_of
from PLCLSegmentationLib.engine.lab.bench_quality import (
    pooled_quality,
    quality_lines,
    quality_metrics,
    quality_pairs,
    spearman,
    worst_caught,
)
from PLCLSegmentationLib.engine.method.quality import (
    AGREEMENT_POWER,
    COVERAGE_POWER,
    COVERAGE_TOLERANCE,
    ENTROPY_FLOOR,
    NEIGHBOUR_FLOOR,
    agreement,
    annotated_neighbour_shares,
    annotated_slice_coverage,
    estimated_dice,
    expected_dice,
    neighbour_counts,
    neighbour_overlap,
    slice_coverage,
    slice_uncertainties,
    volume_quality,
)
from PLCLSegmentationLib.engine.run.cohort_prediction import estimates
from PLCLSegmentationLib.engine.run.summary import worst_lines

NAMES, VALUES = ["ring", "disc"], [3, 7]


def test_the_agreement_with_mirrored_copies_is_their_median_dice_per_class():
    labels = np.array([[1, 1, 2, 0]])
    same = labels.copy()
    shifted = np.array([[0, 1, 1, 0]])  # class 1: 1 voxel shared of 2 + 2; class 2 lost
    result = agreement(labels, [same, shifted], 4)
    assert result[1] == pytest.approx((1.0 + 0.5) / 2) and result[2] == pytest.approx((1.0 + 0.0) / 2)
    assert result[3] == 1.0  # in no copy and not predicted: nothing to disagree on
    # Three copies, one failing wholesale: the median keeps the two that agree.
    lost = np.array([[0, 0, 0, 0]])
    assert agreement(labels, [same, same, lost], 4)[1] == pytest.approx(1.0)  # the mean: 0.67
    assert agreement(labels, [same, lost, lost], 4)[1] == pytest.approx(0.0)  # the mean: 0.33
    found = agreement(np.zeros((2, 2), np.uint8), [np.eye(2, dtype=np.uint8)], 2)
    assert found[1] == 0.0  # a copy finds what the prediction does not: no agreement


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """[k, j, i] = [3, 4, 5]: the ring (class 1) on i = 1 and 2, the disc (class 2) on i = 3; a background voxel of
    entropy 0.6 on i = 4; i = 0 holds nothing."""
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[:, :2, 1] = 1
    labels[:, 2:, 2] = 1
    labels[0, 0, 3] = 2
    entropy = np.zeros(labels.shape, np.float32)
    entropy[:, :, 1] = 0.2
    entropy[:, :, 2] = np.where(labels[:, :, 2] == 1, 0.4, 0.05)  # 0.05: background below the floor
    entropy[0, 0, 3] = 0.1
    entropy[1, 1, 4] = 0.6
    return labels, entropy


def test_slices_along_the_slicing_axis_least_certain_first_with_their_structures():
    labels, entropy = _volume()
    slices = slice_uncertainties(labels, entropy, 2, NAMES)
    # Most uncertain voxels first (i = 2 and 1 hold 2.4, the surer i = 1 second); i = 4, the most uncertain on the
    # mean, holds one voxel. i = 0: no foreground, no entropy above the floor.
    assert [s["index"] for s in slices] == [2, 1, 4, 3]
    by_index = {s["index"]: s for s in slices}
    assert by_index[4] == {"index": 4, "uncertainty": pytest.approx(0.6), "uncertain_voxels": pytest.approx(0.6),
                           "structure": None, "structures": {}}
    assert by_index[2]["uncertain_voxels"] == pytest.approx(6 * 0.4)  # about how many voxels are wrong there
    # i = 2: six ring voxels at 0.4; the six background voxels at 0.05 are below the floor and do not count.
    assert by_index[2]["uncertainty"] == pytest.approx(0.4) and by_index[2]["structures"] == {"ring": 0.4}
    assert by_index[1]["structure"] == "ring" and by_index[1]["uncertainty"] == pytest.approx(0.2)
    assert by_index[3]["structures"] == {"disc": pytest.approx(0.1)} and by_index[3]["structure"] == "disc"
    assert ENTROPY_FLOOR == 0.1


def test_a_slice_holding_two_structures_names_the_less_certain_one():
    labels = np.zeros((2, 3, 3), np.uint8)
    labels[1, 0, :] = 1
    labels[1, 2, :] = 2
    entropy = np.where(labels == 2, 0.5, np.where(labels == 1, 0.3, 0.0)).astype(np.float32)
    (only,) = slice_uncertainties(labels, entropy, 0, NAMES)
    assert only["index"] == 1 and only["structure"] == "disc"
    assert only["structures"] == {"ring": pytest.approx(0.3), "disc": pytest.approx(0.5)}
    assert only["uncertainty"] == pytest.approx(0.4)


def test_structures_worst_first_with_those_predicted_nowhere_last():
    labels, entropy = _volume()
    quality = volume_quality(labels, entropy, [1.0, 0.9, 0.95], 2, NAMES, VALUES)
    assert quality.slice_axis == "i" and quality.worst_slice == 2
    ring, disc = quality.structures  # the worst first
    assert ring == {"name": "ring", "value": 3, "estimated_dice": pytest.approx(0.9 ** AGREEMENT_POWER, abs=1e-4),
                    "uncertainty": pytest.approx((6 * 0.2 + 6 * 0.4) / 12, abs=1e-4)}
    assert disc["estimated_dice"] == pytest.approx(0.95 ** AGREEMENT_POWER, abs=1e-4)
    assert disc["uncertainty"] == pytest.approx(0.1)
    # The disc predicted nowhere (what its copies found does not matter): no estimate, uncertainty 1, last.
    nowhere = volume_quality(np.where(labels == 2, 0, labels), entropy, [1.0, 0.8, 0.0], 0, NAMES, VALUES)
    assert [s["name"] for s in nowhere.structures] == ["ring", "disc"]
    assert nowhere.structures[1]["estimated_dice"] is None and nowhere.structures[1]["uncertainty"] == 1.0
    assert nowhere.slice_axis == "k"
    assert nowhere.estimates() == {"ring": pytest.approx(0.8 ** AGREEMENT_POWER, abs=1e-4), "disc": None}
    assert AGREEMENT_POWER == 3  # the power measured in docs/results/2026-12-03-review-estimates.md


def test_the_expected_dice_is_what_the_probabilities_expect_of_the_labels():
    labels = np.array([[1, 1, 0, 0]])  # [S, H]; the probabilities [S, C, H], as the network gives them
    p1 = np.array([[0.9, 0.7, 0.2, 0.0]])
    probabilities = np.stack([1 - p1, p1], axis=1)
    # Class 1: 2 * (0.9 + 0.7) / (2 + 1.8); a certain prediction expects 1.
    assert expected_dice(labels, probabilities)[1] == pytest.approx(3.2 / 3.8)
    certain = np.stack([1.0 - labels, labels.astype(float)], axis=1)
    assert expected_dice(labels, certain) == pytest.approx([1.0, 1.0])
    assert expected_dice(np.zeros((1, 4), np.int64), probabilities)[1] == 0.0  # predicted nowhere


def test_a_confident_prediction_keeps_its_estimate_where_its_mirrored_copies_fail():
    """The estimate is the higher of the agreement and the expected Dice, each to the power."""
    labels, entropy = _volume()
    alone = volume_quality(labels, entropy, [1.0, 0.0, 0.5], 2, NAMES, VALUES)
    both = volume_quality(labels, entropy, [1.0, 0.0, 0.5], 2, NAMES, VALUES, expected=[1.0, 0.9, 0.4])
    assert alone.estimates() == {"ring": 0.0, "disc": pytest.approx(0.5 ** AGREEMENT_POWER, abs=1e-4)}
    assert both.estimates() == {"ring": pytest.approx(0.9 ** AGREEMENT_POWER, abs=1e-4),
                                "disc": pytest.approx(0.5 ** AGREEMENT_POWER, abs=1e-4)}


def test_neighbours_count_each_in_plane_border_both_ways_on_the_annotated_slices_only():
    stack = np.zeros((2, 3, 3), np.uint8)
    stack[0, 1, 1] = 2  # a disc in the middle of slice 0: 4 borders with the background
    stack[0, 1, 2] = 1  # ... one of them now with class 1, which has 2 more with the background
    stack[1] = 255  # slice 1 unannotated (an ignore value): counted nowhere
    counts = neighbour_counts(stack, 3)
    assert counts.tolist() == [[0, 2, 3], [2, 0, 1], [3, 1, 0]]
    shares = annotated_neighbour_shares([(stack, np.array([True, False]))], 3)
    assert shares[2] == pytest.approx((0.75, 0.25, 0.0)) and shares[1] == pytest.approx((2 / 3, 0.0, 1 / 3), abs=1e-4)
    stack[1] = 1  # a slice of class 1 alone, counted only where the mask takes it
    assert annotated_neighbour_shares([(stack, np.array([True, False]))], 3) == shares


def test_a_structure_bordering_none_of_its_annotated_neighbours_is_estimated_in_the_wrong_place():
    """In the annotations the cavity (class 2) lies inside the ring (class 1); predicted alone on the background
    its estimate falls to the share it keeps, however much the mirrored copies agree."""
    annotated = np.zeros((1, 7, 7), np.uint8)
    annotated[0, 1:6, 1:6] = 1
    annotated[0, 2:5, 2:5] = 2
    reference = np.array(annotated_neighbour_shares([(annotated, None)], 3))
    assert reference[2].tolist() == [0.0, 1.0, 0.0]
    astray = np.zeros((1, 7, 7), np.uint8)
    astray[0, 0:3, 0:3] = 1
    astray[0, 4:6, 4:6] = 2
    overlap = neighbour_overlap(neighbour_counts(astray, 3), reference)
    assert overlap[2] == 0.0 and overlap[1] == pytest.approx(1.0 - reference[1][2])
    assert estimated_dice(1.0, 0.95, overlap[2]) == 0.0
    assert estimated_dice(0.9, None, NEIGHBOUR_FLOOR) == pytest.approx(0.9 ** AGREEMENT_POWER, abs=1e-4)
    assert estimated_dice(0.9, None, NEIGHBOUR_FLOOR / 2) == pytest.approx(0.9 ** AGREEMENT_POWER / 20, abs=1e-4)
    in_place = neighbour_overlap(neighbour_counts(annotated, 3), reference)
    assert in_place == pytest.approx([1.0, 1.0, 1.0])
    quality = volume_quality(astray, np.zeros(astray.shape, np.float32), [1.0, 0.9, 1.0], 0, NAMES, VALUES,
                             overlaps=overlap)
    assert quality.estimates() == {"ring": pytest.approx(0.9 ** AGREEMENT_POWER, abs=1e-4), "disc": 0.0}
    assert neighbour_overlap(neighbour_counts(np.zeros((1, 3, 3), np.uint8), 3), reference).tolist() == [1, 1, 1]


def test_a_structure_left_out_of_many_of_the_heart_s_slices_is_estimated_lower():
    """In the annotated whole volume the ring (class 1) is on all 4 of the heart's slices and the disc (class 2) on
    2; a prediction with the disc on 1 of 4 has half its coverage and its estimate scaled by the shortfall (below
    the tolerance), and the ring, on 3 of 4 (0.75, under 0.9 of its 1.0), mildly."""
    annotated = np.zeros((6, 5, 5), np.uint8)
    annotated[1:5, 1:4, 1:4] = 1
    annotated[2:4, 2, 2] = 2
    annotated_partly = np.full((6, 5, 5), 255, np.uint8)
    annotated_partly[2] = annotated[2]
    # Volumes annotated on a few slices only say nothing of a structure's extent; whole ones, their mean.
    assert annotated_slice_coverage([(annotated_partly, np.arange(6) == 2)], 3) is None
    one_slice_heart = np.where(annotated_partly == 255, 0, annotated_partly)  # both structures on its one slice
    assert annotated_slice_coverage([(annotated, None), (one_slice_heart, None)], 3) == pytest.approx((1.0, 1.0, 0.75))
    reference = annotated_slice_coverage([(annotated, None)], 3)
    assert reference == pytest.approx((1.0, 1.0, 0.5))
    predicted = np.zeros((5, 6, 5), np.uint8)  # sliced along its second axis this time
    predicted[:, 1:4] = 1  # the ring on 3 of the heart's 4 slices (1 to 4), the disc on 1
    predicted[2, 4, 2] = 2
    assert slice_coverage(predicted, 3, slice_axis=1).tolist() == [1.0, 0.75, 0.25]
    assert slice_coverage(np.zeros((3, 2, 2), np.uint8), 3).tolist() == [1.0, 0.0, 0.0]
    quality = volume_quality(predicted, np.zeros(predicted.shape, np.float32), [1.0, 0.9, 0.9], 1, NAMES, VALUES,
                             annotated_coverage=reference)
    disc = 0.9 ** AGREEMENT_POWER * (0.25 / (COVERAGE_TOLERANCE * 0.5)) ** COVERAGE_POWER
    ring = 0.9 ** AGREEMENT_POWER * (0.75 / COVERAGE_TOLERANCE) ** COVERAGE_POWER
    assert quality.estimates() == {"ring": pytest.approx(ring, abs=1e-4), "disc": pytest.approx(disc, abs=1e-4)}
    # Within the tolerance, or without the model's coverage (older models), the estimate is the copies' alone.
    assert estimated_dice(0.9, None, None, 0.46, 0.5) == pytest.approx(0.9 ** AGREEMENT_POWER, abs=1e-4)
    plain = volume_quality(predicted, np.zeros(predicted.shape, np.float32), [1.0, 0.9, 0.9], 1, NAMES, VALUES)
    assert plain.estimates() == {"ring": pytest.approx(0.729, abs=1e-4), "disc": pytest.approx(0.729, abs=1e-4)}


def _entry(name: str, estimates_: dict[str, float | None], worst_slice: int | None = 2) -> dict:
    structures = [{"name": n, "value": 1, "estimated_dice": e, "uncertainty": 0.1} for n, e in estimates_.items()]
    structures.sort(key=lambda s: (s["estimated_dice"] is None, s["estimated_dice"] or 0))
    slices = [] if worst_slice is None else [{"index": worst_slice, "uncertainty": 0.3, "structure": None,
                                              "structures": {}}]
    return {"name": name, "slice_axis": "k", "structures": structures, "slices": slices}


def test_the_end_of_run_table_lists_the_volumes_of_lowest_estimate_first():
    entries = [_entry("good", {"ring": 0.95, "disc": 0.9}), _entry("bad", {"ring": 0.4, "disc": 0.93}, 5),
               _entry("empty", {"ring": None, "disc": None}, None)]
    lines = worst_lines(entries, count=2)
    assert "2 of 3 volumes" in lines[0]
    assert lines[2].split()[0] == "empty" and "ring none found" in lines[2] and lines[2].rstrip().endswith("-")
    assert lines[3].split()[0] == "bad" and "ring 0.40, disc 0.93" in lines[3] and "k = 5" in lines[3]
    assert worst_lines([]) == []


def test_without_estimates_the_end_of_run_table_lists_the_most_uncertain_volumes_first():
    entries = [_entry("calm", {"ring": None, "disc": None}), _entry("unsure", {"ring": None, "disc": None}, 2)]
    entries[0]["uncertainty_score"], entries[1]["uncertainty_score"] = 0.1, 0.4
    for entry, values in zip(entries, ((0.05, 0.2), (0.5, 0.3))):
        entry["structures"] = [{"name": n, "estimated_dice": None, "uncertainty": u} for n, u in zip(("ring", "disc"),
                                                                                                    values)]
    lines = worst_lines(entries, estimated=False)
    assert "most uncertain first" in lines[0] and "worst structures (uncertainty)" in lines[1]
    assert lines[2].split()[0] == "unsure" and "ring 0.50, disc 0.30" in lines[2] and "k = 2" in lines[2]
    assert lines[3].split()[0] == "calm" and "none found" not in lines[3]


def test_the_cohort_record_and_table_carry_each_structure_s_estimate():
    frames = [_entry("c_t00", {"ring": 0.9, "disc": None}), _entry("c_t01", {"ring": 0.7, "disc": 0.8})]
    assert estimates(frames) == {"ring": 0.7, "disc": 0.8}  # the lowest over the frames
    assert estimates(frames[:1]) == {"ring": 0.9, "disc": None}
    header = columns(["ring", "disc"])
    assert header.index("dice_est_ring") < header.index("ring_ml")
    record = {"name": "v", "input": "v.nii.gz", "kind": "volume", "size": [4, 4, 2], "spacing_mm": [1, 1, 2],
              "uncertainty_score": 0.1, "ml": {"ring": 1.0, "disc": 0.5}, "dice_est": {"ring": 0.7, "disc": None}}
    row = row_of(record, ["ring", "disc"])
    assert row["dice_est_ring"] == 0.7 and row["dice_est_disc"] is None
    del record["dice_est"]  # a record of an engine before the estimates
    assert row_of(record, ["ring", "disc"])["dice_est_ring"] is None


def test_the_bench_measures_rank_error_and_the_worst_cases_caught():
    assert worst_caught([0.9, 0.2, 0.8, 0.5], [0.7, 0.8, 0.9, 0.1], share=0.5) == (1, 2)
    assert worst_caught(list(range(20)), list(range(20))) == (2, 2)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0) and spearman([1, 2], [1, 2]) is None
    summary = {"volumes": [_entry("a", {"ring": 0.9, "disc": None}), _entry("b", {"ring": 0.5, "disc": 0.6}),
                           _entry("c", {"ring": 0.8, "disc": 0.7})]}
    report = {"cases": {"a": {"dice": {"ring": 0.8, "disc": 0.0}}, "b": {"dice": {"ring": 0.5, "disc": 0.4}},
                        "c": {"dice": {"ring": 0.9, "disc": None}}}}
    pairs = quality_pairs(summary, report)
    # c's disc is absent from prediction and reference alike: left out; a's disc, predicted nowhere, estimates 0.
    assert {(p["volume"], p["structure"]): (p["estimated"], p["true"]) for p in pairs} == {
        ("a", "ring"): (0.9, 0.8), ("a", "disc"): (0.0, 0.0), ("b", "ring"): (0.5, 0.5), ("b", "disc"): (0.6, 0.4),
        ("c", "ring"): (0.8, 0.9)}
    metrics = quality_metrics(pairs)
    assert metrics["pairs"] == 5 and metrics["volumes"] == 3
    assert metrics["mae"] == pytest.approx((0.1 + 0 + 0 + 0.2 + 0.1) / 5)
    assert metrics["bias"] == pytest.approx((0.1 + 0 + 0 + 0.2 - 0.1) / 5)
    assert (metrics["worst_caught"], metrics["worst_count"]) == (1, 1)  # a's disc, by both
    assert metrics["spearman"] == pytest.approx(0.8)
    assert quality_metrics([])["spearman"] is None



def test_the_bench_table_pools_the_seeds_of_a_method_into_one_row():
    def run(method, seed, points):
        pairs = [{"volume": v, "structure": "ring", "true": t, "estimated": e} for v, t, e in points]
        return {"method": method, "seed": seed, "quality": {**quality_metrics(pairs), "points": pairs}}

    seed0 = run("plcl", 0, [("a", 0.9, 0.8), ("b", 0.2, 0.7)])
    seed1 = run("plcl", 1, [("a", 0.5, 0.5), ("b", 0.8, 0.9)])
    alone = run("other", 0, [("a", 0.9, 0.9), ("b", 0.1, 0.1)])
    pooled = pooled_quality([seed0, seed1])
    # Four pairs of four volumes: the same case under two seeds is two volumes.
    assert (pooled["pairs"], pooled["volumes"]) == (4, 4)
    assert pooled["mae"] == pytest.approx((0.1 + 0.5 + 0.0 + 0.1) / 4)
    assert pooled["bias"] == pytest.approx((-0.1 + 0.5 + 0.0 + 0.1) / 4)
    rows = [line for line in quality_lines({"runs": [seed0, alone, seed1]}) if line.startswith("| plcl")
            or line.startswith("| other")]
    assert [row.split(" | ")[:2] for row in rows] == [["| plcl", "0"], ["| plcl", "1"], ["| plcl", "all (pooled)"],
                                                      ["| other", "0"]]
    assert rows[2].startswith("| plcl | all (pooled) | 4 | ") and f"| {pooled['mae']:.3f} |" in rows[2]


@pytest.mark.slow
def test_a_run_writes_the_review_fields_and_quality_events(tmp_path, synthetic):
    """A tiny training run on SYNTHETIC volumes: each segmented volume's summary entry has its slicing axis,
    its structures worst first and its slices least certain first; a quality event follows its outputs and
    carries the same structures; the person's log ends with the table of volumes to review first."""
    import json

    import SimpleITK as sitk
    from conftest import events, run_plcl

    from PLCLSegmentationLib.engine.slicing import canonical

    out = tmp_path / "run"
    result = run_plcl("train", "--data", str(synthetic), "--labeled-cases", "synthetic_001",
                      "--unlabeled-cases", "synthetic_002,synthetic_003", "--out", str(out), "--iterations", "4",
                      "--budget", "quick", "--set", "patch_size=64", "--device", "cpu", "--events", "jsonl")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "mirrored copies" in summary["quality_measure"]
    names = [c["name"] for c in summary["classes"]]
    seen = events(result.stdout)
    for entry in summary["volumes"]:
        assert entry["slice_axis"] in ("i", "j", "k")
        assert sorted(s["name"] for s in entry["structures"]) == sorted(names)
        known = [s["estimated_dice"] for s in entry["structures"] if s["estimated_dice"] is not None]
        assert known == sorted(known) and all(0 <= e <= 1 for e in known)
        assert all(s["estimated_dice"] is None for s in entry["structures"][len(known):])
        image = sitk.ReadImage(entry["image"])
        axis = canonical(np.array(image.GetDirection()).reshape(3, 3), image.GetSpacing()).slice_axis
        assert entry["slice_axis"] == "kji"[axis]  # the engine's own rule (slicing.py), on the file's axes
        assert all(0 <= s["index"] < image.GetSize()["ijk".index(entry["slice_axis"])] for s in entry["slices"])
        uncertainties = [s["uncertainty"] for s in entry["slices"]]
        assert uncertainties == sorted(uncertainties, reverse=True)
        assert len({s["index"] for s in entry["slices"]}) == len(entry["slices"])
        kinds = [(e["event"], e.get("kind")) for e in seen if e.get("name") == entry["name"]]
        assert kinds.index(("quality", None)) > max(i for i, k in enumerate(kinds) if k[0] == "output")
        (quality,) = [e for e in seen if e["event"] == "quality" and e["name"] == entry["name"]]
        assert quality["structures"] == entry["structures"] and quality["frame"] is None
        assert quality["worst_slice"] == (entry["slices"][0]["index"] if entry["slices"] else None)
    assert "review first" in result.stderr and summary["volumes"][0]["name"] in result.stderr
    # The model holds what each structure borders in the annotations; the lab computes the same from the run
    # folder for a model trained before model files held it.
    from PLCLSegmentationLib.engine.lab.model_neighbours import with_neighbour_shares
    from PLCLSegmentationLib.engine.method.modelfile import read_model

    info, _ = read_model(out / "model.pt")
    assert len(info.neighbour_shares) == len(names) + 1 and "borders" in summary["quality_measure"]
    assert any(share > 0 for share in info.neighbour_shares[0][1:])  # the background borders the structures
    assert with_neighbour_shares(out, tmp_path / "copy.pt") == info.neighbour_shares
    assert read_model(tmp_path / "copy.pt")[0].neighbour_shares == info.neighbour_shares
    # ... and how far each structure reaches in the annotated whole volume.
    assert len(info.slice_coverage) == len(names) + 1 and "slices holding any structure" in summary["quality_measure"]
    assert info.slice_coverage[0] == 1.0 and all(0 < share <= 1 for share in info.slice_coverage[1:])
    assert read_model(tmp_path / "copy.pt")[0].slice_coverage == info.slice_coverage


def test_the_simulated_review_corrects_the_least_certain_slices_the_review_table_s_or_as_many_drawn_at_random():
    from PLCLSegmentationLib.engine.lab.review_sim import candidate_slices, choose

    def item(index: int, uncertainty: float, voxels: float) -> dict:
        return {"index": index, "uncertainty": uncertainty, "uncertain_voxels": voxels}

    candidates = candidate_slices({"a": [item(3, 0.5, 10.0), item(1, 0.2, 90.0)],
                                   "b": [item(0, 0.4, 50.0), item(7, 0.1, 5.0)]})
    assert [(name, index) for name, index, _ in candidates] == [("a", 3), ("a", 1), ("b", 0), ("b", 7)]
    assert choose("uncertain", candidates, 3, seed=0) == {"a": [1, 3], "b": [0]}
    assert choose("uncertain_voxels", candidates, 2, seed=0) == {"a": [1], "b": [0]}  # one slice a volume first
    assert choose("uncertain_voxels", candidates, 3, seed=0) == {"a": [1, 3], "b": [0]}
    drawn = choose("random", candidates, 3, seed=0)
    assert sum(map(len, drawn.values())) == 3 and drawn == choose("random", candidates, 3, seed=0)
    assert choose("none", candidates, 3, seed=0) == {}
    # The review table puts b first: the reviewer corrects b's slices, least certain first, then a's.
    assert choose("whole_volumes", candidates, 3, seed=0, table=["b", "a"]) == {"a": [3], "b": [0, 7]}
    assert choose("worst_volumes", candidates, 2, seed=0, table=["b", "a"]) == {"a": [3], "b": [0]}
    assert choose("worst_volumes", candidates, 3, seed=0, table=["b", "a"]) == {"a": [3], "b": [0, 7]}  # 2nd pass
    assert choose("review_path_2", candidates, 3, seed=0, table=["b", "a"]) == {"a": [3], "b": [0, 7]}
    assert choose("review_path_2", candidates, 2, seed=0, table=["b", "a"]) == {"b": [0, 7]}
    # The module's path: one a volume, most uncertain voxels first, then each one's next.
    assert choose("review_path", candidates, 2, seed=0, table=["a", "b"]) == {"a": [1], "b": [0]}
    assert choose("review_path", candidates, 3, seed=0, table=["a", "b"]) == {"a": [1, 3], "b": [0]}
    assert choose("review_path_1", candidates, 3, seed=0, table=["a", "b"]) == {"a": [1, 3], "b": [0]}  # its old name
    # Its path from 2026-12-05 to 2026-12-07: two a volume.
    assert choose("review_path_pairs", candidates, 2, seed=0, table=["a", "b"]) == {"a": [1, 3]}
    assert choose("review_path_pairs", candidates, 3, seed=0, table=["a", "b"]) == {"a": [1, 3], "b": [0]}
    from PLCLSegmentationLib import review
    from PLCLSegmentationLib.engine.lab.review_sim import TABLE_ARMS
    assert TABLE_ARMS["review_path"][0] == review.SLICES_PER_PASS  # the lab's reviewer walks as the module does
    assert choose("random", candidates, 2, seed=0, draw=1) == choose("random", candidates, 2, seed=0, draw=1)
    assert len({str(choose("random", candidates, 2, seed=0, draw=d)) for d in range(6)}) > 1  # other draws
    assert choose("worst_volumes", candidates, 1, seed=0, table=["a", "b"]) == {"a": [3]}
    assert choose("whole_volumes", candidates, 3, seed=0, table=["b"]) == {"b": [0, 7]}  # only the table's volumes


def test_the_simulated_review_s_retrain_keeps_the_protocol_s_annotated_slices():
    from PLCLSegmentationLib.engine import slicing
    from PLCLSegmentationLib.engine.lab.review_sim import annotated_after_review

    whole = {"labeled": ["p1", "p2"], "unlabeled": ["a", "b"]}
    expected = (["p1", "p2", "b"], ["all", "all", slicing.spec_text([0, 7])])
    assert annotated_after_review(whole, {"b": [0, 7]}) == expected
    few = {**whole, "slices": {"p1": [1, 2, 5], "p2": [1, 2, 4]}}
    labeled, specs = annotated_after_review(few, {"a": [3]})
    assert labeled == ["p1", "p2", "a"]
    assert specs == [slicing.spec_text([1, 2, 5]), slicing.spec_text([1, 2, 4]), slicing.spec_text([3])]
    assert "all" not in specs


def test_the_review_study_compares_each_arm_with_the_warm_start_alone_seed_by_seed():
    from PLCLSegmentationLib.engine.lab.review_study import arm_means

    rows = [{"seed": 0, "arm": "none", "gain": -0.010, "cohort_gain": 0.001},
            {"seed": 1, "arm": "none", "gain": 0.002, "cohort_gain": 0.003},
            {"seed": 0, "arm": "random", "gain": 0.004, "cohort_gain": 0.020,
             "corrections": 0.2, "others_vs_none": 0.01},
            {"seed": 1, "arm": "random", "gain": 0.010, "cohort_gain": 0.030,
             "corrections": 0.4, "others_vs_none": 0.03},
            {"seed": 2, "arm": "random", "gain": 0.5, "cohort_gain": 0.4, "corrections": 0.9,  # no none for seed 2
             "others_vs_none": None}]
    for row in rows:
        row["slices"] = 0 if row["arm"] == "none" else 10
    for row in rows[:2]:
        row.update(corrections=0.0, others_vs_none=None)
    means = arm_means(rows)
    assert means["random"]["corrections"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert means["random"]["others_vs_none"] == pytest.approx((0.01 + 0.03) / 2)  # the seeds with a none arm
    assert means["random"]["seeds"] == "0, 1, 2"
    assert means["random"]["gain"] == pytest.approx((0.004 + 0.010 + 0.5) / 3)
    assert means["random"]["against_none"] == pytest.approx(((0.004 + 0.010) - (-0.010 + 0.002)) / 2)
    assert means["random"]["cohort_gain"] == pytest.approx((0.020 + 0.030 + 0.4) / 3)
    assert means["random"]["cohort_against_none"] == pytest.approx(((0.020 + 0.030) - (0.001 + 0.003)) / 2)
    assert means["none"]["against_none"] is None and means["none"]["cohort_against_none"] is None
    more = [*rows, {"seed": 0, "arm": "random", "slices": 30, "gain": 0.1, "cohort_gain": 0.2, "corrections": 1.0,
                    "others_vs_none": 0.0}]
    means = arm_means(more)  # the same arm with another number of slices: apart
    assert set(means) == {"none", "random (10)", "random (30)"}
    assert means["random (10)"]["gain"] == pytest.approx((0.004 + 0.010 + 0.5) / 3)
    assert means["random (30)"]["against_none"] == pytest.approx(0.1 - (-0.010))


def test_the_review_curve_pools_random_draws_per_seed_and_starts_every_arm_at_none():
    from PLCLSegmentationLib.engine.lab.review_study import curve_points

    rows = [{"seed": 0, "arm": "none", "slices": 0, "gain": 0.01},
            {"seed": 0, "arm": "random", "slices": 10, "gain": 0.02},
            {"seed": 0, "arm": "random_draw2", "slices": 10, "gain": 0.04},
            {"seed": 1, "arm": "random", "slices": 10, "gain": 0.05},
            {"seed": 0, "arm": "random", "slices": 30, "gain": 0.06},
            {"seed": 0, "arm": "review_path", "slices": 30, "gain": 0.09},
            {"seed": 0, "arm": "review_path_retrain7", "slices": 30, "gain": 0.07}]
    points = curve_points(rows, "gain")
    assert set(points) == {"random", "review_path"}
    assert points["random"][10] == {0: pytest.approx(0.03), 1: 0.05}  # seed 0: the mean of its two draws
    assert points["random"][30] == {0: 0.06}
    assert points["review_path"] == {0: {0: 0.01}, 30: {0: pytest.approx(0.08)}}  # none: every arm's at 0 slices


def test_resegment_without_a_review_to_score_says_so(tmp_path, capsys):
    import json

    from PLCLSegmentationLib.engine.lab.review_sim import main

    (tmp_path / "results.json").write_text(json.dumps({"protocol": {"cases": {"0": {"labeled": ["p1"]}}}, "runs": []}))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "runs" / "seed0" / "plcl"), str(tmp_path / "out"), "--resegment"])
    assert "review.json: no simulated review to score again" in capsys.readouterr().err


def test_the_cohort_after_a_review_keeps_the_corrected_slices_and_takes_the_retrain_s_segmentation(tmp_path):
    """review_sim.cohort_volume_dice: corrected volumes are the run's segmentation with the corrected slices set to the
    reference; the others, the retrain's segmentation; each volume's mean Dice over its structures."""
    import json

    import SimpleITK as sitk

    from PLCLSegmentationLib.engine.lab.review_sim import cohort_volume_dice

    data = tmp_path / "data"
    for folder in ("images", "labels"):
        (data / folder).mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"name": "t", "labels": {"0": "background", "3": "a", "7": "b"},
                                                   "cases": {"train": ["u", "v"]}}))
    reference = np.zeros((4, 8, 8), np.uint8)  # label values 3 and 7: not the class indices 1 and 2
    reference[:, 2:6, 2:6] = 3
    reference[:, 0:2, 0:2] = 7

    def write(array: np.ndarray, path) -> str:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        return str(path)

    for case in ("u", "v"):
        write(np.ones((4, 8, 8), np.uint16), data / "images" / f"{case}.nii.gz")
        write(reference, data / "labels" / f"{case}.nii.gz")
    wrong_first_slice = reference.copy()
    wrong_first_slice[0] = 0  # both structures missed on slice 0
    missing_b = reference.copy()
    missing_b[reference == 7] = 0

    def run(folder, segmentations: dict[str, np.ndarray]):
        folder.mkdir(parents=True)
        volumes = [{"name": case, "image": str(data / "images" / f"{case}.nii.gz"), "slice_axis": "k",
                    "segmentation": write(labels, folder / f"{case}.nii.gz")} for case, labels in segmentations.items()]
        (folder / "summary.json").write_text(json.dumps({"classes": [{"value": 3, "name": "a"},
                                                                     {"value": 7, "name": "b"}], "volumes": volumes}))

    run(tmp_path / "run" / "train", {"u": wrong_first_slice, "v": missing_b})
    run(tmp_path / "arm", {"v": reference})  # the retrain segments v right; u was corrected, not segmented

    a, b = 2 * 48 / (48 + 64), 2 * 12 / (12 + 16)  # u's structures with slice 0 missed
    before = cohort_volume_dice(tmp_path / "run", None, {}, str(data))
    assert before == pytest.approx({"u": (a + b) / 2, "v": (1 + 0) / 2})
    # u corrected on slice 0: whole; v from the retrain: whole.
    assert cohort_volume_dice(tmp_path / "run", tmp_path / "arm", {"u": [0]}, str(data)) == pytest.approx(
        {"u": 1.0, "v": 1.0})
    # u corrected on slice 1 only: slice 0 still missed.
    after = cohort_volume_dice(tmp_path / "run", tmp_path / "arm", {"u": [1]}, str(data))
    assert after == pytest.approx({"u": (a + b) / 2, "v": 1.0})
    with pytest.raises(RuntimeError, match="did not segment u"):  # neither corrected nor segmented again
        cohort_volume_dice(tmp_path / "run", tmp_path / "arm", {}, str(data))
    # --resegment: u segmented again by the retrain (right but for slice 2), its corrected slice 1 kept.
    wrong_third_slice = reference.copy()
    wrong_third_slice[2] = 0
    run(tmp_path / "resegment", {"u": wrong_third_slice})
    again = {e["name"]: e for e in json.loads((tmp_path / "resegment" / "summary.json").read_text())["volumes"]}
    assert cohort_volume_dice(tmp_path / "run", tmp_path / "arm", {"u": [1]}, str(data), again) == pytest.approx(
        {"u": (a + b) / 2, "v": 1.0})  # slice 2 missed instead of slice 0
    assert cohort_volume_dice(tmp_path / "run", tmp_path / "arm", {"u": [2]}, str(data), again) == pytest.approx(
        {"u": 1.0, "v": 1.0})  # the retrain's one wrong slice corrected
    # A retrain that segmented u around its corrected slice (annotated_slices: the engine today): its segmentation.
    run(tmp_path / "arm-around", {"u": wrong_third_slice, "v": reference})
    summary = json.loads((tmp_path / "arm-around" / "summary.json").read_text())
    summary["volumes"][0]["annotated_slices"] = [1]
    (tmp_path / "arm-around" / "summary.json").write_text(json.dumps(summary))
    assert cohort_volume_dice(tmp_path / "run", tmp_path / "arm-around", {"u": [1]}, str(data)) == pytest.approx(
        {"u": (a + b) / 2, "v": 1.0})
    assert cohort_volume_dice(tmp_path / "run", tmp_path / "arm-around", {"u": [2]}, str(data)) == pytest.approx(
        {"u": 1.0, "v": 1.0})
    # A run whose training segmented its partly annotated case too (v): that case is no part of the cohort.
    base = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    base["volumes"][1]["annotated_slices"] = [0, 1]
    (tmp_path / "run" / "train" / "summary.json").write_text(json.dumps(base))
    assert cohort_volume_dice(tmp_path / "run", None, {}, str(data)) == pytest.approx({"u": (a + b) / 2})


def test_a_review_s_cohort_gain_splits_into_the_corrections_own_and_the_retrain_s_on_the_others():
    from PLCLSegmentationLib.engine.lab.review_sim import split_gain

    before = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.8}
    none = {"a": 0.4, "b": 0.6, "c": 0.75, "d": 0.8}  # the warm start alone moves a and c
    after = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.9}  # a and b corrected
    split = split_gain(before, after, {"a": [1], "b": [2, 3]}, none)
    assert split["corrections"] == pytest.approx(0.4 + 0.2)  # summed over the corrected volumes
    assert split["others"] == pytest.approx((0.0 + 0.1) / 2)  # c and d against the run
    assert split["others_vs_none"] == pytest.approx((-0.05 + 0.1) / 2)  # c and d against the retrain alone
    assert split_gain(before, none, {})["others_vs_none"] is None  # no none arm to compare with
    assert split_gain(before, before, {})["corrections"] == 0.0


def test_the_review_figure_s_arm_labels_never_overlap_even_with_a_dozen_arms():
    """A study with three draws and three retrains a seed has a dozen arms: their names must stay readable."""
    import itertools

    import matplotlib.pyplot as plt

    from PLCLSegmentationLib.engine.lab.review_study import draw_review_figure

    arms = ["none", "random", "random_draw2", "random_draw3", "review_path", "review_path_retrain100",
            "review_path_retrain200", "density", "disagreement", "position_balance", "one_per_prediction"]
    rows = [{"seed": seed, "arm": arm, "slices": 0 if arm == "none" else 30, "gain": 0.01 * i,
             "cohort_gain": 0.001 * i} for seed in range(3) for i, arm in enumerate(arms)]
    fig = draw_review_figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [label.get_window_extent(renderer) for label in ax.get_xticklabels() if label.get_text()]
        assert len(boxes) == len(arms)
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    plt.close(fig)


def test_the_stack_balanced_review_path_spreads_its_corrections_along_the_heart():
    from PLCLSegmentationLib.engine.lab.review_sim import candidate_slices, choose, stack_third

    def item(index: int, voxels: float, heart: bool = True) -> dict:
        return {"index": index, "uncertainty": 0.1, "uncertain_voxels": voxels,
                "structures": {"myocardium": 0.1} if heart else {}}

    assert [stack_third(item(i, 0), (2, 10)) for i in (0, 2, 4, 5, 7, 8, 10, 12)] == [0, 0, 0, 1, 1, 2, 2, 2]
    # Each volume's foreground spans slices 0..7; a basal slice (0, 1) is every volume's least certain; slice 9
    # has entropy outside the heart only (it counts with the nearest third, the apex's).
    walk = {name: [item(0, 90.0), item(1, 80.0), item(4, 40.0 + shift), item(7, 20.0 + shift),
                   item(9, 1.0, heart=False)]
            for name, shift in (("a", 0.0), ("b", 5.0), ("c", 1.0), ("d", 0.0))}
    table = ["a", "b", "c", "d"]
    # The path takes every volume's basal slice; the stack-balanced one a's base, b's middle, c's apex, then d's
    # base again (every third once); the second pass a's middle, then b's apex (the thirds least corrected).
    assert choose("review_path", candidate_slices(walk), 4, seed=0, table=table) == {
        "a": [0], "b": [0], "c": [0], "d": [0]}
    assert choose("stack_path", candidate_slices(walk), 4, seed=0, table=table) == {
        "a": [0], "b": [4], "c": [7], "d": [0]}
    assert choose("stack_path", candidate_slices(walk), 6, seed=0, table=table) == {
        "a": [0, 4], "b": [4, 7], "c": [7], "d": [0]}

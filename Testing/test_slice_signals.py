"""The lab's other signals for the review's slices: information density from the model's features and disagreement
with mirrored copies (slice_signals.py), and where the slices each one orders first lie (review_signals.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image, phantom

from PLCLSegmentationLib.engine.files.volumes import ClassInfo, Grid, Volume
from PLCLSegmentationLib.engine.lab.review_signals import stack_fifths
from PLCLSegmentationLib.engine.lab.review_sim import bench_run, candidate_slices, choose
from PLCLSegmentationLib.engine.lab.slice_signals import (
    add_signals,
    densities,
    encoder_features,
    in_file_order,
    mirror_disagreement,
    representative_slices,
)
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo
from PLCLSegmentationLib.engine.method.predictor import Predictor


def test_a_slice_unlike_the_others_is_the_least_dense_and_the_most_typical_is_one():
    rng = np.random.default_rng(0)
    typical = rng.normal(0.0, 0.1, size=(12, 8)) + 1.0
    outlier = np.full((1, 8), 5.0)
    found = densities({"b": typical[6:], "a": np.concatenate([typical[:6], outlier])})
    assert [len(found["a"]), len(found["b"])] == [7, 6]  # each volume's slices, in its order
    every = np.concatenate([found["a"], found["b"]])
    assert every.max() == pytest.approx(1.0) and every.min() > 0.0
    assert found["a"][6] == every.min() and found["a"][6] < 0.5 * np.median(every)


def test_a_stack_s_values_are_read_back_in_the_file_s_slice_order():
    class Layout:
        flips = (True, False, False)

    class Prepared:
        layout = Layout()

    assert in_file_order(np.array([1.0, 2.0, 3.0]), Prepared()).tolist() == [3.0, 2.0, 1.0]
    Layout.flips = (False, False, False)
    assert in_file_order(np.array([1.0, 2.0, 3.0]), Prepared()).tolist() == [1.0, 2.0, 3.0]


def test_the_path_by_density_or_disagreement_orders_each_volume_s_slices_by_that_signal():
    features = {"a": np.array([[1.0, 0.0], [1.0, 0.1], [9.0, 9.0]]), "b": np.array([[1.0, 0.05], [1.1, 0.0]])}
    signals = {name: {"features": f, "disagreement": np.arange(len(f), dtype=float)} for name, f in features.items()}
    slices = {"a": [{"index": 2, "uncertain_voxels": 100.0}, {"index": 0, "uncertain_voxels": 60.0},
                    {"index": 1, "uncertain_voxels": 10.0}],
              "b": [{"index": 0, "uncertain_voxels": 50.0}, {"index": 1, "uncertain_voxels": 40.0}]}
    add_signals(slices, signals)
    assert slices["a"][0]["density"] < slices["a"][1]["density"]  # slice 2 is unlike every other
    assert slices["a"][0]["dense_voxels"] == pytest.approx(100.0 * slices["a"][0]["density"], abs=0.1)
    candidates = candidate_slices(slices)
    # By uncertain voxels the atypical slice 2 comes first; weighted by its density, slice 0 does.
    assert choose("review_path_pairs", candidates, 1, seed=0, table=["a", "b"]) == {"a": [2]}
    assert choose("dense_path", candidates, 1, seed=0, table=["a", "b"]) == {"a": [0]}
    assert choose("disagreement_path", candidates, 3, seed=0, table=["a", "b"]) == {"a": [1, 2], "b": [1]}
    assert stack_fifths({"a": [0, 2], "b": [9]}, {"a": 3, "b": 10}) == [1, 0, 0, 1, 1]


def test_suggestive_annotation_takes_uncertain_slices_that_stand_for_different_kinds_of_slice():
    rng = np.random.default_rng(1)
    kind_a, kind_b = np.array([4.0, 0.0, 0.0]), np.array([0.0, 4.0, 0.0])
    features = {"a": kind_a + rng.normal(0, 0.1, (6, 3)), "b": kind_b + rng.normal(0, 0.1, (6, 3))}
    # The three most uncertain slices are all of kind a; b's best is fourth, a's fourth slice fifth.
    candidates = [("a", 0, 90.0), ("a", 1, 80.0), ("a", 2, 70.0), ("b", 3, 60.0), ("a", 4, 50.0), ("b", 5, 5.0)]
    chosen = representative_slices(candidates, features, 2)
    assert sorted(name for name, _ in chosen) == ["a", "b"] and ("b", 3) in chosen  # one of each kind
    assert ("b", 5) not in representative_slices(candidates, features, 3)  # only the pool's (2 x 3) most uncertain
    assert len(representative_slices(candidates, features, 2, pool=1)) == 2
    assert {n for n, _ in representative_slices(candidates, features, 2, pool=1)} == {"a"}  # no b in the top two
    slices = {name: [{"index": i, "uncertain_voxels": u} for n, i, u in candidates if n == name] for name in "ab"}
    assert choose("suggestive", candidate_slices(slices), 2, seed=0, features=features) == \
        {name: [index] for name, index in sorted(chosen)}
    with pytest.raises(ValueError, match="features"):
        choose("suggestive", candidate_slices(slices), 2, seed=0)


def test_a_bench_method_folder_names_its_seed_and_the_bench_holds_that_seed_s_cases(tmp_path):
    import json

    cases = {"labeled": ["p1"], "unlabeled": ["p2", "p3"], "evaluation": ["p9"]}
    (tmp_path / "results.json").write_text(json.dumps({"protocol": {"cases": {"0": {}, "1": cases}}, "runs": []}))
    run = tmp_path / "runs" / "seed1" / "plcl"
    results, seed, found = bench_run(run)
    assert (seed, found) == (1, cases) and results["runs"] == []
    elsewhere = tmp_path / "moved" / "seed1" / "plcl"
    assert bench_run(elsewhere, bench=tmp_path)[2] == cases  # --bench: the results beside another folder


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    info = ModelInfo(classes=[ClassInfo(3, "ring", (1.0, 0.0, 0.0)), ClassInfo(7, "disc", (0.0, 0.0, 1.0))],
                     target_spacing_mm=1.2, patch_size=32, base_channels=4, levels=3, embedding_dim=4,
                     intensity_percentiles=(1.0, 99.0), inference_tile=32, largest_component=False)
    torch.manual_seed(0)
    return Predictor(info.build_network(), info, torch.device("cpu"), precision="fp32")


def _prepared(predictor: Predictor):
    array = phantom(seed=0)[0].astype(np.float32)
    return predictor.prepare(Volume("a", "a.nrrd", array, Grid.of(make_image(array))))[0]


def test_the_encoder_features_are_one_vector_a_slice(predictor):
    prepared = _prepared(predictor)
    features = encoder_features(predictor.model, predictor.info, prepared, batch=2)
    assert features.shape == (prepared.images.shape[0], predictor.info.base_channels * 4)
    assert np.isfinite(features).all()


def test_a_model_that_segments_its_mirror_images_alike_disagrees_nowhere_and_one_that_sees_position_does(predictor):
    prepared = _prepared(predictor)

    def by_intensity(images: torch.Tensor) -> torch.Tensor:  # mirror-equivariant: each pixel by its value
        classes = (images > images.mean()).long() + (images > images.mean() + images.std()).long()
        return torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()

    def by_column(images: torch.Tensor) -> torch.Tensor:  # not: the left half is a structure whatever it shows
        classes = torch.zeros(images.shape, dtype=torch.long)
        classes[..., : images.shape[-1] // 2] = 1
        return torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()

    predictor.probabilities = by_intensity
    assert mirror_disagreement(predictor, prepared).tolist() == [0.0] * prepared.images.shape[0]
    predictor.probabilities = by_column
    disagreement = mirror_disagreement(predictor, prepared)
    assert disagreement.shape == (prepared.images.shape[0],) and (disagreement > 0).all()
    del predictor.probabilities

"""The model file: a round trip keeps the predictions; loading never runs code."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from PLCLSegmentationLib.engine.errors import InputError
from PLCLSegmentationLib.engine.files.volumes import ClassInfo
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, load_model, read_model, save_model


def _info() -> ModelInfo:
    return ModelInfo(classes=[ClassInfo(1, "ring", (1.0, 0.0, 0.0), {"category": ["SCT", "1", "x"]}),
                              ClassInfo(4, "disc", (0.0, 0.0, 1.0))],
                     target_spacing_mm=1.37, patch_size=64, base_channels=4, levels=3, embedding_dim=8,
                     intensity_percentiles=(0.5, 99.5), training={"iterations": 7},
                     in_plane_reference=((0.0, 0.8, 0.6), (1.0, 0.0, 0.0)))


@pytest.mark.parametrize("embedding_levels", [1, 2])
def test_round_trip_keeps_everything_needed_to_apply_the_model(tmp_path, embedding_levels):
    info = dataclasses.replace(_info(), embedding_levels=embedding_levels)
    model = info.build_network().eval()
    with torch.no_grad():  # make BatchNorm statistics non-trivial
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    save_model(tmp_path / "model.pt", model, info)
    loaded, loaded_info = load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert loaded_info.to_dict() == info.to_dict()
    assert loaded_info.in_plane_reference == info.in_plane_reference
    assert [c.value for c in loaded_info.classes] == [1, 4]
    assert loaded_info.classes[0].terminology == {"category": ["SCT", "1", "x"]}
    x = torch.randn((2, 1, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded(x, with_embedding=True)[1], model(x, with_embedding=True)[1])


def test_a_file_from_before_embedding_levels_reads_as_one_level(tmp_path):
    info = _info()
    save_model(tmp_path / "model.pt", info.build_network(), info)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    del payload["info"]["architecture"]["embedding_levels"]
    torch.save(payload, tmp_path / "old.pt")
    assert read_model(tmp_path / "old.pt")[0].embedding_levels == 1


def test_the_clean_up_follows_the_annotations_and_files_from_before_keep_each_class_alone(tmp_path):
    info = dataclasses.replace(_info(), largest_component=True, single_objects=(True, False, True))
    save_model(tmp_path / "model.pt", info.build_network(), info)
    assert read_model(tmp_path / "model.pt")[0].cleanup_objects == (True, False, True)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    del payload["info"]["single_objects"]
    torch.save(payload, tmp_path / "old.pt")
    assert read_model(tmp_path / "old.pt")[0].cleanup_objects == (False, True, True)  # each class, not the whole
    assert dataclasses.replace(info, largest_component=False).cleanup_objects is None
    payload["info"]["single_objects"] = [True, "yes", True]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="bad.pt.*single_objects"):
        read_model(tmp_path / "bad.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_file_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "plcl-segmentation-model", "x": _Payload()}, f)
    with pytest.raises(InputError) as error:
        read_model(path)
    assert "evil.pt" in str(error.value)


@pytest.mark.parametrize("content", [b"not a model", None])
def test_other_files_are_refused_with_one_line(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as error:
        read_model(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)

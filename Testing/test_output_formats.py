"""Output formats (run/writers.py): a NIfTI label map equal to the .seg.nrrd voxel for voxel, and DICOM SEG
read back by highdicom AND by dcmqi's segimage2itkimage (the converter Slicer reads SEG with) equal to
the label map on the source grid, for DICOM series made here from the SYNTHETIC phantoms (axial,
oblique, flipped slice order)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import on_grid, write_series

from PLCLSegmentationLib import __version__
from PLCLSegmentationLib.engine import protocol
from PLCLSegmentationLib.engine.errors import ConfigError, InputError
from PLCLSegmentationLib.engine.events import EventSink
from PLCLSegmentationLib.engine.files.dicom_seg import Algorithm, write_dicom_seg
from PLCLSegmentationLib.engine.files.volumes import ClassInfo, Grid, Volume, read_annotation, read_volume
from PLCLSegmentationLib.engine.lab.synthetic import _case
from PLCLSegmentationLib.engine.run import writers
from PLCLSegmentationLib.engine.run.writers import SegmentationWriters, end_diastole_systole, parse_seg_frames

MYOCARDIUM = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
              "category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "74281007", "Myocardium"]}
#: Class values that are not the segment numbers 1..3: the writers must map them, not copy them.
CLASSES = [ClassInfo(2, "right ventricle", (0.9, 0.2, 0.1)), ClassInfo(5, "myocardium", (0.2, 0.7, 0.3), MYOCARDIUM),
           ClassInfo(7, "left ventricle", (0.1, 0.3, 0.9))]
DCMQI = shutil.which("segimage2itkimage") or str(Path(__import__("sys").executable).parent / "segimage2itkimage")


def phantom_case(kind: str) -> tuple[np.ndarray, np.ndarray, Grid]:
    """A SYNTHETIC phantom's voxels, labels in CLASSES' values, grid; 'flipped': k against the normal."""
    voxels, labels, grid = _case(0, 0, oblique=kind != "axial")
    lut = np.zeros(256, np.uint8)
    lut[[1, 2, 3]] = [c.value for c in CLASSES]
    labels = lut[labels]
    if kind == "flipped":
        direction = grid.direction_matrix.copy()
        origin = np.asarray(grid.origin) + (grid.size[2] - 1) * grid.spacing[2] * direction[:, 2]
        direction[:, 2] *= -1
        grid = Grid(grid.size, grid.spacing, tuple(origin.tolist()), tuple(direction.ravel().tolist()))
        voxels, labels = voxels[::-1].copy(), labels[::-1].copy()
    return voxels, labels, grid


def test_the_table_is_the_protocol_and_each_format_has_a_writer():
    assert tuple(writers.FORMATS) == protocol.OUTPUT_FORMATS
    assert all(callable(f.write) for f in writers.FORMATS.values())
    assert writers.output_formats([]) == ["seg.nrrd"]
    assert writers.output_formats(["dicom-seg", "nifti", "nifti"]) == ["nifti", "dicom-seg"]
    with pytest.raises(ConfigError, match="unknown"):
        writers.output_formats(["png"])
    assert parse_seg_frames("ED, es,3") == ["ed", "es", 3]
    with pytest.raises(ConfigError, match="not ed, es, all"):
        parse_seg_frames("ed,-1")


def test_the_nifti_label_map_equals_the_seg_nrrd_voxel_for_voxel(tmp_path):
    voxels, labels, grid = phantom_case("oblique")
    (tmp_path / protocol.PREDICTIONS_FOLDER).mkdir()
    volume = Volume("case", "case.nii.gz", voxels.astype(np.float32), grid)
    files = SegmentationWriters(["seg.nrrd", "nifti"], CLASSES, "unused").write(volume, labels, tmp_path, EventSink())
    assert files == {"seg.nrrd": [str(tmp_path / "predictions" / "case.seg.nrrd")],
                     "nifti": [str(tmp_path / "predictions" / "case.nii.gz")]}
    nifti = sitk.ReadImage(files["nifti"][0])
    assert nifti.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(Grid.of(nifti).ijk_to_lps(), grid.ijk_to_lps(), atol=1e-4)
    segments, classes = read_annotation(files["seg.nrrd"][0], volume)
    value_of = np.zeros(256, np.uint8)
    for segment in classes:  # segment order -> class value, by name
        value_of[segment.value] = next(c.value for c in CLASSES if c.name == segment.name)
    assert np.array_equal(sitk.GetArrayFromImage(nifti), value_of[segments])
    assert np.array_equal(sitk.GetArrayFromImage(nifti), labels)


# --- DICOM SEG ----------------------------------------------------------------------------------


def read_with_dcmqi(seg: Path, folder: Path) -> tuple[np.ndarray, Grid]:
    """The SEG as dcmqi's segimage2itkimage converts it (one label map, values mapped back to CLASSES')."""
    folder.mkdir()
    result = subprocess.run([DCMQI, "--inputDICOM", str(seg), "--outputDirectory", str(folder), "--outputType",
                             "nrrd", "--mergeSegments"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((folder / "meta.json").read_text())
    image = sitk.ReadImage(str(folder / "1.nrrd"))
    lut = np.zeros(256, np.uint8)
    for segment in meta["segmentAttributes"][0]:
        lut[int(segment["labelID"])] = next(c.value for c in CLASSES if c.name == segment["SegmentLabel"])
    return lut[sitk.GetArrayFromImage(image)], Grid.of(image)


def check_with_highdicom(seg_path: Path, sources: list[Path], labels: np.ndarray, grid: Grid) -> None:
    """Every source image's frames, found by its SOP Instance UID, equal the label map's slice at its place."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "BINARY" and seg.NumberOfFrames == len(sources) * len(CLASSES)
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    lut = np.zeros(256, np.uint8)
    for number, name in names.items():
        lut[number] = next(c.value for c in CLASSES if c.name == name)
    for path in sources:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID],
                                                   combine_segments=True)[0]
        assert np.array_equal(lut[pixels], labels[volume_k(path, grid)]), path


@pytest.mark.parametrize("kind", ["axial", "oblique", "flipped"])
def test_a_dicom_seg_reads_back_equal_in_highdicom_and_dcmqi(tmp_path, kind):
    voxels, labels, grid = phantom_case(kind)
    series = write_series(tmp_path / "series", voxels, grid.spacing, grid.origin, grid.direction_matrix,
                          rng=np.random.default_rng(5))
    volume = read_volume(series)
    on_source = on_grid(labels, grid, volume.grid)  # the label map on the grid the DICOM tags give
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    (tmp_path / "out" / "predictions").mkdir(parents=True)
    files = SegmentationWriters(["dicom-seg"], CLASSES, model).write(volume, on_source, tmp_path / "out", EventSink())
    seg_path = Path(files["dicom-seg"][0])
    assert seg_path.name == "series.seg.dcm"
    check_with_highdicom(seg_path, sorted(series.glob("*.dcm")), on_source, volume.grid)
    read, read_grid = read_with_dcmqi(seg_path, tmp_path / "dcmqi")
    assert np.array_equal(on_grid(read, read_grid, volume.grid), on_source)
    assert np.array_equal(on_grid(read, read_grid, grid), labels)  # and on the phantom's own grid
    # The images in the order of their (shuffled) file names: each still finds its slice by its position.
    shuffled = sorted(series.glob("*.dcm"))
    assert [volume_k(p, volume.grid) for p in shuffled] != list(range(len(shuffled)))
    write_dicom_seg(tmp_path / "shuffled.seg.dcm", on_source, volume.grid, CLASSES, [str(p) for p in shuffled],
                    Algorithm("PLCLSegmentation", __version__, "model.pt"), "test")
    check_with_highdicom(tmp_path / "shuffled.seg.dcm", shuffled, on_source, volume.grid)
    read, read_grid = read_with_dcmqi(tmp_path / "shuffled.seg.dcm", tmp_path / "dcmqi_shuffled")
    assert np.array_equal(on_grid(read, read_grid, volume.grid), on_source)


def volume_k(path: Path, grid: Grid) -> int:
    import pydicom

    position = np.asarray(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, float)
    return int(round((np.linalg.inv(grid.ijk_to_lps()) @ np.append(position, 1))[2]))


def test_each_segment_carries_its_name_colour_codes_and_algorithm(tmp_path):
    import highdicom as hd

    voxels, labels, grid = phantom_case("axial")
    series = write_series(tmp_path / "series", voxels, grid.spacing, grid.origin, grid.direction_matrix)
    volume = read_volume(series)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    (tmp_path / "out" / "predictions").mkdir(parents=True)
    files = SegmentationWriters(["dicom-seg"], CLASSES, model).write(volume, labels, tmp_path / "out", EventSink())
    seg = hd.seg.segread(files["dicom-seg"][0])
    segments = {d.SegmentLabel: d for d in seg.SegmentSequence}
    assert list(segments) == [c.name for c in CLASSES]
    myocardium = segments["myocardium"]
    assert myocardium.SegmentedPropertyTypeCodeSequence[0].CodeValue == "74281007"
    assert myocardium.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    generic = segments["left ventricle"].SegmentedPropertyTypeCodeSequence[0]
    assert (generic.CodingSchemeDesignator, generic.CodeValue) == ("SCT", "85756007")
    rgb = hd.color.CIELabColor.from_dicom_value(segments["left ventricle"].RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, [round(255 * c) for c in CLASSES[2].color], atol=2)
    algorithm = segments["right ventricle"].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "PLCLSegmentation" and algorithm.AlgorithmVersion == __version__
    assert algorithm.AlgorithmParameters.startswith("model=model.pt sha256:")


def test_a_label_map_off_the_images_grid_is_refused(tmp_path):
    voxels, labels, grid = phantom_case("axial")
    series = write_series(tmp_path / "series", voxels, grid.spacing, grid.origin, grid.direction_matrix)
    volume = read_volume(series)
    shifted = Grid(grid.size, grid.spacing, tuple(np.add(grid.origin, (0.4, 0, 0)).tolist()), grid.direction)
    (tmp_path / "out" / "predictions").mkdir(parents=True)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    with pytest.raises(InputError, match="does not lie on a slice of the segmentation's grid"):
        SegmentationWriters(["dicom-seg"], CLASSES, model).write(Volume(volume.name, volume.path, volume.array,
                                                                        shifted), labels, tmp_path / "out",
                                                                 EventSink())
    assert not list((tmp_path / "out" / "predictions").iterdir())  # nothing, not even a partial file


def test_end_diastole_and_systole_come_from_the_class_that_changes_most():
    counts = [{"lv": 100, "myo": 50}, {"lv": 60, "myo": 51}, {"lv": 40, "myo": 49}, {"lv": 90, "myo": 50}]
    assert end_diastole_systole(counts) == (0, 2)
    assert end_diastole_systole([{"lv": 0}, {"lv": 0}]) == (0, 0)

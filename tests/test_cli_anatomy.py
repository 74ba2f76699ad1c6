"""``spect convert anatomy`` and the anatomy overlays of ``spect show``, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon.io import Acquisition, Anatomy, Study, read_study, write_study
from recon.io.nifti import write_nifti
from spectproj import ImageGrid, water_mu_per_mm
from tests.helpers import assert_ok, assert_one_line_error, invoke

GRID = ImageGrid((6, 8, 10), (4.0, 3.0, 2.0), (2.0, -3.0, 1.0))  # voxel 24 mm³ = 0.024 mL


def truth_labels() -> np.ndarray:
    labels = np.zeros(GRID.shape, np.int16)
    labels[:, 1:7, 1:9] = 1  # body (soft tissue)
    labels[1:4, 2:4, 2:5] = 3  # liver: 3·2·3 = 18 voxels
    labels[2:5, 4:6, 6:8] = 4  # spleen: 3·2·2 = 12 voxels
    return labels


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    labels = truth_labels()
    mu = np.where(labels > 0, water_mu_per_mm(140.5), 0.0).astype(np.float32)
    acq = Acquisition(
        angles_deg=(0.0, 180.0), detector_shape=(6, 10), pixel_size_mm=(4.0, 2.0), energy_keV=140.5
    )
    study = Study(
        projections=np.ones((2, 6, 10), np.float32),
        acquisition=acq,
        grid=GRID,
        mu_per_mm=mu,
        truth_activity=np.where(labels == 3, 5.0, 1.0).astype(np.float32) * (labels > 0),
        labels=labels,
        label_names={1: "body", 3: "liver", 4: "spleen"},
    )
    path = tmp_path / "study.h5"
    write_study(path, study)
    return path


@pytest.fixture
def label_map(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "labels.nii.gz", truth_labels(), GRID)


def test_nifti_label_map_with_names(study_file: Path, label_map: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "body", "3": "liver", "4": "spleen"}))
    out = tmp_path / "out.h5"
    result = invoke("convert", "anatomy", study_file, label_map, "--names", names, "-o", out)
    assert_ok(result)
    assert "18 voxels, 0.432 mL" in result.stdout  # liver
    assert "12 voxels, 0.288 mL" in result.stdout  # spleen
    assert f"wrote {out}" in result.stdout
    got = read_study(out)
    assert got.anatomy is not None
    assert dict(got.anatomy.names) == {1: "liver", 2: "spleen"}
    labels = truth_labels()
    np.testing.assert_array_equal(got.anatomy.mask("liver"), labels == 3)
    np.testing.assert_array_equal(got.anatomy.mask("spleen"), labels == 4)
    np.testing.assert_array_equal(got.anatomy.body, labels > 0)  # from the "body" class
    np.testing.assert_array_equal(got.labels, labels)  # the truth is kept as it was
    assert got.provenance["cli_command"] == "spect convert anatomy"
    assert read_study(study_file).anatomy is None  # the input is not changed


def test_threshold_and_warnings_on_stderr(study_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.h5"
    result = invoke("convert", "anatomy", study_file, "--threshold", "-o", out)
    assert_ok(result)
    got = read_study(out).anatomy
    assert got is not None and got.names == {}  # all soft tissue: no lungs, bone or gas
    np.testing.assert_array_equal(got.body, truth_labels() > 0)
    assert "threshold of the μ" in got.source


def test_folder_of_masks_warns_about_outside_voxels(study_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    liver = truth_labels() == 3
    liver[0, 0, 0] = True  # outside the body (μ = 0 there)
    write_nifti(folder / "liver.nii.gz", liver, GRID)
    write_nifti(folder / "urinary_bladder.nii", truth_labels() == 4, GRID)
    out = tmp_path / "m.h5"
    result = invoke("convert", "anatomy", study_file, folder, "-o", out)
    assert_ok(result)
    assert "warning:" in result.stderr and "1 labelled voxel(s) lie outside" in result.stderr
    got = read_study(out).anatomy
    assert got is not None and sorted(got.names.values()) == ["bladder", "liver"]
    np.testing.assert_array_equal(got.mask("liver"), truth_labels() == 3)


def test_refuses_overwrite_then_force(study_file: Path, label_map: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    out.write_text("keep")
    result = invoke("convert", "anatomy", study_file, "--threshold", "-o", out)
    assert_one_line_error(result, "already exists")
    assert out.read_text() == "keep"
    assert_ok(invoke("convert", "anatomy", study_file, "--threshold", "-o", out, "--force"))
    assert read_study(out).anatomy is not None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "give a segmentation SEG, or --threshold"),
        (["{map}", "--threshold"], "give a segmentation or threshold=True, not both"),
        (["{folder}", "--names", "{names}"], "--names applies to a NIfTI label map"),
        (["{map}", "--names", "{bad_names}"], "label values [3, 4] have no name"),
        (["{missing}"], "no such file or folder"),
        (["{far}"], "the segmentation does not overlap the study grid"),
        (["{text}"], "not a DICOM file"),
    ],
    ids=["nothing", "both", "names-folder", "unnamed", "missing", "far", "not-dicom"],
)
def test_bad_input_is_one_line_error_and_writes_nothing(
    study_file: Path, label_map: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "names.txt").write_text("1: body\n")
    (tmp_path / "bad.txt").write_text("1: body\n")
    (tmp_path / "seg.txt").write_text("not a segmentation")
    far = ImageGrid(GRID.shape, GRID.spacing_mm, (500.0, 0.0, 0.0))
    write_nifti(tmp_path / "far.nii", truth_labels(), far)
    values = {
        "map": label_map,
        "folder": tmp_path / "folder",
        "names": tmp_path / "names.txt",
        "bad_names": tmp_path / "bad.txt",
        "missing": tmp_path / "nope.nii.gz",
        "far": tmp_path / "far.nii",
        "text": tmp_path / "seg.txt",
    }
    out = tmp_path / "out.h5"
    argv = [a.format(**values) for a in args]
    result = invoke("convert", "anatomy", study_file, *argv, "-o", out)
    assert_one_line_error(result, fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--no-contours"], False)])
def test_show_passes_the_contours_option(
    study_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag, expected
) -> None:
    """The option reaches the figure (drawing itself is tested below, without the CLI)."""
    from matplotlib.figure import Figure

    from recon.evaluation import figures

    seen = {}

    def fake_study_figure(study, what, **kw):
        seen.update(kw, what=what)
        fig = Figure(figsize=(1, 1))
        fig.add_subplot()
        return fig

    monkeypatch.setattr(figures, "study_figure", fake_study_figure)
    png = tmp_path / "s.png"
    assert_ok(invoke("show", study_file, "--kind", "volume", *flag, "-o", png))
    assert seen["contours"] is expected and seen["what"] == "volume"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contours_follow_the_mask_in_the_figure() -> None:
    """The liver's outline on the transverse slice encloses exactly the liver's voxels; the
    body outline and the legend are drawn too."""
    from recon.evaluation import figures

    labels = truth_labels()
    anatomy = Anatomy((labels == 3).astype(np.int32), {1: "liver"}, labels > 0, "test")
    from matplotlib.figure import Figure

    fig = Figure()
    figures.draw_volume(
        fig, labels.astype(float), GRID, label="x", point=(2, 3, 3), anatomy=anatomy
    )
    transverse = fig.axes[5]
    liver, body = transverse.collections  # one contour set each, in this order
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["liver", "body outline"]
    paths = liver.get_paths()
    assert len(paths) == 1
    xs, ys = paths[0].vertices[:, 0], paths[0].vertices[:, 1]
    # liver at i = 2..4 (x = −4, −2, 0 mm ± 1), j = 2..3 (y = −7.5, −4.5 mm ± 1.5); the contour
    # at level 0.5 runs halfway between voxel centres, i.e. on the voxel edges.
    assert (xs.min(), xs.max()) == pytest.approx((-5.0, 1.0))
    assert (ys.min(), ys.max()) == pytest.approx((-9.0, -3.0))
    # body: i = 1..8 (x = −6..8 mm), j = 1..6 (y = −10.5..4.5 mm), edges 1 and 1.5 mm out
    bx, by = body.get_paths()[0].vertices.T
    assert (bx.min(), bx.max(), by.min(), by.max()) == pytest.approx((-7.0, 9.0, -12.0, 6.0))
    empty = Figure()
    figures.draw_volume(empty, labels.astype(float), GRID, label="x", point=(2, 3, 3))
    assert not empty.axes[5].collections and not empty.legends

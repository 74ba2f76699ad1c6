"""Anatomy (a segmentation given as an input) in study files: round trips, bad files, summary."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from recon.io import (
    FORMAT_VERSION,
    Acquisition,
    Anatomy,
    Study,
    StudyFileError,
    describe,
    read_study,
    write_study,
)
from recon.io.summary import summarize
from spectproj import ImageGrid

GRID = ImageGrid((3, 4, 5), (2.0, 3.0, 4.0), (0.0, 1.0, -1.0))  # voxel 24 mm³ = 0.024 mL


def anatomy(with_body: bool = True) -> Anatomy:
    labels = np.zeros(GRID.shape, np.int32)
    labels[0, :2, :2] = 1  # 4 voxels
    labels[1:, 2:, 3:] = 7  # 2·2·2 = 8 voxels
    body = None
    if with_body:
        body = np.zeros(GRID.shape, bool)
        body[:, :, 1:] = True
        body[0, :2, :2] = True
    return Anatomy(labels, {1: "liver", 7: "kidney_left", 9: "spleen"}, body, "test segmentation")


def study(anat: Anatomy | None) -> Study:
    acquisition = Acquisition(
        angles_deg=(0.0, 180.0), detector_shape=(3, 5), pixel_size_mm=(2.0, 4.0), energy_keV=140.5
    )
    return Study(
        projections=np.ones((2, 3, 5), np.float32),
        acquisition=acquisition,
        grid=GRID,
        anatomy=anat,
    )


def assert_anatomy_equal(got: Anatomy | None, want: Anatomy) -> None:
    assert got is not None
    assert got.labels.dtype == np.int32
    np.testing.assert_array_equal(got.labels, want.labels)
    assert dict(got.names) == dict(want.names)
    assert got.source == want.source
    if want.body is None:
        assert got.body is None
    else:
        assert got.body is not None and got.body.dtype == np.bool_
        np.testing.assert_array_equal(got.body, want.body)


@pytest.mark.parametrize("with_body", [True, False], ids=["body", "no-body"])
def test_anatomy_round_trip(tmp_path: Path, with_body: bool) -> None:
    path = tmp_path / "s.h5"
    want = anatomy(with_body)
    write_study(path, study(want))
    assert_anatomy_equal(read_study(path).anatomy, want)
    with h5py.File(path) as f:
        assert f.attrs["format_version"] == FORMAT_VERSION >= 3
        ds = f["/anatomy/labels"]
        assert ds.dtype == np.int32
        assert (ds.attrs["units"], ds.attrs["axes"]) == ("label", "z,y,x")
        assert list(ds.attrs["label_values"]) == [1, 7, 9]
        assert [n.decode() if isinstance(n, bytes) else n for n in ds.attrs["label_names"]] == [
            "liver",
            "kidney_left",
            "spleen",
        ]
        assert ("body" in f["anatomy"]) is with_body
        if with_body:
            assert f["/anatomy/body"].dtype == np.uint8
        assert "truth" not in f  # the anatomy is not the truth


def test_study_without_anatomy_has_no_group(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    write_study(path, study(None))
    assert read_study(path).anatomy is None
    with h5py.File(path) as f:
        assert "anatomy" not in f


def test_version_1_file_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "v1.h5"
    write_study(path, study(None))
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = np.int64(1)
    got = read_study(path)
    assert got.anatomy is None and got.projections.shape == (2, 3, 5)


def test_describe_and_summary_list_the_segments(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    write_study(path, study(anatomy()))
    rows = {row[0]: row for row in describe(path)}
    assert "segmentation given as an input" in rows["/anatomy/labels"][3]
    assert rows["/anatomy/labels@source"][3] == "where the segmentation came from"
    summary = dict(summarize(path))
    assert summary["anatomy"] == "test segmentation; 3 segment(s)"
    assert summary["  liver"] == "label 1: 4 voxels, 0.096 mL"
    assert summary["  kidney_left"] == "label 7: 8 voxels, 0.192 mL"
    assert summary["  spleen"] == "label 9: 0 voxels, 0 mL"
    assert summary["  body outline"] == "50 voxels, 1.2 mL"  # 3·4·4 + 2 of the liver at x=0
    assert "anatomy" in summary["also holds"]
    assert summary["check"].startswith("ok")


def test_study_refuses_anatomy_on_another_grid() -> None:
    # A Study checks its anatomy when it is made, so no such study reaches write_study.
    wrong = Anatomy(np.zeros((3, 4, 6), np.int32), {}, None, "")
    with pytest.raises(
        ValueError,
        match=r"Study\.anatomy: labels shape \(3, 4, 6\) does not match grid.shape \(3, 4, 5\)",
    ):
        study(wrong)


def test_write_refuses_anatomy_changed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    s = study(Anatomy(np.zeros((3, 4, 5), np.int32), {}, None, ""))
    assert s.anatomy is not None
    s.anatomy.labels[0, 0, 0] = 4  # an unnamed segment, added after the anatomy was checked
    with pytest.raises(
        StudyFileError, match=r"/anatomy/labels: cannot write: anatomy labels \[4\] have no name"
    ):
        write_study(path, s)
    assert list(tmp_path.iterdir()) == []


def _set_attr(where: str, name: str, value: object) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        f[where].attrs[name] = value

    return change


def _replace(where: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        data = make(f[where][()])
        attrs = dict(f[where].attrs)
        del f[where]
        ds = f.create_dataset(where, data=data)
        for k, v in attrs.items():
            ds.attrs[k] = v

    return change


def _set_value(where: str, index: tuple[int, ...], value: int) -> Callable[[h5py.File], None]:
    return _replace(where, lambda a: _with(a, index, value))


def _with(a: np.ndarray, index: tuple[int, ...], value: int) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


BAD_FILES = [
    (
        "float-labels",
        _replace("/anatomy/labels", lambda a: a.astype(np.float32)),
        "/anatomy/labels",
        "dtype float32 is not an integer type",
    ),
    (
        "labels-vs-grid",
        _replace("/anatomy/labels", lambda a: a[:, :, :4]),
        "/anatomy/labels",
        r"shape \(3, 4, 4\) does not match /grid shape \(3, 4, 5\)",
    ),
    (
        "negative-label",
        _set_value("/anatomy/labels", (2, 0, 0), -3),
        "/anatomy/labels",
        "contains negative label -3",
    ),
    (
        "unnamed-label",
        _set_value("/anatomy/labels", (2, 0, 0), 5),
        "/anatomy/labels",
        r"label values \[5\] have no name in label_names",
    ),
    (
        "names-missing",
        lambda f: [f["/anatomy/labels"].attrs.__delitem__(k) for k in ("label_values",)],
        "/anatomy/labels",
        "missing attribute 'label_values'",
    ),
    (
        "names-both-missing",
        lambda f: [
            f["/anatomy/labels"].attrs.__delitem__(k) for k in ("label_values", "label_names")
        ],
        "/anatomy/labels",
        "missing attributes 'label_values' and 'label_names'",
    ),
    (
        "names-count",
        _set_attr("/anatomy/labels", "label_names", np.array(["a", "b"], dtype=object)),
        "/anatomy/labels",
        "label_values has 3 entries but label_names has 2",
    ),
    (
        "repeated-name",
        _set_attr("/anatomy/labels", "label_names", np.array(["a", "b", "a"], dtype=object)),
        "/anatomy/labels",
        r"segment names are repeated: \['a'\]",
    ),
    (
        "named-zero",
        _set_attr("/anatomy/labels", "label_values", np.array([0, 7, 9])),
        "/anatomy/labels",
        "label 0 means 'no segment' and cannot be named",
    ),
    (
        "empty-name",
        _set_attr("/anatomy/labels", "label_names", np.array(["liver", " ", "x"], dtype=object)),
        "/anatomy/labels",
        "name of label 7 must be a non-empty string",
    ),
    (
        "labels-units",
        _set_attr("/anatomy/labels", "units", "mm"),
        "/anatomy/labels",
        "units are 'mm', expected 'label'",
    ),
    (
        "body-value",
        _set_value("/anatomy/body", (0, 0, 0), 2),
        "/anatomy/body",
        r"contains 1 value\(s\) other than 0 and 1",
    ),
    (
        "body-float",
        _replace("/anatomy/body", lambda a: a.astype(np.float64)),
        "/anatomy/body",
        "dtype float64 is not a mask",
    ),
    (
        "body-vs-grid",
        _replace("/anatomy/body", lambda a: a[:2]),
        "/anatomy/body",
        r"shape \(2, 4, 5\) does not match /grid shape \(3, 4, 5\)",
    ),
    (
        "body-axes",
        _set_attr("/anatomy/body", "axes", "x,y,z"),
        "/anatomy/body",
        "axes are 'x,y,z', expected 'z,y,x'",
    ),
]


@pytest.mark.parametrize(
    ("corruption", "dataset", "problem"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_anatomy_is_refused_in_one_line(
    tmp_path: Path, corruption: Callable[[h5py.File], None], dataset: str, problem: str
) -> None:
    path = tmp_path / "s.h5"
    write_study(path, study(anatomy()))
    with h5py.File(path, "r+") as f:
        corruption(f)
    with pytest.raises(StudyFileError) as info:
        read_study(path)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(rf"{re.escape(str(path))}: {re.escape(dataset)}: .*{problem}", message), message
    assert "FAILED" in dict(summarize(path))["check"]  # `spect info` still shows the file

"""Study and result files: round trips, one-line errors for broken files, atomic writing."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from recon.io import (
    FORMAT_VERSION,
    Acquisition,
    Result,
    Study,
    StudyFileError,
    atomic_output,
    describe,
    read_result,
    read_study,
    write_result,
    write_study,
)
from spectproj import ImageGrid

GRID = ImageGrid((2, 3, 4), (4.0, 3.0, 2.0), (1.0, -2.0, 0.5))
VOLUME = GRID.shape  # (Z, Y, X)
PROJ = (3, 2, 4)  # (V, rows, bins)


def full_study() -> Study:
    rng = np.random.default_rng(1)
    acquisition = Acquisition(
        angles_deg=(0.0, 90.0, 180.0),
        detector_shape=PROJ[1:],
        pixel_size_mm=(4.0, 2.0),
        energy_keV=140.5,
        radius_mm=210.0,
        isotope="Tc-99m",
        energy_window_keV=(126.0, 155.0),
        duration_s=20.0,
        sensitivity_cps_per_mbq=90.0,
        collimator="LEHR",
    )
    labels = rng.integers(0, 3, VOLUME).astype(np.int16)
    return Study(
        projections=rng.poisson(5.0, PROJ).astype(np.float32),
        acquisition=acquisition,
        grid=GRID,
        mu_per_mm=rng.uniform(0.0, 0.02, VOLUME).astype(np.float32),
        ct_hu=rng.uniform(-1000.0, 1000.0, VOLUME).astype(np.float32),
        background=rng.uniform(0.0, 1.0, PROJ).astype(np.float32),
        truth_activity=rng.uniform(0.0, 10.0, VOLUME).astype(np.float32),
        labels=labels,
        label_names={1: "liver", 2: "kidney (left)"},
        activity_unit="kBq/mL",
        provenance={"source": "phantom", "seed": "1", "note": "ünïcode ok"},
    )


def minimal_study() -> Study:
    acquisition = Acquisition(
        angles_deg=(0.0, 120.0, 240.0),
        detector_shape=PROJ[1:],
        pixel_size_mm=(4.0, 2.0),
        energy_keV=208.0,
    )
    projections = np.arange(np.prod(PROJ), dtype=np.float32).reshape(PROJ)
    return Study(projections=projections, acquisition=acquisition, grid=GRID)


def full_result() -> Result:
    rng = np.random.default_rng(2)
    return Result(
        activity=rng.uniform(0.0, 5.0, VOLUME).astype(np.float32),
        grid=GRID,
        method="osem",
        parameters={"iterations": 4, "subsets": 3, "psf": True, "beta": 0.5, "tags": ["a", "b"]},
        history={"loglik": np.array([-3.0, -2.0, -1.5]), "step_s": np.array([0.1, 0.1, 0.2])},
        activity_unit="Bq/mL",
        software_version="9.9.9",
        created_utc="2024-01-02T03:04:05Z",
        extras={
            "rendered": rng.uniform(0.0, 1.0, PROJ),
            "weights": rng.integers(-5, 5, (40, 40)).astype(np.int32),
            "scalar": np.array(3.5),
        },
        study_file="scan.h5",
    )


def assert_optional_equal(a: np.ndarray | None, b: np.ndarray | None) -> None:
    if a is None or b is None:
        assert a is None and b is None
    else:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def assert_study_equal(got: Study, want: Study) -> None:
    assert got.acquisition == want.acquisition
    assert got.grid == want.grid
    for name in ("projections", "mu_per_mm", "ct_hu", "background", "truth_activity", "labels"):
        assert_optional_equal(getattr(got, name), getattr(want, name))
    assert dict(got.label_names) == dict(want.label_names)
    assert got.activity_unit == want.activity_unit
    assert dict(got.provenance) == dict(want.provenance)


# ----------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("make", [full_study, minimal_study], ids=["full", "minimal"])
def test_study_round_trip(tmp_path: Path, make: Callable[[], Study]) -> None:
    study = make()
    path = tmp_path / "study.h5"
    write_study(path, study)
    assert_study_equal(read_study(path), study)


def test_minimal_study_leaves_optional_parts_out(tmp_path: Path) -> None:
    path = tmp_path / "study.h5"
    write_study(path, minimal_study())
    got = read_study(path)
    assert got.mu_per_mm is None and got.background is None and got.labels is None
    assert got.activity_unit == "Bq/mL" and dict(got.label_names) == {}
    with h5py.File(path) as f:
        assert "attenuation" not in f and "truth" not in f and "background" not in f
        assert "radius_mm" not in f["acquisition"].attrs
        assert f.attrs["format"] == "spect-study"
        assert f.attrs["format_version"] == FORMAT_VERSION


def test_study_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "study.h5"
    write_study(path, full_study())
    with h5py.File(path) as f:
        counts = f["projections/counts"]
        assert counts.dtype == np.float32 and counts.compression == "gzip"
        assert counts.attrs["units"] == "counts" and counts.attrs["axes"] == "view,row,bin"
        assert f["attenuation/mu"].attrs["units"] == "1/mm"
        assert f["attenuation/mu"].attrs["energy_keV"] == 140.5
        assert f["attenuation/ct_hu"].attrs["units"] == "HU"
        assert f["truth/activity"].attrs["units"] == "kBq/mL"
        assert f["grid"].attrs["frame"] == "DICOM LPS" and f["grid"].attrs["axes"] == "z,y,x"
        for name in ("software_version", "created_utc"):
            assert isinstance(f.attrs[name], str) and f.attrs[name]

        def has_units_and_axes(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                assert {"units", "axes"} <= set(obj.attrs), name

        f.visititems(has_units_and_axes)


def test_study_accepts_float64_and_tensors(tmp_path: Path) -> None:
    study = minimal_study()
    as_tensor = Study(
        projections=torch.from_numpy(study.projections.astype(np.float64)).requires_grad_(),
        acquisition=study.acquisition,
        grid=study.grid,
        mu_per_mm=torch.zeros(VOLUME, dtype=torch.float64),
    )
    path = tmp_path / "study.h5"
    write_study(path, as_tensor)
    got = read_study(path)
    assert got.projections.dtype == np.float32 and got.mu_per_mm.dtype == np.float32
    np.testing.assert_array_equal(got.projections, study.projections)


def test_result_round_trip(tmp_path: Path) -> None:
    result = full_result()
    path = tmp_path / "result.h5"
    write_result(path, result)
    got = read_result(path)
    np.testing.assert_array_equal(got.activity, result.activity)
    assert got.activity.dtype == np.float32
    for name in ("grid", "method", "activity_unit", "software_version", "created_utc"):
        assert getattr(got, name) == getattr(result, name), name
    assert got.study_file == "scan.h5"
    assert dict(got.parameters) == dict(result.parameters)
    assert set(got.history) == set(result.history)
    for name, values in result.history.items():
        np.testing.assert_array_equal(got.history[name], values)
    assert set(got.extras) == set(result.extras)
    for name, values in result.extras.items():
        assert got.extras[name].dtype == values.dtype
        np.testing.assert_array_equal(got.extras[name], values)


def test_result_fills_version_time_and_converts_numpy_parameters(tmp_path: Path) -> None:
    result = Result(
        activity=np.ones(VOLUME, np.float32),
        grid=GRID,
        method="mlem",
        parameters={"iterations": np.int64(7), "sigma": np.float32(0.5), "w": np.arange(2)},
    )
    path = tmp_path / "result.h5"
    write_result(path, result)
    got = read_result(path)
    assert got.parameters == {"iterations": 7, "sigma": 0.5, "w": [0, 1]}
    assert got.software_version and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got.created_utc
    )
    assert got.study_file is None and dict(got.history) == {} and dict(got.extras) == {}


def test_describe_lists_datasets_and_attributes(tmp_path: Path) -> None:
    path = tmp_path / "study.h5"
    write_study(path, full_study())
    rows = describe(path)
    assert all(len(row) == 4 and all(isinstance(x, str) for x in row) for row in rows)
    by_path = {row[0]: row for row in rows}
    assert by_path["/projections/counts"][1:3] == ("3×2×4", "float32")
    assert by_path["/projections/counts"][3].startswith("counts")
    assert by_path["/grid@spacing_mm"][1:3] == ("3", "float64")
    assert "mm" in by_path["/grid@spacing_mm"][3]
    assert by_path["/@format"][2] == "string"
    assert by_path["/attenuation/mu"][3].startswith("1/mm")


def test_describe_shows_a_file_that_does_not_validate(tmp_path: Path) -> None:
    path = tmp_path / "study.h5"
    write_study(path, minimal_study())
    with h5py.File(path, "r+") as f:
        f["projections/counts"][0, 0, 0] = np.nan
    assert "/projections/counts" in {row[0] for row in describe(path)}
    with pytest.raises(StudyFileError):
        read_study(path)


# ----------------------------------------------------------------------------------------------
# Broken files: each is a good file corrupted with h5py (or at the byte level)


def replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    """Replace dataset ``name`` by ``data``, keeping its attributes."""
    attrs = dict(f[name].attrs)
    del f[name]
    ds = f.create_dataset(name, data=data)
    for key, value in attrs.items():
        ds.attrs[key] = value


def set_value(name: str, index: tuple[int, ...], value: float) -> Callable[[h5py.File], None]:
    def corrupt(f: h5py.File) -> None:
        data = f[name][()]
        data[index] = value
        f[name][...] = data

    return corrupt


def set_attr(name: str, key: str, value: object) -> Callable[[h5py.File], None]:
    def corrupt(f: h5py.File) -> None:
        f[name].attrs[key] = value

    return corrupt


def del_attr(name: str, key: str) -> Callable[[h5py.File], None]:
    def corrupt(f: h5py.File) -> None:
        del f[name].attrs[key]

    return corrupt


def delete(name: str) -> Callable[[h5py.File], None]:
    def corrupt(f: h5py.File) -> None:
        del f[name]

    return corrupt


def retype(name: str, convert: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    def corrupt(f: h5py.File) -> None:
        replace(f, name, convert(f[name][()]))

    return corrupt


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def plain_hdf5(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)


STUDY_CASES = [
    # (id, corruption of the h5py file or of the path, dataset, problem regex)
    ("missing-counts", delete("projections/counts"), "/projections/counts", "missing required"),
    ("missing-grid", delete("grid"), "/grid", "missing required group"),
    ("missing-angles", delete("acquisition/angles_deg"), "/acquisition/angles_deg", "missing"),
    (
        "missing-energy",
        del_attr("acquisition", "energy_keV"),
        "/acquisition",
        "missing required attribute 'energy_keV'",
    ),
    (
        "missing-units",
        del_attr("attenuation/mu", "units"),
        "/attenuation/mu",
        "missing required attribute 'units'",
    ),
    (
        "counts-string",
        retype("projections/counts", lambda a: a.astype("S8")),
        "/projections/counts",
        "dtype string is not numeric",
    ),
    (
        "counts-complex",
        retype("projections/counts", lambda a: a.astype(np.complex64)),
        "/projections/counts",
        "dtype complex64 is complex",
    ),
    (
        "mu-bool",
        retype("attenuation/mu", lambda a: a > 0),
        "/attenuation/mu",
        "dtype bool is not numeric",
    ),
    (
        "labels-float",
        retype("truth/labels", lambda a: a.astype(np.float32)),
        "/truth/labels",
        "dtype float32 is not an integer type",
    ),
    (
        "counts-nan",
        set_value("projections/counts", (1, 0, 2), np.nan),
        "/projections/counts",
        r"contains 1 NaN/Inf value",
    ),
    (
        "mu-inf",
        set_value("attenuation/mu", (0, 1, 1), np.inf),
        "/attenuation/mu",
        "contains 1 NaN/Inf value",
    ),
    (
        "background-nan",
        set_value("background/counts", (0, 0, 0), np.nan),
        "/background/counts",
        "NaN/Inf",
    ),
    (
        "truth-inf",
        set_value("truth/activity", (0, 0, 0), -np.inf),
        "/truth/activity",
        "NaN/Inf",
    ),
    (
        "counts-negative",
        set_value("projections/counts", (0, 1, 3), -2.0),
        "/projections/counts",
        r"contains 1 negative value\(s\) \(minimum -2\)",
    ),
    (
        "background-negative",
        set_value("background/counts", (2, 1, 0), -0.5),
        "/background/counts",
        "negative",
    ),
    ("mu-negative", set_value("attenuation/mu", (1, 2, 3), -0.01), "/attenuation/mu", "negative"),
    (
        "counts-huge",
        set_value("projections/counts", (0, 1, 2), 3e30),
        "/projections/counts",
        r"contains 1 value\(s\) above 1e\+15 \(maximum 3e\+30\); counts must be <= 1e\+15",
    ),
    (
        "background-inf",
        set_value("background/counts", (0, 1, 2), np.inf),
        "/background/counts",
        r"contains 1 NaN/Inf value\(s\); background counts must be finite",
    ),
    (
        "labels-float",
        retype("truth/labels", lambda a: a.astype(np.float32)),
        "/truth/labels",
        "dtype float32 is not an integer type",
    ),
    (
        "truth-negative",
        set_value("truth/activity", (1, 0, 0), -1.0),
        "/truth/activity",
        "negative",
    ),
    (
        "counts-2d",
        retype("projections/counts", lambda a: a[0]),
        "/projections/counts",
        r"shape \(2, 4\) is not 3D",
    ),
    (
        "views-vs-angles",
        retype("acquisition/angles_deg", lambda a: a[:2]),
        "/projections/counts",
        "3 views but acquisition.angles_deg has 2 angles",
    ),
    (
        "detector-shape",
        set_attr("acquisition", "detector_shape", np.array([2, 5])),
        "/projections/counts",
        r"detector size \(2, 4\) does not match acquisition.detector_shape \(2, 5\)",
    ),
    (
        "mu-vs-grid",
        retype("attenuation/mu", lambda a: np.zeros((2, 3, 5), np.float32)),
        "/attenuation/mu",
        r"shape \(2, 3, 5\) does not match grid.shape \(2, 3, 4\)",
    ),
    (
        "grid-shape",
        set_attr("grid", "shape", np.array([2, 3, 5])),
        "/attenuation/mu",
        r"does not match grid.shape \(2, 3, 5\)",
    ),
    (
        "background-vs-counts",
        retype("background/counts", lambda a: a[:2]),
        "/background/counts",
        r"shape \(2, 2, 4\) does not match projections shape \(3, 2, 4\)",
    ),
    (
        "grid-spacing",
        set_attr("grid", "spacing_mm", np.array([4.0, -3.0, 2.0])),
        "/grid",
        "spacing_mm must be three positive lengths",
    ),
    (
        "grid-axes",
        set_attr("grid", "axes", "x,y,z"),
        "/grid",
        "axes is 'x,y,z', expected 'z,y,x'",
    ),
    (
        "mu-units",
        set_attr("attenuation/mu", "units", "1/cm"),
        "/attenuation/mu",
        "units are '1/cm', expected '1/mm'",
    ),
    (
        "counts-axes",
        set_attr("projections/counts", "axes", "bin,row,view"),
        "/projections/counts",
        "axes are 'bin,row,view', expected 'view,row,bin'",
    ),
    (
        "truth-unit",
        set_attr("truth/activity", "units", "MBq/mL"),
        "/truth/activity",
        "units are 'MBq/mL', expected 'kBq/mL'",
    ),
    (
        "mu-energy",
        set_attr("attenuation/mu", "energy_keV", 208.0),
        "/attenuation/mu",
        "μ is given at 208 keV but the acquisition energy_keV is 140.5 keV",
    ),
    (
        "energy-zero",
        set_attr("acquisition", "energy_keV", 0.0),
        "/acquisition",
        "energy_keV must be a positive energy",
    ),
    (
        "energy-string",
        set_attr("acquisition", "energy_keV", "140"),
        "/acquisition",
        "attribute 'energy_keV' must be numbers",
    ),
    (
        "window-order",
        set_attr("acquisition", "energy_window_keV", np.array([155.0, 126.0])),
        "/acquisition",
        "energy_window_keV must be two positive energies low < high",
    ),
    (
        "label-names-alone",
        del_attr("truth/labels", "label_values"),
        "/truth/labels",
        "missing attribute 'label_values'",
    ),
    (
        "newer-version",
        set_attr("/", "format_version", np.int64(FORMAT_VERSION + 1)),
        "/",
        re.escape(
            f"written by a newer spect (format version {FORMAT_VERSION + 1} > {FORMAT_VERSION}); "
            "upgrade spect"
        ),
    ),
    (
        "version-string",
        set_attr("/", "format_version", "1"),
        "/",
        "format_version must be an integer",
    ),
    (
        "result-format",
        set_attr("/", "format", "spect-result"),
        "/",
        r"format is 'spect-result' \(a result file\), expected 'spect-study'",
    ),
    ("other-format", set_attr("/", "format", "nifti"), "/", "format is 'nifti'"),
    ("no-format", del_attr("/", "format"), "/", "missing attribute 'format': not a spect"),
    ("plain-hdf5", plain_hdf5, "/", "missing attribute 'format'"),
    ("truncated", truncate, "/", "truncated or damaged HDF5 file"),
    ("garbage", garbage, "/", "not an HDF5 file"),
    ("empty", empty, "/", "not an HDF5 file"),
]

RESULT_CASES = [
    ("missing-activity", delete("activity"), "/activity", "missing required dataset"),
    ("missing-method", delete("method"), "/method", "missing required group"),
    (
        "activity-negative",
        set_value("activity", (0, 0, 0), -1.0),
        "/activity",
        "contains 1 negative",
    ),
    ("activity-nan", set_value("activity", (1, 2, 3), np.nan), "/activity", "NaN/Inf"),
    (
        "activity-vs-grid",
        set_attr("grid", "shape", np.array([2, 4, 4])),
        "/activity",
        r"shape \(2, 3, 4\) does not match grid.shape \(2, 4, 4\)",
    ),
    (
        "activity-complex",
        retype("activity", lambda a: a.astype(np.complex128)),
        "/activity",
        "is complex",
    ),
    (
        "history-lengths",
        retype("history/loglik", lambda a: a[:2]),
        "/history",
        r"arrays differ in length \(loglik: 2, step_s: 3\)",
    ),
    (
        "history-2d",
        retype("history/loglik", lambda a: a[None]),
        "/history/loglik",
        r"is not 1D",
    ),
    (
        "extras-string",
        retype("extras/scalar", lambda a: np.array(b"x")),
        "/extras/scalar",
        "dtype string is not numeric",
    ),
    (
        "parameters-json",
        set_attr("method", "parameters", "{not json"),
        "/method",
        "attribute 'parameters' is not valid JSON",
    ),
    (
        "parameters-list",
        set_attr("method", "parameters", "[1, 2]"),
        "/method",
        "not a JSON object",
    ),
    (
        "study-format",
        set_attr("/", "format", "spect-study"),
        "/",
        r"format is 'spect-study' \(a study file\), expected 'spect-result'",
    ),
    (
        "newer-version",
        set_attr("/", "format_version", np.int64(7)),
        "/",
        rf"format version 7 > {FORMAT_VERSION}\); upgrade spect",
    ),
    ("truncated", truncate, "/", "truncated or damaged HDF5 file"),
    ("garbage", garbage, "/", "not an HDF5 file"),
]


def corrupt_file(path: Path, corruption: Callable) -> None:
    if corruption in (truncate, garbage, empty, plain_hdf5):
        corruption(path)
    else:
        with h5py.File(path, "r+") as f:
            corruption(f)


def assert_error(error: StudyFileError, path: Path, dataset: str, problem: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert re.match(rf"{re.escape(str(path))}: {re.escape(dataset)}: .*{problem}", message), message
    assert (error.file, error.dataset) == (str(path), dataset)


@pytest.mark.parametrize(
    ("corruption", "dataset", "problem"),
    [case[1:] for case in STUDY_CASES],
    ids=[case[0] for case in STUDY_CASES],
)
def test_broken_study_file(
    tmp_path: Path, corruption: Callable, dataset: str, problem: str
) -> None:
    path = tmp_path / "broken study.h5"
    write_study(path, full_study())
    corrupt_file(path, corruption)
    with pytest.raises(StudyFileError) as info:
        read_study(path)
    assert_error(info.value, path, dataset, problem)


@pytest.mark.parametrize(
    ("corruption", "dataset", "problem"),
    [case[1:] for case in RESULT_CASES],
    ids=[case[0] for case in RESULT_CASES],
)
def test_broken_result_file(
    tmp_path: Path, corruption: Callable, dataset: str, problem: str
) -> None:
    path = tmp_path / "result.h5"
    write_result(path, full_result())
    corrupt_file(path, corruption)
    with pytest.raises(StudyFileError) as info:
        read_result(path)
    assert_error(info.value, path, dataset, problem)


def test_describe_refuses_a_non_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(StudyFileError, match=r"notes\.txt: /: not an HDF5 file"):
        describe(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.h5: no such file"):
        read_study(tmp_path / "nothing.h5")


def test_study_file_error_is_one_line_value_error_and_picklable() -> None:
    error = StudyFileError("a.h5", "/x", "bad\nthing")
    assert isinstance(error, ValueError)
    assert str(error) == "a.h5: /x: bad thing"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.file, copy.dataset, copy.problem, str(copy)) == (
        "a.h5",
        "/x",
        "bad\nthing",
        str(error),
    )


# ----------------------------------------------------------------------------------------------
# Writing refuses what it could not read back


# A `Study` or `Result` refuses bad fields when it is made (tests/test_study_model.py); writing
# checks it again, because its arrays can be changed in place after it was made.


def set_projection_nan(study: Study) -> None:
    study.projections[0, 0, 0] = np.nan


def set_mu_negative(study: Study) -> None:
    assert study.mu_per_mm is not None
    study.mu_per_mm[1, 2, 3] = -0.5


def set_background_huge(study: Study) -> None:
    assert study.background is not None
    study.background[2, 1, 0] = 1e31


def add_label_names(study: Study) -> None:
    study.label_names[7] = 3  # type: ignore[index]  # a non-string name added after checking


@pytest.mark.parametrize(
    ("change", "dataset", "problem"),
    [
        (set_projection_nan, "/projections/counts", "contains 1 NaN/Inf"),
        (set_mu_negative, "/attenuation/mu", r"contains 1 negative value\(s\) \(minimum -0.5\)"),
        (set_background_huge, "/background/counts", "contains 1 value.* above 1e\\+15"),
        (add_label_names, "/truth/labels", "name of label 7 is not a string"),
    ],
    ids=["nan", "mu-negative", "background-huge", "label-name"],
)
def test_write_study_refuses_a_study_changed_in_place(
    tmp_path: Path, change: Callable[[Study], None], dataset: str, problem: str
) -> None:
    study = full_study()
    change(study)
    path = tmp_path / "study.h5"
    with pytest.raises(StudyFileError) as info:
        write_study(path, study)
    assert_error(info.value, path, dataset, "cannot write: .*" + problem)
    assert list(tmp_path.iterdir()) == []


def test_write_result_refuses_bad_result(tmp_path: Path) -> None:
    path = tmp_path / "result.h5"
    negative = full_result()
    negative.activity[0, 0, 0] = -1.0
    unserialisable = full_result()
    unserialisable.parameters["f"] = print  # type: ignore[index]  # changed after checking
    uneven = full_result()
    uneven.history["loglik"] = np.ones(2)  # type: ignore[index]  # changed after checking
    bad = [
        (negative, "/activity", "contains 1 negative"),
        (unserialisable, "/method", "not JSON-serialisable"),
        (uneven, "/history", r"arrays differ in length \(loglik: 2, step_s: 3\)"),
        (Result(np.ones(VOLUME), GRID, "mlem", history={"a/b": np.ones(2)}), "/history", "name"),
    ]
    for result, dataset, problem in bad:
        with pytest.raises(StudyFileError) as info:
            write_result(path, result)
        assert_error(info.value, path, dataset, "cannot write: .*" + problem)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_objects_that_are_not_a_study_or_result(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"study must be a recon\.io\.Study, got dict"):
        write_study(tmp_path / "s.h5", {})  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(TypeError, match=r"result must be a recon\.io\.Result, got Study"):
        write_result(tmp_path / "r.h5", full_study())  # type: ignore[arg-type]  # idem
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Atomic writing


def test_existing_file_is_kept_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "study.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"study\.h5.*--force.*overwrite=True"):
        write_study(path, minimal_study())
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["study.h5"]

    write_study(path, minimal_study(), overwrite=True)
    assert_study_equal(read_study(path), minimal_study())
    with pytest.raises(FileExistsError):
        write_result(path, full_result())
    write_result(path, full_result(), overwrite=True)
    assert read_result(path).method == "osem"
    assert [p.name for p in tmp_path.iterdir()] == ["study.h5"]


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exception: type, existing: bool
) -> None:
    path = tmp_path / "study.h5"
    if existing:
        path.write_bytes(b"old")

    def fail(*args: object, **kwargs: object) -> None:
        raise exception("simulated failure")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(exception, match="simulated failure"):
        write_study(path, full_study(), overwrite=True)
    if existing:
        assert path.read_bytes() == b"old"
        assert [p.name for p in tmp_path.iterdir()] == ["study.h5"]
    else:
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exception", [ValueError, KeyboardInterrupt])
def test_atomic_output_cleans_up_on_exception(tmp_path: Path, exception: type) -> None:
    path = tmp_path / "out.json"
    with pytest.raises(exception), atomic_output(path) as tmp:
        tmp.write_text("half")
        assert tmp.exists()
        raise exception("stop")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_writes_through_a_hidden_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    with atomic_output(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.json.tmp-")
        assert not path.exists()
        tmp.write_text("{}")
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(FileExistsError, match="--force"), atomic_output(path):
        pass
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text("[]")
    assert path.read_text() == "[]"


def test_atomic_output_refuses_a_file_created_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with pytest.raises(FileExistsError), atomic_output(path) as tmp:
        tmp.write_text("new")
        path.write_text("someone else")
    assert path.read_text() == "someone else"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_output_needs_an_existing_folder(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="does not exist"),
        atomic_output(tmp_path / "missing" / "out.h5"),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_temporary_names_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with atomic_output(path, overwrite=True) as a, atomic_output(path) as b:
        assert a != b
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert path.read_bytes() == b"a"  # the outer block finished last
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert os.access(path, os.R_OK)

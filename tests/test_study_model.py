"""`Study`, `Result` and `Acquisition` check themselves when they are made (recon.io.study).

Each bad construction raises a ValueError/TypeError whose one-line message names the class and
field, the expectation and the actual value; good ones are normalised without copying.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recon.io import Acquisition, Anatomy, Result, Study
from recon.io.errors import FieldError, FieldTypeError, FieldValueError
from recon.io.study import MAX_COUNTS
from spectproj import ImageGrid

GRID = ImageGrid((2, 3, 4), (4.0, 3.0, 2.0))
VOLUME = GRID.shape  # (Z, Y, X)
PROJ = (3, 2, 4)  # (V, rows, bins)
ACQ = Acquisition(
    angles_deg=(0.0, 120.0, 240.0),
    detector_shape=PROJ[1:],
    pixel_size_mm=(4.0, 2.0),
    energy_keV=140.5,
)


def study(**changes: Any) -> Study:
    fields: dict[str, Any] = {
        "projections": np.ones(PROJ, np.float32),
        "acquisition": ACQ,
        "grid": GRID,
    }
    fields.update(changes)
    return Study(**fields)


def result(**changes: Any) -> Result:
    fields: dict[str, Any] = {
        "activity": np.ones(VOLUME, np.float32),
        "grid": GRID,
        "method": "mlem",
    }
    fields.update(changes)
    return Result(**fields)


def with_value(shape: tuple[int, ...], index: tuple[int, ...], value: float) -> np.ndarray:
    a = np.ones(shape, np.float32)
    a[index] = value
    return a


LABELS = np.zeros(VOLUME, np.int16)

BAD_STUDIES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("acquisition-type", lambda: study(acquisition={}), TypeError,
     r"Study\.acquisition: must be of type Acquisition, got dict"),
    ("grid-type", lambda: study(grid=(2, 3, 4)), TypeError,
     r"Study\.grid: must be of type ImageGrid, got tuple"),
    ("projections-none", lambda: study(projections=None), TypeError,
     r"Study\.projections: must be an array of counts, got NoneType"),
    ("projections-string", lambda: study(projections=np.full(PROJ, "a")), TypeError,
     r"Study\.projections: dtype string is not numeric"),
    ("projections-complex", lambda: study(projections=np.ones(PROJ, complex)), TypeError,
     r"Study\.projections: dtype complex128 is complex; counts must be real numbers"),
    ("projections-2d", lambda: study(projections=np.ones(PROJ[1:])), ValueError,
     r"Study\.projections: shape \(2, 4\) is not 3D \[view, row, bin\]"),
    ("projections-views", lambda: study(projections=np.ones((2, 2, 4))), ValueError,
     r"Study\.projections: 2 views but acquisition\.angles_deg has 3 angles"),
    ("projections-detector", lambda: study(projections=np.ones((3, 4, 2))), ValueError,
     r"detector size \(4, 2\) does not match acquisition\.detector_shape \(2, 4\)"),
    ("projections-nan", lambda: study(projections=with_value(PROJ, (0, 1, 2), np.nan)),
     ValueError, r"Study\.projections: contains 1 NaN/Inf value\(s\); counts must be finite"),
    ("projections-inf", lambda: study(projections=with_value(PROJ, (0, 1, 2), np.inf)),
     ValueError, r"Study\.projections: contains 1 NaN/Inf"),
    ("projections-negative", lambda: study(projections=with_value(PROJ, (2, 0, 0), -2.5)),
     ValueError, r"contains 1 negative value\(s\) \(minimum -2\.5\); counts must be >= 0"),
    ("projections-huge", lambda: study(projections=with_value(PROJ, (1, 1, 1), 2e15)),
     ValueError,
     r"Study\.projections: contains 1 value\(s\) above 1e\+15 \(maximum 2e\+15\); counts must be"
     r" <= 1e\+15"),
    ("projections-3e38", lambda: study(projections=with_value(PROJ, (1, 1, 1), 3e38)),
     ValueError, r"contains 1 value\(s\) above 1e\+15 \(maximum 3e\+38\)"),
    ("projections-huge-float64",
     lambda: study(projections=np.full(PROJ, 1e35)), ValueError,
     r"contains 24 value\(s\) above 1e\+15 \(maximum 1e\+35\)"),
    ("background-shape", lambda: study(background=np.ones((3, 2, 5))), ValueError,
     r"Study\.background: shape \(3, 2, 5\) does not match projections shape \(3, 2, 4\)"),
    ("background-nan", lambda: study(background=with_value(PROJ, (0, 0, 0), np.nan)), ValueError,
     r"Study\.background: contains 1 NaN/Inf value\(s\); background counts must be finite"),
    ("background-negative", lambda: study(background=with_value(PROJ, (0, 0, 0), -1.0)),
     ValueError, r"Study\.background: contains 1 negative"),
    ("background-huge", lambda: study(background=with_value(PROJ, (0, 0, 0), 1e31)), ValueError,
     r"Study\.background: contains 1 value\(s\) above 1e\+15"),
    ("mu-grid", lambda: study(mu_per_mm=np.zeros((2, 3, 5))), ValueError,
     r"Study\.mu_per_mm: shape \(2, 3, 5\) does not match grid\.shape \(2, 3, 4\)"),
    ("mu-2d", lambda: study(mu_per_mm=np.zeros((3, 4))), ValueError,
     r"Study\.mu_per_mm: shape \(3, 4\) is not 3D \[z, y, x\]"),
    ("mu-negative", lambda: study(mu_per_mm=with_value(VOLUME, (1, 2, 3), -0.01)), ValueError,
     r"Study\.mu_per_mm: contains 1 negative value\(s\) \(minimum -0\.01\); μ \(1/mm\) must be"),
    ("ct-nan", lambda: study(ct_hu=with_value(VOLUME, (0, 0, 0), np.nan)), ValueError,
     r"Study\.ct_hu: contains 1 NaN/Inf"),
    ("truth-negative", lambda: study(truth_activity=with_value(VOLUME, (0, 0, 0), -3.0)),
     ValueError, r"Study\.truth_activity: contains 1 negative value\(s\) \(minimum -3\)"),
    ("labels-float", lambda: study(labels=np.zeros(VOLUME)), TypeError,
     r"Study\.labels: dtype float64 is not an integer type"),
    ("labels-grid", lambda: study(labels=np.zeros((2, 3, 3), np.int32)), ValueError,
     r"Study\.labels: shape \(2, 3, 3\) does not match grid\.shape \(2, 3, 4\)"),
    ("names-without-labels", lambda: study(label_names={1: "liver"}), ValueError,
     r"Study\.label_names: label names are given but there are no labels"),
    ("names-key", lambda: study(labels=LABELS, label_names={"1": "liver"}), TypeError,
     r"Study\.label_names: label value '1' is not an integer"),
    ("names-value", lambda: study(labels=LABELS, label_names={1: 5}), TypeError,
     r"Study\.label_names: name of label 1 is not a string: 5"),
    ("names-mapping", lambda: study(labels=LABELS, label_names=[1, 2]), TypeError,
     r"Study\.label_names: must be a mapping, got list"),
    ("unit-empty", lambda: study(activity_unit=" "), ValueError,
     r"Study\.activity_unit: must be a non-empty string, got ' '"),
    ("unit-type", lambda: study(activity_unit=None), TypeError,
     r"Study\.activity_unit: must be a string, got NoneType None"),
    ("provenance-type", lambda: study(provenance="scan.dcm"), TypeError,
     r"Study\.provenance: must be a mapping, got str"),
    ("anatomy-type", lambda: study(anatomy=LABELS), TypeError,
     r"Study\.anatomy: must be of type Anatomy, got ndarray"),
    ("anatomy-grid", lambda: study(anatomy=Anatomy(np.zeros((2, 3, 5), np.int32), {})),
     ValueError,
     r"Study\.anatomy: labels shape \(2, 3, 5\) does not match grid\.shape \(2, 3, 4\)"),
    ("angles-empty", lambda: replace(ACQ, angles_deg=()), ValueError,
     r"Acquisition\.angles_deg: no angles: there must be at least one view"),
    ("angles-nan", lambda: replace(ACQ, angles_deg=(0.0, np.nan, 1.0)), ValueError,
     r"Acquisition\.angles_deg: contains NaN/Inf angles"),
    ("detector-zero", lambda: replace(ACQ, detector_shape=(0, 4)), ValueError,
     r"Acquisition\.detector_shape: detector_shape must be two positive integers \(rows, bins\),"
     r" got \(0, 4\)"),
    ("pixel-negative", lambda: replace(ACQ, pixel_size_mm=(4.0, -2.0)), ValueError,
     r"Acquisition\.pixel_size_mm: pixel_size_mm must be two positive lengths \(mm\), got "
     r"\(4\.0, -2\.0\)"),
    ("window-order", lambda: replace(ACQ, energy_window_keV=(155.0, 126.0)), ValueError,
     r"Acquisition\.energy_window_keV: .* low < high \(keV\), got \(155\.0, 126\.0\)"),
    ("energy-zero", lambda: replace(ACQ, energy_keV=0.0), ValueError,
     r"Acquisition\.energy_keV: energy_keV must be a positive energy \(keV\), got 0\.0"),
    ("detector-type", lambda: replace(ACQ, detector_shape=("a", 4)), TypeError,
     r"Acquisition\.detector_shape: must be a sequence of numbers, got \('a', 4\)"),
    ("angles-type", lambda: replace(ACQ, angles_deg=5.0), TypeError,
     r"Acquisition\.angles_deg: must be a sequence of numbers, got 5\.0"),
    ("isotope-type", lambda: replace(ACQ, isotope=99), TypeError,
     r"Acquisition\.isotope: isotope must be a string, got int"),
]  # fmt: skip

BAD_RESULTS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("grid-type", lambda: result(grid=None), TypeError, r"Result\.grid: must be of type ImageGrid"),
    ("activity-none", lambda: result(activity=None), TypeError,
     r"Result\.activity: must be an array of activity, got NoneType"),
    ("activity-grid", lambda: result(activity=np.ones((2, 4, 4))), ValueError,
     r"Result\.activity: shape \(2, 4, 4\) does not match grid\.shape \(2, 3, 4\)"),
    ("activity-nan", lambda: result(activity=with_value(VOLUME, (1, 2, 3), np.nan)), ValueError,
     r"Result\.activity: contains 1 NaN/Inf value\(s\); activity must be finite"),
    ("activity-negative", lambda: result(activity=np.full(VOLUME, -1.0)), ValueError,
     r"Result\.activity: contains 24 negative value\(s\) \(minimum -1\)"),
    ("activity-complex", lambda: result(activity=np.ones(VOLUME, complex)), TypeError,
     r"Result\.activity: dtype complex128 is complex"),
    ("method-empty", lambda: result(method=""), ValueError,
     r"Result\.method: must be a non-empty string, got ''"),
    ("method-type", lambda: result(method=3), TypeError,
     r"Result\.method: must be a string, got int 3"),
    ("parameters-json", lambda: result(parameters={"f": print}), TypeError,
     r"Result\.parameters: are not JSON-serialisable \(builtin_function_or_method is not"),
    ("parameters-key", lambda: result(parameters={1: "a"}), TypeError,
     r"Result\.parameters: keys must be non-empty strings, got 1"),
    ("parameters-type", lambda: result(parameters=[("a", 1)]), TypeError,
     r"Result\.parameters: must be a mapping, got list"),
    ("history-2d", lambda: result(history={"loglik": np.ones((1, 3))}), ValueError,
     r"Result\.history\['loglik'\]: shape \(1, 3\) is not 1D"),
    ("history-lengths", lambda: result(history={"a": np.ones(2), "b": np.ones(3)}), ValueError,
     r"Result\.history: arrays differ in length \(a: 2, b: 3\); they must be equal"),
    ("history-string", lambda: result(history={"a": np.array(["x"])}), TypeError,
     r"Result\.history\['a'\]: dtype string is not numeric"),
    ("history-key", lambda: result(history={"": np.ones(2)}), TypeError,
     r"Result\.history: keys must be non-empty strings, got ''"),
    ("extras-object", lambda: result(extras={"w": np.array([None])}), TypeError,
     r"Result\.extras\['w'\]: dtype object is not numeric"),
    ("unit-empty", lambda: result(activity_unit=""), ValueError,
     r"Result\.activity_unit: must be a non-empty string"),
    ("created-type", lambda: result(created_utc=None), TypeError,
     r"Result\.created_utc: must be a string, got NoneType"),
    ("study-file-type", lambda: result(study_file=3), TypeError,
     r"Result\.study_file: must be a path or None, got int"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [case[1:] for case in BAD_STUDIES + BAD_RESULTS],
    ids=[f"study-{c[0]}" for c in BAD_STUDIES] + [f"result-{c[0]}" for c in BAD_RESULTS],
)
def test_bad_construction_is_refused_with_one_clear_line(
    make: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        make()
    assert isinstance(info.value, FieldValueError if error is ValueError else FieldTypeError)
    assert "\n" not in str(info.value)


def test_field_error_names_its_parts_and_pickles() -> None:
    with pytest.raises(FieldError) as info:
        result(history={"loglik": np.ones((1, 3))})
    e = info.value
    assert (e.owner, e.field, e.key, e.problem) == (
        "Result",
        "history",
        "loglik",
        "shape (1, 3) is not 1D",
    )
    copy = pickle.loads(pickle.dumps(e))
    assert (type(copy), str(copy), copy.key) == (FieldValueError, str(e), "loglik")


def test_counts_at_the_limit_are_accepted() -> None:
    s = study(projections=np.full(PROJ, MAX_COUNTS, np.float32))
    assert float(s.projections.max()) == pytest.approx(1e15, rel=1e-6)
    # room for the likelihood's sum of y·log(y) over 2³¹ pixels in float32
    assert MAX_COUNTS * 2.0**31 * math.log(MAX_COUNTS) < np.finfo(np.float32).max / 1e6


def test_float_arrays_are_kept_without_a_copy() -> None:
    projections = np.ones(PROJ, np.float32)
    mu64 = np.full(VOLUME, 0.015)
    activity = np.ones(VOLUME, np.float32)
    s = study(projections=projections, mu_per_mm=mu64)
    r = result(activity=activity)
    assert s.projections is projections
    assert s.mu_per_mm is mu64  # float64 kept: analytic studies keep their precision
    assert r.activity is activity


def test_integers_and_tensors_are_normalised() -> None:
    counts = np.arange(24, dtype=np.int64).reshape(PROJ)
    s = study(
        projections=torch.from_numpy(counts),
        background=counts.astype(np.uint16),
        labels=np.ones(VOLUME, np.int16),
        label_names={np.int64(1): "liver"},
        provenance={"seed": 3},
    )
    assert s.projections.dtype == np.float32 and isinstance(s.projections, np.ndarray)
    np.testing.assert_array_equal(s.projections, counts)
    assert s.background is not None and s.background.dtype == np.float32
    assert s.labels is not None and s.labels.dtype == np.int16  # labels keep their integer type
    assert s.label_names == {1: "liver"} and type(next(iter(s.label_names))) is int
    assert s.provenance == {"seed": "3"}
    r = result(
        activity=torch.ones(VOLUME, dtype=torch.float64),
        history={"loglik": torch.tensor([1.0, 2.0])},
        extras={"mask": np.ones(3, bool)},
        study_file=Path("scan.h5"),
    )
    assert r.activity.dtype == np.float64 and isinstance(r.activity, np.ndarray)
    assert isinstance(r.history["loglik"], np.ndarray)
    assert r.history["loglik"].tolist() == [1.0, 2.0]
    assert r.study_file == "scan.h5"


def test_good_study_with_every_field_is_accepted() -> None:
    labels = np.zeros(VOLUME, np.int32)
    labels[0, 0, :2] = 1
    s = study(
        background=np.full(PROJ, 0.5, np.float32),
        mu_per_mm=np.full(VOLUME, 0.015, np.float32),
        ct_hu=np.zeros(VOLUME, np.int16),
        truth_activity=np.ones(VOLUME, np.float32),
        labels=labels,
        label_names={1: "liver"},
        anatomy=Anatomy(labels, {1: "liver"}),
    )
    assert s.ct_hu is not None and s.ct_hu.dtype == np.int16  # an integer CT is kept as is
    assert s.anatomy is not None and s.anatomy.shape == VOLUME
    assert replace(s).projections is s.projections  # checked again, nothing copied

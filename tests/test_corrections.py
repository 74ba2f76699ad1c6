"""Scatter from energy windows (TEW/DEW), decay, dead time, calibration, multi-window DICOM,
study files with windows, and the patient path (no truth) to an organ table and a report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from recon.corrections import dead_time_factor, decay_factor, true_rate_cps
from recon.corrections.calibration import (
    calibrate_planar,
    read_calibration,
    sensitivity_from_counts,
)
from recon.corrections.scatter import (
    dew_scatter,
    estimate_scatter,
    find_scatter_windows,
    smooth_views,
    tew_scatter,
)
from recon.corrections.timing import reference_time_of, seconds_between
from recon.io import Acquisition, FieldValueError, Study, read_study, write_study
from recon.io.study import BackgroundSource, EnergyWindow
from spectproj import ImageGrid
from tests.helpers import assert_ok, invoke

GRID = ImageGrid((4, 5, 6), (4.0, 4.0, 4.0))


def _study(counts: float = 100.0, windows=(), **acq) -> Study:
    acquisition = Acquisition(
        angles_deg=(0.0, 180.0),
        detector_shape=(4, 6),
        pixel_size_mm=(4.0, 4.0),
        energy_keV=208.4,
        energy_window_keV=(187.0, 229.0),
        **acq,
    )
    return Study(np.full((2, 4, 6), counts), acquisition, GRID, windows=windows)


# -- TEW / DEW ------------------------------------------------------------------------------------


def test_tew_and_dew_on_constant_images() -> None:
    lower, upper = np.full((2, 3, 3), 40.0), np.full((2, 3, 3), 10.0)
    # (40/20 + 10/5) · 42 / 2 = 84
    s = tew_scatter(lower, upper, lower_width_keV=20.0, upper_width_keV=5.0, peak_width_keV=42.0)
    np.testing.assert_allclose(s, 84.0)
    triangle = tew_scatter(
        lower, None, lower_width_keV=20.0, upper_width_keV=None, peak_width_keV=42.0
    )
    np.testing.assert_allclose(triangle, 42.0)
    np.testing.assert_allclose(dew_scatter(lower, 0.5), 20.0)
    with pytest.raises(ValueError, match="k must be positive"):
        dew_scatter(lower, 0.0)


def test_smoothing_keeps_each_views_total_and_a_constant() -> None:
    rng = np.random.default_rng(0)
    views = rng.poisson(50.0, (2, 9, 11)).astype(float)
    smooth = smooth_views(views, 10.0, (4.0, 4.0))
    np.testing.assert_allclose(smooth.sum(axis=(1, 2)), views.sum(axis=(1, 2)), rtol=1e-12)
    assert smooth.std() < views.std() / 2
    np.testing.assert_allclose(smooth_views(np.full((1, 5, 5), 3.0), 8.0, (4.0, 4.0)), 3.0)


def test_estimate_scatter_finds_adjacent_windows_and_records_how() -> None:
    windows = (
        EnergyWindow("low", 166.0, 187.0, np.full((2, 4, 6), 21.0)),
        EnergyWindow("up", 229.0, 250.0, np.full((2, 4, 6), 7.0)),
        EnergyWindow("peak113", 101.0, 124.0, np.full((2, 4, 6), 500.0)),
    )
    study = _study(windows=windows)
    low, up = find_scatter_windows((187.0, 229.0), windows)
    assert (low.name, up.name) == ("low", "up")
    tew = estimate_scatter(study, "tew", smoothing_fwhm_mm=5.0)
    np.testing.assert_allclose(tew.background, (1.0 + 7.0 / 21.0) * 42.0 / 2.0, rtol=1e-6)
    assert tew.background_source.method == "tew"
    assert tew.background_source.parameters["upper"] == "up"
    assert tew.background_source.parameters["smoothing_fwhm_mm"] == 5.0
    dew = estimate_scatter(study, "dew", k=0.5)
    np.testing.assert_allclose(dew.background, 10.5)
    with pytest.raises(ValueError, match="needs its factor k"):
        estimate_scatter(study, "dew")
    with pytest.raises(ValueError, match="no lower scatter window"):
        estimate_scatter(_study(), "tew")


def test_simulated_windows_make_tew_unbiased_and_scatter_20_to_40_percent() -> None:
    from recon.data.torso_study import torso_study

    study = torso_study(
        size=16, nuclide="Lu-177", scatter_fraction=0.3 / 0.7, scatter_windows=True,
        total_counts=1e6, noise=False,
    ).study  # fmt: skip
    fraction = study.background.sum() / study.projections.sum()
    assert 0.2 <= fraction <= 0.4 and fraction == pytest.approx(0.3, rel=1e-5)
    assert [w.name for w in study.windows] == ["lower", "upper"]
    estimate = estimate_scatter(study, "tew")
    np.testing.assert_allclose(estimate.background, study.background, rtol=1e-4, atol=1e-3)


# -- decay, dead time -----------------------------------------------------------------------------


def test_decay_factor_analytic_values() -> None:
    assert decay_factor(3600.0, 3600.0) == pytest.approx(0.5)
    assert decay_factor(3600.0, -3600.0) == pytest.approx(2.0)
    # frame of one half-life starting at the reference: mean of 2^(−t/T) = 1 / (2 ln 2)
    assert decay_factor(3600.0, 0.0, 3600.0) == pytest.approx(1.0 / (2.0 * math.log(2.0)))
    assert decay_factor(1e9, 0.0, 10.0) == pytest.approx(1.0)
    assert seconds_between("2024-05-01T10:00:00", "2024-05-02T11:30:00") == 91800.0
    acq = _study(
        half_life_s=6.647 * 86400, acquisition_start="2024-05-02T10:00:00",
        reference_time="2024-05-01T10:00:00", duration_s=600.0, sensitivity_cps_per_mbq=10.0,
    ).acquisition  # fmt: skip
    lam = math.log(2.0) / (6.647 * 86400)
    expected = math.exp(-lam * 86400) * (1 - math.exp(-lam * 600)) / (lam * 600)
    assert acq.decay_factor == pytest.approx(expected, rel=1e-12)
    assert acq.count_scale == pytest.approx(16.0 * 1e-3 * 10.0 * 1e-6 * 600.0 * expected)
    assert (
        reference_time_of("injection", acquisition_start=None, injection_time="2024-05-01T09:00:00")
        == "2024-05-01T09:00:00"
    )
    with pytest.raises(ValueError, match="records no AcquisitionDate"):
        reference_time_of("acquisition", acquisition_start=None, injection_time=None)


@pytest.mark.parametrize("model", ["paralyzable", "non-paralyzable"])
def test_dead_time_inverts_the_model(model: str) -> None:
    tau = 2e-6
    for true in (0.0, 1e4, 1e5, 3e5):
        observed = (
            true * math.exp(-true * tau) if model == "paralyzable" else true / (1 + true * tau)
        )
        assert true_rate_cps(observed, tau, model) == pytest.approx(true, rel=1e-10, abs=1e-9)
        if true:
            assert dead_time_factor(observed, tau, model) == pytest.approx(observed / true)
    limit = 1 / (math.e * tau) if model == "paralyzable" else 1 / tau
    with pytest.raises(ValueError, match="maximum"):
        true_rate_cps(limit * 1.0001, tau, model)


def test_acquisition_time_fields_are_checked() -> None:
    with pytest.raises(FieldValueError, match="needs half_life_s"):
        _study(reference_time="2024-05-01T10:00:00", acquisition_start="2024-05-01T11:00:00")
    with pytest.raises(FieldValueError, match="ISO 8601"):
        _study(acquisition_start="yesterday")
    with pytest.raises(FieldValueError, match="go together"):
        _study(dead_time_s=1e-6)
    dropped = dataclasses.replace(
        _study(), background=np.ones((2, 4, 6)), background_source=BackgroundSource("given")
    )
    assert dataclasses.replace(dropped, background=None).background_source is None
    study = _study(dead_time_s=1e-6, dead_time_model="non-paralyzable", observed_rate_cps=1e5)
    assert study.acquisition.dead_time_factor == pytest.approx(0.9)


# -- study files ----------------------------------------------------------------------------------


def test_study_file_round_trip_with_windows_and_times(tmp_path: Path) -> None:
    windows = (EnergyWindow("lower", 166.0, 187.0, np.arange(48.0).reshape(2, 4, 6)),)
    study = _study(
        windows=windows, half_life_s=1000.0, acquisition_start="2024-05-02T10:00:00",
        reference_time="2024-05-02T09:00:00", dead_time_s=2e-6,
        dead_time_model="paralyzable", observed_rate_cps=5e4,
    )  # fmt: skip
    study = dataclasses.replace(
        study,
        background=np.ones((2, 4, 6)),
        background_source=BackgroundSource("tew", {"smoothing_fwhm_mm": 3.0}),
    )
    write_study(tmp_path / "s.h5", study)
    back = read_study(tmp_path / "s.h5")
    assert back.acquisition == study.acquisition
    assert back.background_source == study.background_source
    assert back.windows[0].name == "lower" and back.windows[0].low_keV == 166.0
    np.testing.assert_array_equal(back.windows[0].counts, windows[0].counts)
    # a version-2 file (no windows, no times, no background source) still reads
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f.attrs["format_version"] = np.int64(2)
        del f["/windows"]
        for name in ("half_life_s", "acquisition_start", "reference_time", "dead_time_s",
                     "dead_time_model", "observed_rate_cps"):  # fmt: skip
            del f["/acquisition"].attrs[name]
        del f["/background/counts"].attrs["method"]
    old = read_study(tmp_path / "s.h5")
    assert old.windows == () and old.background_source is None
    assert old.acquisition.decay_factor == 1.0


# -- DICOM, calibration, the patient path ----------------------------------------------------------


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory):
    from recon.data.dicom_export import write_patient_folder

    return write_patient_folder(tmp_path_factory.mktemp("patient"), size=16, duration_s=120.0)


def test_multi_window_dicom_is_read_window_by_window(patient) -> None:
    import pydicom

    from recon.io.dicom_nm import read_nm_planar

    ds = pydicom.dcmread(patient.nm)
    assert list(ds.EnergyWindowVector) == [1, 1, 2, 2, 3, 3]
    assert list(ds.DetectorVector) == [1, 2, 1, 2, 1, 2]
    images = read_nm_planar(patient.nm)
    assert images.energy_window_keV == (187.56, 229.24) and images.energy_window_index == 0
    assert [(w.name, w.low_keV, w.high_keV) for w in images.windows] == [
        ("LOWER", 166.72, 187.56), ("UPPER", 229.24, 250.08),
    ]  # fmt: skip
    pixels = ds.pixel_array
    np.testing.assert_array_equal(images.windows[1].counts[1], pixels[5][::-1])
    assert images.acquisition_start == "2024-05-02T10:00:00"
    assert images.injection_time == "2024-05-01T10:00:00"
    assert images.half_life_s == pytest.approx(6.647 * 86400, abs=0.1)


def test_patient_folder_gives_each_structures_own_activity(patient) -> None:
    """The truth a tutorial compares with is each structure's sub-voxel activity: it adds up to
    the phantom's whole activity, and at 25 mm voxels a kidney's labelled voxels hold far less."""
    from recon.data.phantoms import NUCLIDES, TorsoPhantom, default_grid, make_torso

    phantom = make_torso(default_grid(16, 400.0), NUCLIDES["Lu-177"], TorsoPhantom.lu177_dotatate())
    voxel_ml = math.prod(phantom.grid.spacing_mm) * 1e-3
    activity = phantom.activity.numpy().astype(np.float64)
    total_mbq = float(activity.sum()) * voxel_ml * 1e-6
    assert sum(patient.organ_mbq.values()) == pytest.approx(total_mbq, rel=1e-6)
    kidney = next(v for v, n in phantom.label_names.items() if n == "kidney_left")
    labelled = float(activity[phantom.labels.numpy() == kidney].sum()) * voxel_ml * 1e-6
    assert patient.organ_mbq["kidney_left"] > 1.1 * labelled


def test_calibrate_from_a_simulated_source(patient, tmp_path: Path) -> None:
    assert sensitivity_from_counts(1200.0, activity_mbq=2.0, duration_s=60.0) == 10.0
    cal = calibrate_planar(
        patient.calibration,
        activity_mbq=patient.calibration_mbq,
        activity_time=patient.calibration_time,
    )
    counts = sum(cal.details["counts"])
    # true sensitivity within 3 Poisson standard deviations of the counts
    assert cal.sensitivity_cps_per_mbq == pytest.approx(10.0, rel=3.0 / math.sqrt(counts))
    assert cal.details["decay_factor"] < 1.0 and cal.isotope == "Lu-177"
    result = invoke(
        "calibrate", str(patient.calibration), "--activity-mbq", "20",
        "--activity-time", patient.calibration_time, "-o", str(tmp_path / "c.json"),
    )  # fmt: skip
    assert_ok(result)
    assert read_calibration(tmp_path / "c.json").sensitivity_cps_per_mbq == pytest.approx(
        cal.sensitivity_cps_per_mbq
    )
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a calibration file"):
        read_calibration(tmp_path / "bad.json")


def test_patient_path_reaches_the_organ_table_without_truth(patient, tmp_path: Path) -> None:
    study_file, seg_file = tmp_path / "study.h5", tmp_path / "seg.h5"
    assert_ok(invoke("convert", "dicom-planar", str(patient.nm), "--ct", str(patient.ct),
                     "--sensitivity", "10", "-o", str(study_file)))  # fmt: skip
    study = read_study(study_file)
    assert study.truth_activity is None and study.background_source.method == "tew"
    assert study.acquisition.reference_time == "2024-05-02T10:00:00"
    assert 0.2 < study.background.sum() / study.projections.sum() < 0.4
    assert_ok(invoke("convert", "anatomy", str(study_file), str(patient.seg), "-o", str(seg_file)))
    result = tmp_path / "organs.h5"
    assert_ok(invoke("recon", "organs", str(seg_file), "-o", str(result), "--no-residual"))
    out = invoke("compare", str(seg_file), str(result), "-o", str(tmp_path / "report"))
    assert_ok(out)
    table = out.output.split("note:")[0]
    assert "liver" in table and "error" not in table and "truth" not in table
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    liver = next(r for r in summary["organ_table"] if r["region"] == "liver")
    assert liver["truth_mbq"] is None and liver["activity_mbq"] > 0
    assert summary["projection_fit"]["organs"]["deviance_per_pixel"] > 0
    evaluated = invoke("eval", str(result), "--truth", str(seg_file))
    assert_ok(evaluated)
    assert "holds no truth" in evaluated.output


def test_scatter_command_on_a_simulated_study(tmp_path: Path) -> None:
    from recon.data.torso_study import torso_study

    study = torso_study(size=16, nuclide="Lu-177", scatter_fraction=0.5, scatter_windows=True,
                        total_counts=1e6, seed=3).study  # fmt: skip
    write_study(tmp_path / "s.h5", study)
    assert_ok(invoke("scatter", str(tmp_path / "s.h5"), "-o", str(tmp_path / "t.h5")))
    tew = read_study(tmp_path / "t.h5")
    assert tew.background_source.method == "tew"
    rel = abs(tew.background.sum() - study.background.sum()) / study.background.sum()
    assert rel < 0.01

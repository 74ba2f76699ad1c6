"""``spect convert``: pieNeRF, Interfile, patient 15, DICOM, NIfTI, end to end on tiny files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from recon.io import Acquisition, Study, read_result, read_study, write_study
from recon.io.dicom_nm import read_nm_planar, read_nm_tomo
from recon.io.interfile import spacing_to_array_order, write_interfile
from recon.io.nifti import read_nifti, tidy_nifti_grid, write_nifti
from spectproj import ImageGrid, hu_to_mu_per_mm, water_mu_per_mm
from tests.test_io_dicom import ANT, CT_IOPS, POST, write_ct, write_planar, write_tomo

runner = CliRunner()


def invoke(*args: str | Path | float):
    return runner.invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def assert_one_line_error(result, code: int = 1, *fragments: str) -> str:
    """Exit ``code``, exactly one line ``Error: ...`` on stderr, no traceback; returns the line."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


SUBCOMMANDS = [
    "anatomy",
    "pienerf",
    "interfile",
    "patient15",
    "dicom-planar",
    "dicom-tomo",
    "to-nifti",
    "nifti-to-result",
]


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help_everywhere(command: list[str]) -> None:
    result = invoke("convert", *command, "--help")
    assert_ok(result)
    assert "Usage:" in result.stdout


def test_group_alone_shows_its_help() -> None:
    result = invoke("convert")
    assert_ok(result)
    for name in SUBCOMMANDS:
        assert name in result.stdout


# -- pieNeRF ------------------------------------------------------------------------------------

# CT array axes "PIL": 0 = depth (anterior → posterior), 1 = head → feet, 2 = right → left.
PIE_SHAPE = (5, 6, 7)
PIE_SPACING_ZYX = (2.0, 3.0, 4.0)  # dz, dy, dx: all different, so a mix-up cannot pass


def write_pienerf_case(folder: Path, pid: str, seed: int, *, ct_shape=PIE_SHAPE) -> dict:
    rng = np.random.default_rng(seed)
    ct = rng.uniform(-1000.0, 1000.0, ct_shape).astype(np.float32)
    ap = rng.poisson(20.0, (PIE_SHAPE[1], PIE_SHAPE[2])).astype(np.float32)
    pa = rng.poisson(20.0, (PIE_SHAPE[1], PIE_SHAPE[2])).astype(np.float32)
    act = rng.uniform(0.0, 5.0, PIE_SHAPE).astype(np.float32)
    for name, array in (("ap", ap), ("pa", pa), ("ct", ct), ("act", act)):
        np.save(folder / f"{pid}_{name}.npy", array)
    return {"ct": ct, "ap": ap, "pa": pa, "act": act}


def write_manifest(folder: Path, pids: list[str]) -> Path:
    lines = ["patient_id,ap_path,pa_path,ct_path,act_path"]
    lines += [f"{p},{p}_ap.npy,{p}_pa.npy,{p}_ct.npy,{p}_act.npy" for p in pids]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def pienerf_args(manifest: Path, out: Path) -> list[str | Path | float]:
    return [
        "convert",
        "pienerf",
        manifest,
        "-o",
        out,
        "--spacing-mm",
        *PIE_SPACING_ZYX,
        "--energy-kev",
        208.4,
        "--isotope",
        "lu177",
    ]


@pytest.mark.parametrize("broken", ["CT of the wrong shape", "missing file"])
def test_pienerf_converts_good_rows_and_reports_the_broken_one(tmp_path: Path, broken) -> None:
    good = write_pienerf_case(tmp_path, "P1", 1)
    write_pienerf_case(tmp_path, "P2", 2, ct_shape=(5, 6, 8))
    if broken == "missing file":
        (tmp_path / "P2_pa.npy").unlink()
    manifest = write_manifest(tmp_path, ["P2", "P1"])
    out = tmp_path / "studies"  # created by the command

    result = invoke(*pienerf_args(manifest, out))
    line = assert_one_line_error(result, 1, "Error: P2: ")
    assert ("not found" if broken == "missing file" else "does not match the CT") in line
    assert "converted 1 of 2 row(s)" in result.stdout
    assert "failed" in result.stdout and "ok" in result.stdout
    assert not (out / "P2.h5").exists() and no_temporary_files(out)

    study = read_study(out / "P1.h5")
    ct = good["ct"]
    assert study.grid.shape == (PIE_SHAPE[1], PIE_SHAPE[0], PIE_SHAPE[2])
    assert study.grid.spacing_mm == PIE_SPACING_ZYX
    acq = study.acquisition
    assert acq.angles_deg == (0.0, 180.0) and acq.pixel_size_mm == (2.0, 4.0)
    assert acq.isotope == "Lu-177" and acq.energy_keV == 208.4
    # ours [z, y, x] = CT [y, I-1-z, x]; AP rows flipped to point at the head; PA un-mirrored
    expected_ct = np.transpose(ct[:, ::-1, :], (1, 0, 2))
    np.testing.assert_array_equal(study.ct_hu, expected_ct)
    np.testing.assert_allclose(study.mu_per_mm, hu_to_mu_per_mm(expected_ct, 208.4), rtol=1e-6)
    np.testing.assert_array_equal(study.projections[0], good["ap"][::-1, :])
    np.testing.assert_array_equal(study.projections[1], good["pa"][::-1, ::-1])
    np.testing.assert_array_equal(
        study.truth_activity, np.transpose(good["act"][:, ::-1, :], (1, 0, 2))
    )
    assert study.provenance["cli_command"] == "spect convert pienerf"
    assert json.loads(study.provenance["cli_parameters"])["spacing_mm_zyx"] == [2.0, 3.0, 4.0]


def test_pienerf_force_and_bad_manifests(tmp_path: Path) -> None:
    write_pienerf_case(tmp_path, "P1", 1)
    manifest = write_manifest(tmp_path, ["P1"])
    out = tmp_path / "out"
    assert_ok(invoke(*pienerf_args(manifest, out)))
    before = (out / "P1.h5").read_bytes()
    assert_one_line_error(invoke(*pienerf_args(manifest, out)), 1, "P1", "already exists")
    assert (out / "P1.h5").read_bytes() == before
    assert_ok(invoke(*pienerf_args(manifest, out), "--force"))

    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,ap_path\nP1,P1_ap.npy\n")
    assert_one_line_error(invoke(*pienerf_args(bad, out)), 1, "missing column(s) pa_path")
    assert_one_line_error(invoke(*pienerf_args(tmp_path / "none.csv", out)), 1, "none.csv")
    result = invoke(*pienerf_args(manifest, out), "--force", "--ct-orientation", "PIX")
    assert_one_line_error(result, 1, "orientation must be three letters")
    (tmp_path / "file").write_text("")
    assert_one_line_error(invoke(*pienerf_args(manifest, tmp_path / "file")), 1, "not a folder")


def test_spacing_to_array_order() -> None:
    assert spacing_to_array_order((2.0, 3.0, 4.0), "PIL") == (3.0, 2.0, 4.0)
    assert spacing_to_array_order((2.0, 3.0, 4.0), "spl") == (2.0, 3.0, 4.0)
    assert spacing_to_array_order((2.0, 3.0, 4.0), "RAI") == (4.0, 3.0, 2.0)
    with pytest.raises(ValueError, match="three letters"):
        spacing_to_array_order((1.0, 1.0, 1.0), "PPL")


# -- Interfile ----------------------------------------------------------------------------------

VOLUME_SPACING = (4.0, 3.0, 2.5)


def interfile_files(folder: Path) -> tuple[Path, np.ndarray, tuple[float, ...]]:
    rng = np.random.default_rng(5)
    counts = rng.poisson(30.0, (6, 7, 9)).astype(np.float32)  # 6 views of 7 rows × 9 bins
    angles = tuple(float(a) for a in np.arange(6) * 60.0)
    header = write_interfile(
        folder / "proj.h33", counts, (4.0, 2.5), angles_deg=angles, radius_mm=210.0
    )
    return header, counts, angles


def test_interfile_projections_and_mu_round_trip(tmp_path: Path) -> None:
    proj, counts, angles = interfile_files(tmp_path)
    mu = np.random.default_rng(6).uniform(0.0, 0.02, (7, 8, 9)).astype(np.float32)
    write_interfile(tmp_path / "mu.h33", mu, VOLUME_SPACING)
    out = tmp_path / "study.h5"
    result = invoke(
        "convert",
        "interfile",
        proj,
        "--mu",
        tmp_path / "mu.h33",
        "-o",
        out,
        "--energy-kev",
        140.5,
        "--isotope",
        "Tc-99m",
    )
    assert_ok(result)
    assert "wrote" in result.stdout and "6: 0°–300°" in result.stdout
    study = read_study(out)
    np.testing.assert_array_equal(study.projections, counts)
    np.testing.assert_array_equal(study.mu_per_mm, mu)
    assert study.ct_hu is None
    assert study.grid == ImageGrid((7, 8, 9), VOLUME_SPACING)
    acq = study.acquisition
    assert acq.angles_deg == angles and acq.detector_shape == (7, 9)
    assert acq.pixel_size_mm == (4.0, 2.5) and acq.radius_mm == 210.0
    assert acq.energy_keV == 140.5 and acq.isotope == "Tc-99m"

    # --mu-unit 1/cm divides by 10; --radius-mm overrides the header's Radius
    out_cm = tmp_path / "cm.h5"
    assert_ok(
        invoke(
            "convert",
            "interfile",
            proj,
            "--mu",
            tmp_path / "mu.h33",
            "-o",
            out_cm,
            "--energy-kev",
            140.5,
            "--mu-unit",
            "1/cm",
            "--radius-mm",
            150,
        )
    )
    cm = read_study(out_cm)
    np.testing.assert_allclose(cm.mu_per_mm, mu / 10, rtol=1e-6)
    assert cm.acquisition.radius_mm == 150.0

    # no volume: the grid covers the detector
    bare = tmp_path / "bare.h5"
    assert_ok(invoke("convert", "interfile", proj, "-o", bare, "--energy-kev", 140.5))
    grid = read_study(bare).grid
    assert grid.shape == (7, 9, 9) and grid.spacing_mm == (4.0, 2.5, 2.5)


def test_interfile_ct_with_offset(tmp_path: Path) -> None:
    proj, _, _ = interfile_files(tmp_path)
    hu = np.random.default_rng(7).integers(-1000, 1500, (7, 8, 9)).astype(np.int16)
    write_interfile(tmp_path / "ct.h33", (hu + 1000).astype(np.int16), VOLUME_SPACING)
    out = tmp_path / "study.h5"
    result = invoke(
        "convert",
        "interfile",
        proj,
        "--ct",
        tmp_path / "ct.h33",
        "--ct-offset",
        1000,
        "-o",
        out,
        "--energy-kev",
        208,
    )
    assert_ok(result)
    study = read_study(out)
    np.testing.assert_array_equal(study.ct_hu, hu.astype(np.float32))
    np.testing.assert_allclose(study.mu_per_mm, hu_to_mu_per_mm(hu, 208.0), rtol=1e-6)


def test_interfile_errors(tmp_path: Path) -> None:
    proj, _, _ = interfile_files(tmp_path)
    write_interfile(tmp_path / "mu.h33", np.zeros((7, 8, 9), np.float32), VOLUME_SPACING)
    out = tmp_path / "study.h5"
    base = ["convert", "interfile", proj, "-o", out, "--energy-kev", 140.5]
    assert_one_line_error(
        invoke(*base, "--mu", tmp_path / "mu.h33", "--ct", tmp_path / "mu.h33"), 1, "not both"
    )
    assert_one_line_error(invoke(*base, "--mu", proj), 1, "holds projections, not a volume")
    assert_one_line_error(
        invoke("convert", "interfile", tmp_path / "mu.h33", "-o", out, "--energy-kev", 140.5),
        1,
        "not projections",
    )
    assert_one_line_error(invoke(*base, "--mu", tmp_path / "nope.h33"), 1, "nope.h33")
    assert_one_line_error(invoke(*base, "--orientation", "XYZ", "--mu", tmp_path / "mu.h33"))
    assert_one_line_error(invoke("convert", "interfile", proj, "-o", out), 2, "--energy-kev")
    assert not out.exists() and no_temporary_files(tmp_path)


# -- patient 15 ---------------------------------------------------------------------------------


def test_patient15(shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p15.h5"
    # the shared folder itself is accepted: the phantom's subfolder is found
    result = invoke(
        "convert", "patient15", shared_dir, "-o", out, "--duration-s", 600, "--sensitivity", 10
    )
    assert_ok(result)
    assert "Lu-177" in result.stdout and "liver" in result.stdout
    study = read_study(out)
    assert study.grid.shape == (90, 70, 108) and study.projections.shape == (2, 90, 108)
    assert study.acquisition.energy_keV == 208.0 and study.acquisition.isotope == "Lu-177"
    assert study.acquisition.count_scale == pytest.approx(4.4196 * 3.9063 * 1e-3 * 10 * 1e-6 * 600)
    assert study.truth_activity.max() == pytest.approx(200e3)
    assert study.labels.max() == 7 and study.label_names[1] == "liver"
    assert study.provenance["cli_command"] == "spect convert patient15"
    assert "MIT" in study.provenance["licence"]
    assert_one_line_error(
        invoke("convert", "patient15", shared_dir, "-o", tmp_path / "x.h5", "--duration-s", 60),
        1,
        "both --duration-s and --sensitivity",
    )


def test_patient15_missing_files(tmp_path: Path) -> None:
    result = invoke("convert", "patient15", tmp_path, "-o", tmp_path / "p.h5")
    assert_one_line_error(result, 1, "patient15_LuDOTATATE_attn.h33")


# -- DICOM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A water cylinder with a bone rod: 20 × 28 × 24 voxels of 3 × 4 × 5 mm, centred at 0."""
    return write_ct(tmp_path_factory.mktemp("ct") / "ct", CT_IOPS["axial"])


def test_dicom_planar_with_ct(tmp_path: Path, ct_folder: Path) -> None:
    nm = tmp_path / "nm"
    nm.mkdir()
    files = write_planar(nm, (ANT, POST), True, multiframe=False)
    out = tmp_path / "planar.h5"
    result = invoke(
        "convert", "dicom-planar", *files, "--ct", ct_folder, "-o", out, "--sensitivity", 90
    )
    assert_ok(result)
    study = read_study(out)
    images = read_nm_planar(files)
    np.testing.assert_array_equal(study.projections, images.images)
    acq = study.acquisition
    assert acq.angles_deg == (0.0, 180.0) and acq.isotope == "Tc-99m"
    assert acq.energy_keV == 140.5 and acq.duration_s == 300.0
    assert acq.sensitivity_cps_per_mbq == 90.0
    # 16 rows of 4 mm, 20 bins of 3 mm: voxels of 4 × 3 × 3 mm covering the detector
    assert study.grid == ImageGrid((16, 20, 20), (4.0, 3.0, 3.0))
    # centre of the grid = centre of the CT: water there, air outside the CT cylinder
    assert study.mu_per_mm[7, 9, 9] == pytest.approx(water_mu_per_mm(140.5), rel=1e-5)
    assert study.ct_hu[7, 9, 9] == pytest.approx(0.0, abs=1e-3)
    assert study.mu_per_mm.max() > 1.5 * water_mu_per_mm(140.5)  # the bone rod
    assert "CT volume's centre" in study.provenance["ct_alignment"]

    # a folder, --spacing-mm and --grid-size; no CT
    out2 = tmp_path / "folder.h5"
    result = invoke(
        "convert",
        "dicom-planar",
        nm,
        "-o",
        out2,
        "--spacing-mm",
        8,
        "--grid-size",
        5,
        "--energy-kev",
        141,
        "--duration-s",
        60,
    )
    assert_ok(result)
    study2 = read_study(out2)
    assert study2.grid == ImageGrid((8, 5, 5), (8.0, 8.0, 8.0))
    assert study2.mu_per_mm is None and study2.acquisition.energy_keV == 141.0
    assert study2.acquisition.duration_s == 60.0


def test_dicom_tomo_with_ct(tmp_path: Path, ct_folder: Path) -> None:
    frames = np.random.default_rng(8).poisson(40.0, (8, 12, 16)).astype(np.float64)
    path = write_tomo(tmp_path / "tomo.dcm", [frames], [None], 45.0, "CW")
    out = tmp_path / "tomo.h5"
    result = invoke(
        "convert",
        "dicom-tomo",
        path,
        "--ct",
        ct_folder,
        "--spacing-mm",
        8,
        "-o",
        out,
        "--axis-position-mm",
        0,
        0,
        0,
    )
    assert_ok(result)
    study = read_study(out)
    projections, acquisition = read_nm_tomo(path)
    np.testing.assert_array_equal(study.projections, projections)
    assert study.acquisition == acquisition
    assert study.acquisition.energy_keV == 208.4 and len(study.acquisition.angles_deg) == 8
    # 12 rows × 16 bins of 4 mm: 48 × 64 mm, in 8 mm voxels
    assert study.grid == ImageGrid((6, 8, 8), (8.0, 8.0, 8.0))
    assert study.mu_per_mm.shape == (6, 8, 8) and study.ct_hu.shape == (6, 8, 8)
    assert study.mu_per_mm[2, 3, 3] == pytest.approx(water_mu_per_mm(208.4), rel=1e-5)
    assert "given" in study.provenance["ct_alignment"]


def test_dicom_errors(tmp_path: Path) -> None:
    frames = np.ones((4, 6, 6))
    tomo = write_tomo(tmp_path / "tomo.dcm", [frames], [None], 90.0, "CW")
    not_dicom = tmp_path / "plain.dcm"
    not_dicom.write_text("hello")
    out = tmp_path / "s.h5"
    assert_one_line_error(invoke("convert", "dicom-planar", tomo, "-o", out), 1, "tomographic")
    assert_one_line_error(invoke("convert", "dicom-tomo", not_dicom, "-o", out), 1, "not a DICOM")
    assert_one_line_error(
        invoke("convert", "dicom-tomo", tmp_path / "nope.dcm", "-o", out), 1, "nope.dcm"
    )
    assert_one_line_error(
        invoke("convert", "dicom-tomo", tomo, "-o", out, "--ct", tmp_path / "noct"), 1, "noct"
    )
    assert_one_line_error(
        invoke("convert", "dicom-tomo", tomo, "-o", out, "--grid-size", 0), 2, "--grid-size"
    )
    assert_one_line_error(
        invoke("convert", "dicom-tomo", tomo, "-o", out, "--spacing-mm", -1), 2, "must be > 0"
    )
    assert not out.exists()


# -- NIfTI --------------------------------------------------------------------------------------

NIFTI_GRID = ImageGrid((6, 5, 4), (4.4196, 3.9063, 3.9063), (1.5, -2.25, 0.75))


@pytest.fixture
def small_study(tmp_path: Path) -> Path:
    """A study with truth, μ, CT and labels on a grid with non-trivial spacing and offset."""
    rng = np.random.default_rng(9)
    shape = NIFTI_GRID.shape
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    study = Study(
        projections=np.ones((2, 6, 4), np.float32),
        acquisition=Acquisition((0.0, 180.0), (6, 4), (4.4196, 3.9063), 140.5),
        grid=NIFTI_GRID,
        mu_per_mm=rng.uniform(0, 0.02, shape).astype(np.float32),
        ct_hu=rng.uniform(-1000, 1000, shape).astype(np.float32),
        truth_activity=rng.uniform(0, 100, shape).astype(np.float32),
        labels=labels,
        label_names={1: "liver", 2: "spleen"},
    )
    path = tmp_path / "study.h5"
    write_study(path, study)
    return path


def test_to_nifti_and_back_to_a_result(tmp_path: Path, small_study: Path) -> None:
    study = read_study(small_study)
    nii = tmp_path / "truth.nii.gz"
    result = invoke("convert", "to-nifti", small_study, "-o", nii)
    assert_ok(result)
    assert "truth (Bq/mL)" in result.stdout and "wrote" in result.stdout
    volume, _ = read_nifti(nii)
    np.testing.assert_array_equal(volume, study.truth_activity)

    res = tmp_path / "res.h5"
    result = invoke(
        "convert",
        "nifti-to-result",
        nii,
        "-o",
        res,
        "--study",
        small_study,
        "--method",
        "stir-osem",
    )
    assert_ok(result)
    back = read_result(res)
    np.testing.assert_array_equal(back.activity, study.truth_activity)
    assert back.grid == study.grid  # exactly: snapped to the study's grid
    assert back.method == "stir-osem" and back.study_file == str(small_study)
    assert back.activity_unit == "Bq/mL"

    # without --study the float32 rounding of the affine is undone
    res2 = tmp_path / "res2.h5"
    assert_ok(invoke("convert", "nifti-to-result", nii, "-o", res2, "--unit", "kBq/mL"))
    back2 = read_result(res2)
    assert back2.grid == study.grid and back2.method == "external"
    assert back2.activity_unit == "kBq/mL"

    # a result file's activity goes out (and back) too
    nii2 = tmp_path / "res.nii"
    assert_ok(invoke("convert", "to-nifti", res, "-o", nii2))
    np.testing.assert_array_equal(read_nifti(nii2)[0], study.truth_activity)
    assert_one_line_error(
        invoke("convert", "to-nifti", res, "-o", tmp_path / "m.nii", "--dataset", "mu"),
        1,
        "holds only the activity",
    )


@pytest.mark.parametrize("dataset", ["mu", "ct", "labels", "truth"])
def test_to_nifti_datasets(tmp_path: Path, small_study: Path, dataset: str) -> None:
    study = read_study(small_study)
    out = tmp_path / f"{dataset}.nii.gz"
    assert_ok(invoke("convert", "to-nifti", small_study, "-o", out, "--dataset", dataset))
    expected = {
        "mu": study.mu_per_mm,
        "ct": study.ct_hu,
        "labels": study.labels,
        "truth": study.truth_activity,
    }[dataset]
    volume, grid = read_nifti(out)
    np.testing.assert_array_equal(volume, expected)
    assert tidy_nifti_grid(grid) == study.grid


def test_nifti_errors_and_negative_values(tmp_path: Path, small_study: Path) -> None:
    out = tmp_path / "out.nii.gz"
    assert_one_line_error(
        invoke("convert", "to-nifti", small_study, "-o", tmp_path / "a.png"), 1, ".nii or .nii.gz"
    )
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert_one_line_error(invoke("convert", "to-nifti", tmp_path / "junk.h5", "-o", out), 1)
    bare = tmp_path / "bare.h5"
    write_study(
        bare,
        Study(
            np.ones((1, 2, 2), np.float32),
            Acquisition((0.0,), (2, 2), (1.0, 1.0), 140.5),
            NIFTI_GRID,
        ),
    )
    assert_one_line_error(
        invoke("convert", "to-nifti", bare, "-o", out, "--dataset", "mu"), 1, "/attenuation/mu"
    )
    assert_one_line_error(invoke("convert", "to-nifti", bare, "-o", out), 1, "/truth/activity")
    assert not out.exists()

    values = np.random.default_rng(10).normal(5.0, 5.0, NIFTI_GRID.shape).astype(np.float32)
    nii = write_nifti(tmp_path / "fbp.nii.gz", values, NIFTI_GRID)
    res = tmp_path / "fbp.h5"
    assert_one_line_error(
        invoke("convert", "nifti-to-result", nii, "-o", res),
        1,
        "negative value(s)",
        "--clip-negative",
    )
    result = invoke("convert", "nifti-to-result", nii, "-o", res, "--clip-negative")
    assert_ok(result)
    assert "set to 0" in result.stdout
    np.testing.assert_array_equal(read_result(res).activity, np.maximum(values, 0))

    other = write_nifti(tmp_path / "other.nii", values[:, :, :3], ImageGrid((6, 5, 3), (1, 1, 1)))
    assert_one_line_error(
        invoke(
            "convert",
            "nifti-to-result",
            other,
            "-o",
            tmp_path / "o.h5",
            "--clip-negative",
            "--study",
            small_study,
        ),
        1,
        "is not the study's",
    )
    assert_one_line_error(
        invoke("convert", "nifti-to-result", nii, "-o", tmp_path / "o.h5", "--method", " "),
        1,
        "--method",
    )
    assert not (tmp_path / "o.h5").exists() and no_temporary_files(tmp_path)


# -- --force, common errors ---------------------------------------------------------------------


def test_existing_output_needs_force(tmp_path: Path, small_study: Path) -> None:
    out = tmp_path / "truth.nii.gz"
    out.write_bytes(b"keep me")
    result = invoke("convert", "to-nifti", small_study, "-o", out)
    assert_one_line_error(result, 1, "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    assert_ok(invoke("convert", "to-nifti", small_study, "-o", out, "--force"))
    assert out.read_bytes() != b"keep me"

    proj, _, _ = interfile_files(tmp_path)
    study_out = tmp_path / "study.h5"
    study_out.write_bytes(b"keep me")
    args = ["convert", "interfile", proj, "-o", study_out, "--energy-kev", 140.5]
    assert_one_line_error(invoke(*args), 1, "already exists")
    assert study_out.read_bytes() == b"keep me"
    assert_ok(invoke(*args, "--force"))
    assert read_study(study_out).projections.shape == (6, 7, 9)
    assert no_temporary_files(tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ["interfile", "{tmp}/missing.h33", "-o", "{tmp}/s.h5", "--energy-kev", "140"],
        ["dicom-planar", "{tmp}/missing.dcm", "-o", "{tmp}/s.h5"],
        ["dicom-tomo", "{tmp}/missing.dcm", "-o", "{tmp}/s.h5"],
        ["to-nifti", "{tmp}/missing.h5", "-o", "{tmp}/s.nii"],
        ["nifti-to-result", "{tmp}/missing.nii", "-o", "{tmp}/s.h5"],
        [
            "pienerf",
            "{tmp}/missing.csv",
            "-o",
            "{tmp}/o",
            "--spacing-mm",
            "1",
            "1",
            "1",
            "--energy-kev",
            "140",
        ],
        ["interfile", "{tmp}/missing.h33", "-o", "{tmp}/nofolder/s.h5", "--energy-kev", "140"],
    ],
)
def test_missing_inputs_are_one_line_errors(tmp_path: Path, args: list[str]) -> None:
    result = invoke("convert", *(a.format(tmp=tmp_path) for a in args))
    assert_one_line_error(result, 1, "missing" if "nofolder" not in args[3] else "nofolder")
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.nii").exists()

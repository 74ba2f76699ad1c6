"""``spect phantom``, ``simulate``, ``project``, ``info`` and ``show``, end to end on tiny grids."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.commands.data import NuclideChoice
from cli.main import app, package_version
from recon.data.phantoms import NUCLIDES, TYPICAL_SENSITIVITY_CPS_PER_MBQ
from recon.io import read_study, write_study
from spectproj import CollimatorResponse

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = "16"


def invoke(*args: str | Path):
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
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


@pytest.fixture(scope="module")
def study_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-view Tc-99m study with scatter and the LEHR collimator (24³ voxels)."""
    path = tmp_path_factory.mktemp("data") / "study.h5"
    result = invoke(
        "simulate", "-o", path, "--size", "24", "--views", "8", "--counts", "5e4",
        "--scatter-fraction", "0.2", "--seed", "3",
    )  # fmt: skip
    assert_ok(result)
    for text in ("total counts", "count scale", "activity in phantom", "MBq", "wrote"):
        assert text in result.stdout
    return path


# -- help and choices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["phantom"], ["simulate"], ["project"], ["info"], ["show"], ["recon"], ["recon", "mlem"]],
)
def test_help_everywhere(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert_ok(result)
    assert "Usage:" in result.stdout


def test_top_level_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert_ok(result)
    for name in ("phantom", "simulate", "project", "info", "show", "recon", "demo"):
        assert name in result.stdout


def test_choices_match_the_library() -> None:
    assert [c.value for c in NuclideChoice] == list(NUCLIDES)


def test_simulate_takes_any_collimator_of_the_table_or_a_file(tmp_path: Path) -> None:
    """--collimator takes a table name (recorded with its parameters) or a TOML file; an
    unknown name is one line naming it."""
    path = tmp_path / "sim.h5"
    common = ("--size", "16", "--counts", "1e4", "--nuclide", "Lu-177")
    assert_ok(invoke("simulate", "-o", path, *common, "--collimator", "SY-ME"))
    study = read_study(path)
    assert study.acquisition.collimator == "SY-ME"
    expected = CollimatorResponse.from_table("SY-ME", study.acquisition.energy_keV)
    assert study.collimator_response() == expected
    toml = tmp_path / "mine.toml"
    toml.write_text(
        'name = "MINE"\nhole_diameter_mm = 3.0\nhole_length_mm = 40.0\n'
        'septal_thickness_mm = 1.0\nhole_shape = "hex"\n',
        encoding="utf-8",
    )
    mine = tmp_path / "mine.h5"
    assert_ok(invoke("simulate", "-o", mine, *common, "--collimator", str(toml)))
    assert read_study(mine).acquisition.collimator == "MINE"
    bad = invoke("simulate", "-o", tmp_path / "bad.h5", *common, "--collimator", "FOO")
    assert bad.exit_code != 0 and "unknown collimator 'FOO'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.h5").exists()


# -- phantom -------------------------------------------------------------------------------------


def test_phantom_writes_noise_free_ap_pa_with_truth(tmp_path: Path) -> None:
    path = tmp_path / "phantom.h5"
    assert_ok(invoke("phantom", "-o", path, "--size", SIZE, "--nuclide", "lu-177"))
    study = read_study(path)
    acq = study.acquisition
    assert acq.angles_deg == (0.0, 180.0)
    assert study.projections.shape == (2, 16, 16)
    assert acq.isotope == "Lu-177" and acq.energy_keV == NUCLIDES["Lu-177"]
    assert acq.duration_s == 300.0
    assert acq.sensitivity_cps_per_mbq == TYPICAL_SENSITIVITY_CPS_PER_MBQ["Lu-177"]
    assert acq.collimator is None and study.background is None
    assert study.truth_activity is not None and study.labels is not None
    assert study.mu_per_mm is not None and study.label_names[3] == "liver"
    assert study.truth_activity.max() > 1e6  # auto preset for Lu-177: DOTATATE tumours
    # noise-free: expected counts, not integers
    assert not np.allclose(study.projections, np.round(study.projections))
    params = json.loads(study.provenance["cli_parameters"])
    assert params["preset"] == "lu177-dotatate" and params["noise"] is False
    assert study.provenance["cli_command"] == "spect phantom"
    assert no_temporary_files(tmp_path)


def test_phantom_refuses_to_overwrite_then_force(tmp_path: Path) -> None:
    path = tmp_path / "phantom.h5"
    assert_ok(invoke("phantom", "-o", path, "--size", "8"))
    before = path.stat().st_mtime_ns
    result = invoke("phantom", "-o", path, "--size", "8")
    assert_one_line_error(result, 1, "already exists", "--force")
    assert path.stat().st_mtime_ns == before
    assert_ok(invoke("phantom", "-o", path, "--size", "8", "--preset", "lu177-dotatate", "--force"))
    assert read_study(path).truth_activity.max() > 1e5  # Tc-99m-like maximum: 1e4 Bq/mL


def test_output_folder_must_exist(tmp_path: Path) -> None:
    result = invoke("phantom", "-o", tmp_path / "missing" / "p.h5", "--size", "8")
    assert_one_line_error(result, 1, "does not exist")


# -- simulate ------------------------------------------------------------------------------------


def test_simulate_study(study_file: Path) -> None:
    study = read_study(study_file)
    acq = study.acquisition
    assert len(acq.angles_deg) == 8 and acq.angles_deg[2] == 90.0
    assert study.projections.shape == (8, 24, 24)
    assert acq.collimator == "LEHR" and acq.radius_mm == 250.0
    assert study.background is not None
    assert np.allclose(study.projections, np.round(study.projections))  # Poisson counts
    assert abs(study.projections.sum() - 5e4) < 5 * math.sqrt(5e4)
    params = json.loads(study.provenance["cli_parameters"])
    assert params["views"] == 8 and params["collimator"] == "LEHR" and params["seed"] == 3


def test_simulate_duration_and_sensitivity(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    result = invoke(
        "simulate", "-o", path, "--size", SIZE, "--duration-s", "20", "--sensitivity", "100",
        "--collimator", "none", "--no-noise", "--nuclide", "I-131", "--views", "AP-PA",
    )  # fmt: skip
    assert_ok(result)
    acq = read_study(path).acquisition
    assert acq.duration_s == 20.0 and acq.sensitivity_cps_per_mbq == 100.0
    assert acq.collimator is None and acq.isotope == "I-131"
    row, col = acq.pixel_size_mm
    assert math.isclose(acq.count_scale, row * col * 1e-3 * 100.0 * 1e-6 * 20.0)


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--views", "abc"], 2, "--views"),
        (["--views", "0"], 2, "--views"),
        (["--counts", "-1"], 2, "--counts"),
        (["--counts", "1e5", "--duration-s", "1", "--sensitivity", "5"], 1, "--counts"),
        (["--sensitivity", "5"], 1, "--duration-s"),
        (["--nuclide", "F-18"], 2, "--nuclide"),
        (["--collimator", "pinhole"], 2, "--collimator"),
    ],
)
def test_simulate_bad_options(tmp_path: Path, args: list[str], code: int, fragment: str) -> None:
    result = invoke("simulate", "-o", tmp_path / "s.h5", "--size", "8", *args)
    assert_one_line_error(result, code, fragment)
    assert not (tmp_path / "s.h5").exists()


# -- project -------------------------------------------------------------------------------------


def test_project_truth_gives_the_expected_counts(study_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "expected.h5"
    result = invoke("project", study_file, "-o", out)
    assert_ok(result)
    assert "expected/measured" in result.stdout
    study, projected = read_study(study_file), read_study(out)
    assert projected.projections.shape == study.projections.shape
    assert projected.acquisition == study.acquisition
    np.testing.assert_array_equal(projected.truth_activity, study.truth_activity)
    # simulate's noise-free expected total, reproduced by projecting the truth
    expected_total = float(study.provenance["expected_total_counts"])
    assert math.isclose(projected.projections.sum(dtype=np.float64), expected_total, rel_tol=1e-4)
    assert projected.provenance["projected_from"] == "truth activity"
    assert projected.provenance["noise"].startswith("none")
    assert_one_line_error(invoke("project", study_file, "-o", out), 1, "--force")
    assert_ok(invoke("project", study_file, "-o", out, "--force"))


def test_project_needs_truth_or_activity(study_file: Path, tmp_path: Path) -> None:
    no_truth = tmp_path / "no_truth.h5"
    study = read_study(study_file)
    write_study(
        no_truth, dataclasses.replace(study, truth_activity=None, labels=None, label_names={})
    )
    result = invoke("project", no_truth, "-o", tmp_path / "out.h5")
    assert_one_line_error(result, 1, "truth", "--activity")


# -- info ----------------------------------------------------------------------------------------


def test_info_study(study_file: Path) -> None:
    result = invoke("info", study_file)
    assert_ok(result)
    out = result.stdout
    for text in (
        "spect-study (study file)",
        "format version",
        "software",
        "created (UTC)",
        "24×24×24 voxels",
        "8: 0°–315°, step 45°",
        "Tc-99m, 140.5 keV",
        "LEHR: D 1.11, L 24.05, septa 0.16 mm, hex, radius 250 mm",
        "ok (a valid study file)",
        "/projections/counts",
        "/truth/activity",
    ):
        assert text in out, text


def test_info_broken_study_still_lists_it(study_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    shutil.copy(study_file, broken)
    with h5py.File(broken, "r+") as f:
        f["/projections/counts"][0, 0, 0] = -5.0
        del f["/acquisition"].attrs["energy_keV"]
    result = invoke("info", broken)
    assert "FAILED" in result.stdout and "/projections/counts" in result.stdout
    assert_one_line_error(result, 1, "broken.h5")  # listed, then exit code 1


def test_info_not_hdf5_is_one_line_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_text("not a study\n")
    assert_one_line_error(invoke("info", junk), 1, "not an HDF5 file")
    assert_one_line_error(invoke("info", tmp_path / "missing.h5"), 1, "no such file")


# -- show ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["auto", "volume", "both"])
def test_show_study_writes_png(study_file: Path, tmp_path: Path, kind: str) -> None:
    png = tmp_path / f"{kind}.png"
    result = invoke("show", study_file, "-o", png, "--kind", kind)
    assert_ok(result)
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    assert no_temporary_files(tmp_path)


def test_show_refuses_to_overwrite_then_force(study_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "views.png"
    png.write_bytes(b"old")
    assert_one_line_error(invoke("show", study_file, "-o", png), 1, "--force")
    assert png.read_bytes() == b"old"
    assert_ok(invoke("show", study_file, "-o", png, "--force", "--slice-at", "centre"))
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_show_broken_file_is_one_line_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 64)
    assert_one_line_error(invoke("show", junk, "-o", tmp_path / "x.png"), 1, "junk.h5")
    assert not (tmp_path / "x.png").exists()


# -- the installed console script ----------------------------------------------------------------


def _console_script() -> str:
    beside = Path(sys.executable).parent / "spect"
    found = str(beside) if beside.exists() else shutil.which("spect")
    if found is None:
        pytest.skip("the spect console script is not installed")
    return found


def test_console_script_simulate_then_info(tmp_path: Path) -> None:
    spect = _console_script()
    env = {**os.environ, "SPECT_PROGRESS": "0"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [spect, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
        )

    version = run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"spect {package_version()}"
    sim = run("simulate", "-o", "s.h5", "--size", "12", "--counts", "1e4")
    assert sim.returncode == 0, sim.stderr
    info = run("info", "s.h5")
    assert info.returncode == 0, info.stderr
    assert "spect-study" in info.stdout and "ok (a valid study file)" in info.stdout
    assert not sim.stderr  # no progress bars or warnings when stderr is not a terminal

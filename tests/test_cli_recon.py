"""``spect recon mlem`` end to end, and the commands that read its result files."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from recon.data.phantoms import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.io import read_result, read_study, write_study
from spectproj import ParallelGeometry

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def assert_one_line_error(result, code: int = 1, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recon")


@pytest.fixture(scope="module")
def study_file(folder: Path) -> Path:
    """An 8-view Tc-99m study on 20³ voxels, LEHR collimator, scatter background."""
    phantom = make_torso(default_grid(20), 140.5)
    geometry = ParallelGeometry.full_circle(phantom.grid, 8, radius_mm=250.0)
    study = simulate_acquisition(
        phantom, geometry, collimator="LEHR", scatter_fraction=0.2, total_counts=1e5, seed=1
    )
    path = folder / "study.h5"
    write_study(path, study)
    return path


@pytest.fixture(scope="module")
def result_file(folder: Path, study_file: Path) -> tuple[Path, object]:
    path = folder / "mlem.h5"
    result = invoke("recon", "mlem", study_file, "-o", path, "--iterations", "5")
    assert_ok(result)
    return path, result


def test_mlem_writes_a_result(result_file, study_file: Path) -> None:
    path, run = result_file
    assert "log-likelihood" in run.stdout and "wrote" in run.stdout
    result = read_result(path)
    study = read_study(study_file)
    assert result.method == "mlem"
    assert result.grid == study.grid and result.activity.shape == study.grid.shape
    assert result.activity_unit == "Bq/mL"
    assert result.study_file == str(study_file)
    ll = result.history["log_likelihood"]
    assert ll.shape == (5,) and result.history["log_prior"].shape == (5,)
    assert np.all(np.diff(ll) >= -1e-6 * np.abs(ll[:-1]))  # MLEM never lowers the likelihood
    assert ll[-1] > ll[0]
    p = result.parameters
    assert p["iterations"] == 5 and p["subsets"] == 1 and p["prior"] is None
    assert p["study_file"] == str(study_file) and p["device"] == "cpu"
    assert p["count_scale"] == pytest.approx(study.acquisition.count_scale)
    assert p["attenuation"] is True and p["background"] is True
    assert p["collimator"] == "LEHR" and p["collimator_sigma0_mm"] > 0
    # quantitative: the total activity is close to the truth's
    total, truth = result.activity.sum(), study.truth_activity.sum()
    assert abs(total / truth - 1.0) < 0.1


def test_mlem_refuses_to_overwrite_then_force(result_file, study_file: Path) -> None:
    path, _ = result_file
    before = path.stat().st_mtime_ns
    result = invoke("recon", "mlem", study_file, "-o", path, "--iterations", "1")
    assert_one_line_error(result, 1, "already exists", "--force")
    assert path.stat().st_mtime_ns == before
    copy = path.with_name("forced.h5")
    shutil.copy(path, copy)
    assert_ok(invoke("recon", "mlem", study_file, "-o", copy, "--iterations", "1", "--force"))
    assert read_result(copy).history["log_likelihood"].shape == (1,)


def test_osem_map_and_filter(study_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.h5"
    result = invoke(
        "recon", "mlem", study_file, "-o", out, "--iterations", "2", "--subsets", "2",
        "--prior", "relative-difference", "--beta", "0.01", "--gamma", "1.5",
        "--filter-fwhm-mm", "15",
    )  # fmt: skip
    assert_ok(result)
    r = read_result(out)
    assert r.method == "map-osl"
    assert r.parameters["prior"] == "relative_difference" and r.parameters["beta"] == 0.01
    assert r.parameters["gamma"] == 1.5 and r.parameters["filter_fwhm_mm"] == 15.0
    assert r.history["log_prior"].shape == (2,) and np.all(r.history["log_prior"] > 0)
    assert r.extras["unfiltered_activity"].shape == r.activity.shape
    osem = tmp_path / "osem.h5"
    assert_ok(
        invoke("recon", "mlem", study_file, "-o", osem, "--iterations", "1", "--subsets", "4")
    )
    assert read_result(osem).method == "osem"


def test_no_attenuation_no_collimator(study_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.h5"
    args = ["--iterations", "1", "--no-attenuation", "--no-collimator"]
    assert_ok(invoke("recon", "mlem", study_file, "-o", out, *args))
    p = read_result(out).parameters
    assert p["attenuation"] is False and p["collimator"] is None


def test_mlem_support_body_by_default(result_file, study_file: Path, tmp_path: Path) -> None:
    from recon.support import resolve_support

    study = read_study(study_file)
    body, note = resolve_support(study, "body")
    assert body is not None
    path, run = result_file
    result = read_result(path)
    p = result.parameters
    share = 100.0 * body.sum() / body.size
    assert p["support"] == "body"
    assert p["support_note"] == note  # recon.support's own note, e.g. "body (μ > 0.1 × ..."
    assert note.startswith("body (μ > 0.1 × water's μ at 140.5 keV, holes filled")
    assert note.endswith(f"; {share:.1f} % of the grid)")
    assert "support" in run.stdout
    assert np.all(result.activity[~body] == 0) and result.activity[body].sum() > 0
    out = tmp_path / "free.h5"
    assert_ok(
        invoke("recon", "mlem", study_file, "-o", out, "--iterations", "2", "--support", "none")
    )
    free = read_result(out)
    assert (free.parameters["support"], free.parameters["support_note"]) == (
        "none",
        "none (--support none)",
    )
    assert free.activity[~body].sum() > 0.05 * free.activity.sum()  # activity in the air
    assert_one_line_error(
        invoke("recon", "mlem", study_file, "-o", tmp_path / "a.h5", "--support", "anatomy"),
        1,
        "support 'anatomy' needs a study with an anatomy",
    )


def test_mlem_support_without_mu_ct_or_anatomy(study_file: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.h5"
    write_study(bare, dataclasses.replace(read_study(study_file), mu_per_mm=None, ct_hu=None))
    out = tmp_path / "r.h5"
    assert_ok(invoke("recon", "mlem", bare, "-o", out, "--iterations", "1"))
    p = read_result(out).parameters
    assert (p["support"], p["support_note"]) == (
        "none",
        "none (the study has no μ, CT or anatomy)",
    )
    assert_one_line_error(
        invoke("recon", "mlem", bare, "-o", tmp_path / "b.h5", "--support", "body"),
        1,
        "support 'body' needs a study with μ, a CT or an anatomy",
    )


def test_recon_group_alone_shows_its_help() -> None:
    result = invoke("recon")
    assert_ok(result)
    assert "mlem" in result.stdout and not result.stderr


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--beta", "0.1"], 1, "--prior"),
        (["--prior", "quadratic"], 1, "--beta"),
        (["--subsets", "9"], 1, "--subsets"),
        (["--iterations", "0"], 2, "--iterations"),
        (["--prior", "tv"], 2, "--prior"),
    ],
)
def test_bad_options(study_file: Path, tmp_path: Path, args, code: int, fragment: str) -> None:
    result = invoke("recon", "mlem", study_file, "-o", tmp_path / "r.h5", *args)
    assert_one_line_error(result, code, fragment)
    assert not (tmp_path / "r.h5").exists()


def test_cuda_device(study_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cuda.h5"
    result = invoke("recon", "mlem", study_file, "-o", out, "--iterations", "1", "--device", "cuda")
    if torch.cuda.is_available():
        assert_ok(result)
        assert read_result(out).parameters["device"].startswith("cuda")
    else:
        assert_one_line_error(result, 1, "--device cuda", "CUDA")
        assert not out.exists()


def test_broken_study_is_one_line_error(study_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    shutil.copy(study_file, broken)
    with h5py.File(broken, "r+") as f:
        f["/projections/counts"][0, 0, 0] = np.nan
    out = tmp_path / "r.h5"
    assert_one_line_error(
        invoke("recon", "mlem", broken, "-o", out), 1, "broken.h5", "/projections/counts", "NaN"
    )
    junk = tmp_path / "junk.h5"
    junk.write_text("junk")
    assert_one_line_error(invoke("recon", "mlem", junk, "-o", out), 1, "not an HDF5 file")
    assert_one_line_error(invoke("recon", "mlem", tmp_path / "none.h5", "-o", out), 1, "no such")
    assert not out.exists()


def test_unknown_collimator_name_suggests_no_collimator(study_file: Path, tmp_path: Path) -> None:
    study = read_study(study_file)
    odd = tmp_path / "odd.h5"
    acquisition = dataclasses.replace(study.acquisition, collimator="PINHOLE")
    write_study(odd, dataclasses.replace(study, acquisition=acquisition))
    out = tmp_path / "r.h5"
    assert_one_line_error(invoke("recon", "mlem", odd, "-o", out), 1, "--no-collimator")
    assert_ok(invoke("recon", "mlem", odd, "-o", out, "--iterations", "1", "--no-collimator"))


# -- the result in the other commands ------------------------------------------------------------


def test_info_result(result_file) -> None:
    path, _ = result_file
    result = invoke("info", path)
    assert_ok(result)
    for text in ("spect-result (result file)", "mlem", "log_likelihood (5)", "ok (a valid result"):
        assert text in result.stdout, text


def test_show_result(result_file, tmp_path: Path) -> None:
    path, _ = result_file
    png = tmp_path / "result.png"
    assert_ok(invoke("show", path, "-o", png))
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    result = invoke("show", path, "-o", tmp_path / "p.png", "--kind", "projections")
    assert_one_line_error(result, 1, "no projections")


def test_project_a_reconstruction(result_file, study_file: Path, tmp_path: Path) -> None:
    path, _ = result_file
    out = tmp_path / "reprojected.h5"
    assert_ok(invoke("project", study_file, "--activity", path, "-o", out))
    measured, expected = read_study(study_file), read_study(out)
    # MLEM matches the measured total (within a few % after 5 iterations)
    ratio = expected.projections.sum() / measured.projections.sum()
    assert abs(ratio - 1.0) < 0.05
    assert expected.provenance["projected_from"] == f"reconstruction {path}"

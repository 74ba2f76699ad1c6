"""`recon.reconstruct`: one library call per method, and the CLI and the batch give exactly what it
gives (bit-identical activity, the same parameter keys); `resolve_collimator`; the EM count
balance; bad arguments; the summary rows and the provenance of bound options; the other library
functions the CLI calls (`torso_study`, `expected_counts_study`, `evaluate_result`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from recon.algorithms.mlem import EMConfig
from recon.batch import reconstruct_batch
from recon.data.phantoms import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.data.torso_study import torso_study
from recon.evaluation.evaluate_result import evaluate_result, evaluation_csv
from recon.evaluation.expected_counts import expected_counts_study
from recon.io import Result, read_result, read_study, write_study
from recon.io.summary import result_rows, study_rows, total_mbq
from recon.nerf.config import TrainConfig
from recon.nerf.field import FieldConfig
from recon.reconstruct import (
    check_nerf_folder,
    reconstruct_mlem,
    reconstruct_nerf,
    resolve_collimator,
)
from spectproj import ParallelGeometry

runner = CliRunner()

#: A tiny NeRF (also written as TOML for ``spect recon nerf --config``).
TINY_FIELD = {
    "encoding": "hashgrid", "latent_dim": 2, "hash_levels": 2, "hash_features": 2,
    "hash_log2_size": 8, "hash_base_resolution": 4, "hash_finest_resolution": 8,
    "hash_mlp_depth": 2, "hash_mlp_width": 8,
}  # fmt: skip
TINY_NERF = TrainConfig(
    steps=2, rays_per_step=32, n_samples=8, val_every=0, log_every=0, checkpoint_every=0,
    preview_every=0, field=FieldConfig(**TINY_FIELD),
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def study_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 views of a 12³ torso, LEHR collimator at 250 mm, scatter background."""
    phantom = make_torso(default_grid(12), 140.5)
    geometry = ParallelGeometry.full_circle(phantom.grid, 4, radius_mm=250.0)
    study = simulate_acquisition(
        phantom, geometry, collimator="LEHR", scatter_fraction=0.2, total_counts=2e4, seed=2
    )
    path = tmp_path_factory.mktemp("reconstruct") / "tiny.h5"
    write_study(path, study)
    return path


@pytest.fixture(scope="module")
def planar_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AP/PA of an 8³ torso, no collimator, no scatter (for quick NeRF fits)."""
    phantom = make_torso(default_grid(8), 140.5)
    study = simulate_acquisition(
        phantom, ParallelGeometry.ap_pa(phantom.grid), total_counts=2e4, seed=3
    )
    path = tmp_path_factory.mktemp("reconstruct") / "planar.h5"
    write_study(path, study)
    return path


def _invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_mlem_library_cli_and_batch_are_identical(study_path: Path, tmp_path: Path) -> None:
    study = read_study(study_path)
    config = EMConfig(iterations=3, subsets=2)
    library = reconstruct_mlem(study, config, study_file=study_path)
    out = tmp_path / "cli.h5"
    run = _invoke("recon", "mlem", study_path, "-o", out, "--iterations", 3, "--subsets", 2)
    cli = read_result(out)
    summary = reconstruct_batch([study_path], "mlem", tmp_path / "batch", mlem=config)
    assert summary.n_ok == 1, summary.rows
    batch = read_result(summary.rows[0].output)

    assert library.activity.dtype == np.float32 and library.activity.shape == (12, 12, 12)
    assert np.array_equal(cli.activity, library.activity)
    assert np.array_equal(batch.activity, library.activity)
    assert set(cli.parameters) == set(library.parameters)
    assert set(batch.parameters) == set(library.parameters) | {"batch"}
    p = library.parameters
    assert (p["method"], p["subsets"], p["n_views"], p["collimator"]) == ("osem", 2, 4, "LEHR")
    assert p["attenuation"] is True and p["background"] is True and p["support"] == "body"
    assert len(library.history["log_likelihood"]) == 3
    # the CLI's table is the library's summary rows
    total = dict(result_rows(library, study))["total activity"]
    assert total in " ".join(run.stdout.split())
    assert summary.rows[0].total_mbq == pytest.approx(
        total_mbq(library.activity, study.grid, "Bq/mL"), rel=1e-12
    )


def test_mlem_keeps_the_measured_total(study_path: Path) -> None:
    """EM from a uniform start: Σ count_scale·A(x) = Σ counts after every iteration (no
    background, no attenuation or collimator needed for the identity; here with both)."""
    study = read_study(study_path)
    no_background = dataclasses.replace(study, background=None)
    result = reconstruct_mlem(no_background, EMConfig(iterations=2), support="none")
    expected = expected_counts_study(no_background, result)
    measured = float(study.projections.sum(dtype=np.float64))
    assert float(expected.projections.sum(dtype=np.float64)) == pytest.approx(measured, rel=1e-4)
    assert expected.provenance["projected_from"] == "reconstruction result"


def test_nerf_library_cli_and_batch_are_identical(planar_path: Path, tmp_path: Path) -> None:
    study = read_study(planar_path)
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        "steps = 2\nrays_per_step = 32\nn_samples = 8\nval_every = 0\nlog_every = 0\n"
        "checkpoint_every = 0\npreview_every = 0\n[field]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY_FIELD.items())
    )
    config = TrainConfig.from_toml(toml, TrainConfig.cpu_default())  # what the CLI builds
    library = reconstruct_nerf(study, config, study_file=planar_path)
    out = tmp_path / "cli.h5"
    _invoke("recon", "nerf", planar_path, "-o", out, "--config", toml, "--threads", 1)
    cli = read_result(out)
    summary = reconstruct_batch([planar_path], "nerf", tmp_path / "batch", nerf=config)
    assert summary.n_ok == 1, summary.rows
    batch = read_result(summary.rows[0].output)

    assert np.array_equal(cli.activity, library.activity)
    assert np.array_equal(batch.activity, library.activity)
    assert set(cli.parameters) == set(library.parameters)
    assert set(batch.parameters) == set(library.parameters) | {"batch"}
    p = library.parameters
    assert p["steps_done"] == 2 and p["support"] == "body" and p["render"] == "lines"
    assert library.activity.shape == (8, 8, 8) and np.isfinite(library.activity).all()
    assert cli.parameters["out_dir"] == str(tmp_path / "cli_nerf")


def test_resolve_collimator(study_path: Path) -> None:
    study = read_study(study_path)
    response, note = resolve_collimator(study)
    assert response is not None and response == study.collimator_response()
    assert note.startswith("LEHR at 140.5 keV, radius 250 mm (σ = ")
    assert resolve_collimator(study, enabled=False) == (None, "off (--no-collimator)")
    acq = dataclasses.replace(study.acquisition, collimator="XYZ")
    odd = dataclasses.replace(study, acquisition=acq)
    with pytest.raises(ValueError, match=r"XYZ.*--no-collimator"):
        resolve_collimator(odd)


@pytest.mark.parametrize(
    ("method", "kwargs", "error", "match"),
    [
        ("mlem", {"config": EMConfig(subsets=5)}, ValueError, "subsets 5 exceeds .* 4 view"),
        ("mlem", {"config": EMConfig(), "support": "lungs"}, ValueError, "support must be one"),
        ("nerf", {"fine_tune": True}, ValueError, "--fine-tune needs --prior"),
        ("nerf", {"representation": "voxels"}, ValueError, "representation must be one of"),
        ("nerf", {"resume": "missing.pt"}, FileNotFoundError, "missing.pt: no such checkpoint"),
        ("nerf", {"prior": "m.pt", "representation": "anatomy-field"}, ValueError, "--prior"),
        ("nerf", {"prior": "m.pt", "support": "body"}, ValueError, "--support cannot be used"),
    ],
)
def test_bad_arguments(study_path: Path, method: str, kwargs: dict, error: type, match: str):
    study = read_study(study_path)
    with pytest.raises(error, match=match):
        if method == "mlem":
            reconstruct_mlem(study, **kwargs)
        else:
            reconstruct_nerf(study, TINY_NERF, **kwargs)
    with pytest.raises(TypeError, match=r"study must be a recon\.io\.Study, got str"):
        reconstruct_mlem("study.h5", EMConfig())  # type: ignore[arg-type]


def test_check_nerf_folder(tmp_path: Path) -> None:
    check_nerf_folder(tmp_path)  # empty: fine
    (tmp_path / "log.csv").write_text("step\n")
    with pytest.raises(FileExistsError, match=r"holds a previous run \(log\.csv\)"):
        check_nerf_folder(tmp_path)
    check_nerf_folder(tmp_path, overwrite=True)
    check_nerf_folder(tmp_path, with_prior=True)  # a prior fit keeps its phases in sub-folders


def test_study_rows(study_path: Path) -> None:
    study = read_study(study_path)
    rows = dict(study_rows(study))
    assert rows["views (β)"] == "4: 0°, 90°, 180°, 270°"
    assert rows["grid"] == "12×12×12 voxels (z, y, x) of 33.3333×33.3333×33.3333 mm"
    assert rows["collimator"] == "LEHR: D 1.11, L 24.05, septa 0.16 mm, hex"
    assert rows["radius"] == "250 mm"
    assert rows["total counts"] == f"{float(study.projections.sum(dtype=np.float64)):.6g}"
    share = 100 * float(study.background.sum()) / float(study.projections.sum(dtype=np.float64))
    assert rows["of which scatter (expected)"] == (
        f"{float(study.background.sum()):.6g} ({share:.1f} %, simulated)"
    )
    voxel_ml = (400.0 / 12) ** 3 * 1e-3
    truth = float(study.truth_activity.sum(dtype=np.float64)) * voxel_ml * 1e-6
    assert rows["truth activity"].endswith(f"; {truth:.6g} MBq in all")


def test_provenance_from_bound_options(study_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "expected.h5"
    _invoke("project", study_path, "-o", out)
    _invoke("project", study_path, "-o", out, "--force")  # out exists now: still no input
    p = read_study(out).provenance
    assert p["cli_command"] == "spect project"
    options = json.loads(p["cli_parameters"])
    assert options == {"study_file": str(study_path), "output": str(out), "activity": None}
    assert json.loads(p["cli_inputs"]) == [str(study_path)]
    assert p["software"].startswith("spect")


# -- the other library functions the CLI calls ---------------------------------------------------


def test_torso_study_resolves_the_choices() -> None:
    made = torso_study(size=8, nuclide="Lu-177", views=4, total_counts=1e4, noise=False)
    study = made.study
    assert (made.preset, made.collimator) == ("lu177-dotatate", "MEGP")
    assert study.acquisition.collimator == "MEGP" and study.acquisition.angles_deg[1] == 90.0
    assert float(study.projections.sum(dtype=np.float64)) == pytest.approx(1e4, rel=1e-5)
    truth = total_mbq(study.truth_activity, study.grid, study.activity_unit)
    assert made.phantom_mbq == pytest.approx(truth, rel=1e-6)
    plain = torso_study(size=8, collimator="none", total_counts=1e3, noise=False)
    assert (plain.preset, plain.collimator, plain.study.projections.shape[0]) == ("tc99m", None, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nuclide": "Xe-133"}, "nuclide must be one of"),
        ({"preset": "f18"}, "preset must be one of"),
        ({"collimator": "pinhole"}, "unknown collimator .pinhole."),
        ({"views": 0}, "views must be 'ap-pa' or a positive number"),
    ],
)
def test_torso_study_bad_choices(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        torso_study(size=8, **kwargs)


def test_expected_counts_and_evaluation_of_the_truth(study_path: Path) -> None:
    study = read_study(study_path)
    perfect = Result(activity=study.truth_activity, grid=study.grid, method="truth")
    expected = expected_counts_study(study, perfect, result_file="truth.h5")
    from_truth = expected_counts_study(study)
    assert np.array_equal(expected.projections, from_truth.projections)
    assert from_truth.provenance["projected_from"] == "truth activity"
    background = float(study.background.sum(dtype=np.float64))
    assert float(from_truth.projections.sum(dtype=np.float64)) > background > 0
    report = evaluate_result(study, perfect)
    assert report["metrics"]["nrmse"] == pytest.approx(0.0, abs=1e-7)
    assert report["metrics"]["total_activity"]["relative_error"] == pytest.approx(0.0, abs=1e-6)
    assert evaluation_csv(report).splitlines()[0] == "section,name,metric,value"
    other = Result(activity=np.zeros((4, 4, 4), np.float32), grid=default_grid(4), method="x")
    with pytest.raises(ValueError, match=r"other\.h5: its grid"):
        expected_counts_study(study, other, result_file="other.h5")
    with pytest.raises(ValueError, match=r"other\.h5: its grid"):
        evaluate_result(study, other, result_file="other.h5")
    with pytest.raises(ValueError, match="has no truth activity"):
        expected_counts_study(dataclasses.replace(study, truth_activity=None))

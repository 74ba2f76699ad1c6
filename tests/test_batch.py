"""`recon.batch.reconstruct_batch` and ``spect recon batch``: many studies, one broken; the broken
one is a failed row with its one-line error and the others are reconstructed, sequentially and in
a pool of 2 spawned processes; summary files; NeRF studies; bad arguments."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from recon.algorithms.mlem import EMConfig
from recon.batch import SUMMARY_COLUMNS, output_path, reconstruct_batch
from recon.data.phantoms.torso import TorsoPhantom, default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.io import read_result, write_study
from recon.nerf.config import TrainConfig
from recon.nerf.field import FieldConfig
from spectproj import ParallelGeometry

TINY_NERF = TrainConfig(
    steps=3, rays_per_step=64, n_samples=16, lr=1e-2, val_every=0, log_every=0,
    checkpoint_every=0,
    field=FieldConfig(
        encoding="hashgrid", latent_dim=4, hash_levels=4, hash_features=2, hash_log2_size=10,
        hash_base_resolution=4, hash_finest_resolution=32, hash_mlp_depth=2, hash_mlp_width=16,
    ),
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two good 16³ AP/PA studies and, between them, a file that is not HDF5."""
    folder = tmp_path_factory.mktemp("batch")
    grid = default_grid(16)
    paths = []
    for k, liver in enumerate((5000.0, 3000.0)):
        phantom = make_torso(
            grid, config=TorsoPhantom().with_concentrations(liver=liver), supersample=2
        )
        study = simulate_acquisition(
            phantom, ParallelGeometry.ap_pa(grid), total_counts=2e5, seed=k
        )
        path = folder / f"good{k}.h5"
        write_study(path, study)
        paths.append(path)
    broken = folder / "broken.h5"
    broken.write_bytes(b"this is not an HDF5 file")
    return [paths[0], broken, paths[1]]


def _check_rows(summary, studies: list[Path], out: Path) -> None:
    assert [r.study for r in summary.rows] == [str(p) for p in studies]
    assert [r.status for r in summary.rows] == ["ok", "failed", "ok"]
    bad = summary.rows[1]
    assert bad.output is None and bad.error is not None and "\n" not in bad.error
    assert bad.error.startswith("StudyFileError:") and "not an HDF5 file" in bad.error
    assert not output_path(studies[1], out).exists()
    for row in (summary.rows[0], summary.rows[2]):
        result = read_result(row.output)
        assert result.activity.shape == (16, 16, 16)
        assert row.total_mbq is not None and row.total_mbq > 0
        assert row.truth_mbq is not None and row.organ_error is not None
        assert row.total_mbq == pytest.approx(
            float(np.sum(result.activity, dtype=np.float64)) * 25.0**3 * 1e-3 * 1e-6
        )
    assert summary.n_ok == 2 and len(summary.failed) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_one_broken_study_does_not_stop_the_others(studies, tmp_path, workers) -> None:
    seen = []
    summary = reconstruct_batch(
        studies, "mlem", tmp_path, workers=workers, mlem=EMConfig(iterations=3),
        callback=lambda done, total, row: seen.append((done, total, row.status)),
    )  # fmt: skip
    _check_rows(summary, studies, tmp_path)
    assert [d for d, _, _ in seen] == [1, 2, 3] and {t for _, t, _ in seen} == {3}
    assert sorted(s for _, _, s in seen) == ["failed", "ok", "ok"]
    assert summary.workers == workers
    with open(tmp_path / "summary.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "not an HDF5 file" in rows[1]["error"]
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["n_ok"] == 2 and data["n_failed"] == 1 and len(data["rows"]) == 3
    # Existing results are refused per study (a failed row), not for the whole batch.
    again = reconstruct_batch(studies[:1], "mlem", tmp_path, mlem=EMConfig(iterations=1))
    assert again.rows[0].status == "failed" and "already exists" in again.rows[0].error
    forced = reconstruct_batch(
        studies[:1], "mlem", tmp_path, mlem=EMConfig(iterations=1), overwrite=True
    )
    assert forced.rows[0].ok


def test_nerf_batch_and_bad_arguments(studies, tmp_path) -> None:
    summary = reconstruct_batch(studies, "nerf", tmp_path, nerf=TINY_NERF)
    assert [r.status for r in summary.rows] == ["ok", "failed", "ok"]
    result = read_result(summary.rows[0].output)
    assert result.method == "nerf" and result.parameters["steps_done"] == 3
    assert result.parameters["batch"] is True

    with pytest.raises(ValueError, match="no study"):
        reconstruct_batch([], "mlem", tmp_path)
    with pytest.raises(ValueError, match="method"):
        reconstruct_batch(studies, "fbp", tmp_path)
    with pytest.raises(ValueError, match="both write"):
        reconstruct_batch([studies[0], studies[0]], "mlem", tmp_path)
    with pytest.raises(ValueError, match="prior"):
        reconstruct_batch(studies, "mlem", tmp_path, prior="model.pt")
    with pytest.raises(ValueError, match="workers"):
        reconstruct_batch(studies, "mlem", tmp_path, workers=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            reconstruct_batch(studies, "mlem", tmp_path, devices=["cuda:0"])
    assert dataclasses.asdict(summary.rows[1])["status"] == "failed"


def test_cli_recon_batch_reports_the_broken_study(studies, tmp_path) -> None:
    out = tmp_path / "results"
    args = ["recon", "batch", *map(str, studies), "-o", str(out), "--iterations", "2"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 1, done.output
    assert "broken.h5" in done.output and "not an HDF5 file" in done.output
    assert "2 of 3 done" in done.output and "1 of 3 studies failed" in done.output
    assert output_path(studies[0], out).is_file() and output_path(studies[2], out).is_file()
    assert (out / "summary.csv").is_file()
    good = CliRunner().invoke(
        app, ["recon", "batch", str(studies[0]), "-o", str(out), "--iterations", "1", "--force"]
    )
    assert good.exit_code == 0, good.output
    wrong = CliRunner().invoke(
        app, ["recon", "batch", str(studies[0]), "-o", str(out), "--steps", "3"]
    )
    assert wrong.exit_code == 1 and "--method nerf" in wrong.output

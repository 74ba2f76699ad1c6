"""The ``spect`` command line: version, help, and the first ``demo``."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app, package_version

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"spect {package_version()}"
    assert re.fullmatch(r"spect \d+\.\d+\.\d+\S*", result.stdout.strip())


def test_help_lists_demo() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "demo" in result.stdout
    assert "--size" not in runner.invoke(app, ["demo", "--help"]).stdout  # hidden


def test_bad_option_is_one_line_error() -> None:
    result = runner.invoke(app, ["demo", "--no-such-option"])
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("demo") / "out"
    result = runner.invoke(app, ["demo", "-o", str(folder)])
    assert result.exit_code == 0, result.output
    return folder, result


def test_demo_writes_png_and_npz(demo_folder) -> None:
    folder, result = demo_folder
    png = folder / "ap_pa.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    n = 64
    with np.load(folder / "projections.npz") as data:
        assert {"projections", "views", "angles_deg", "bin_centres_mm", "row_centres_mm"} <= set(
            data.files
        )
        proj = data["projections"]
        assert proj.shape == (2, n, n)
        assert proj.dtype == np.float32
        assert np.isfinite(proj).all() and proj.min() >= 0 and proj.max() > 0
        assert list(data["views"]) == ["AP", "PA"]
        np.testing.assert_allclose(data["angles_deg"], [0.0, 180.0])
        assert data["bin_centres_mm"].shape == (n,)
        assert data["row_centres_mm"].shape == (n,)
        # The lesion is anterior: AP sees it through less water than PA.
        row, b = data["lesion_row_bin"]
        assert proj[0, row, b] > proj[1, row, proj.shape[2] - 1 - b]
    assert not list(folder.glob(".*.tmp"))  # no temporary files left behind
    assert "ln(AP/PA)" in result.stdout


def test_demo_refuses_to_overwrite_then_force(demo_folder) -> None:
    folder, _ = demo_folder
    before = (folder / "projections.npz").stat().st_mtime_ns
    result = runner.invoke(app, ["demo", "-o", str(folder)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "--force" in lines[0]
    assert "Traceback" not in result.output
    assert (folder / "projections.npz").stat().st_mtime_ns == before

    result = runner.invoke(app, ["demo", "-o", str(folder), "--force", "--size", "16"])
    assert result.exit_code == 0, result.output
    with np.load(folder / "projections.npz") as data:
        assert data["projections"].shape == (2, 16, 16)  # replaced
    assert (folder / "ap_pa.png").exists() and (folder / "projections.npz").exists()


def test_demo_output_is_a_file(tmp_path) -> None:
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    result = runner.invoke(app, ["demo", "-o", str(target)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "not a folder" in result.stderr


def test_demo_hidden_size_option(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "-o", str(tmp_path), "--size", "16"])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "projections.npz") as data:
        assert data["projections"].shape == (2, 16, 16)
        np.testing.assert_allclose(data["pixel_size_mm"], [16.0, 16.0])

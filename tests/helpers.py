"""Small phantoms for the tests (partial-volume accurate, so analytic values can be checked)."""

from __future__ import annotations

from typing import Any

import torch

from spectproj import ImageGrid


def disc_fraction(grid: ImageGrid, radius_mm: float, supersample: int = 6) -> torch.Tensor:
    """``[Z, Y, X]`` fraction of each voxel inside the cylinder x² + y² <= radius² (float64)."""
    _, ny, nx = grid.shape
    _, dy, dx = grid.spacing_mm
    sub = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    y = (grid.centres_mm(1)[:, None] + sub[None, :] * dy).reshape(ny, 1, supersample, 1)
    x = (grid.centres_mm(2)[:, None] + sub[None, :] * dx).reshape(1, nx, 1, supersample)
    inside = (x**2 + y**2 <= radius_mm**2).to(torch.float64).mean(dim=(2, 3))
    return inside.expand(grid.shape).clone()


def random_volume(shape: tuple[int, int, int], seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=dtype)


def invoke(*args: object) -> Any:
    """Run ``spect ARGS...`` in-process (typer's CliRunner), arguments as strings."""
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ok(result: Any) -> None:
    """The command succeeded and printed no traceback."""
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def assert_one_line_error(result: Any, *fragments: str) -> str:
    """The command failed with exit code 1 and one line ``Error: ...`` holding ``fragments``."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]

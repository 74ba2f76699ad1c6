"""Analytic shapes on an image grid, for phantoms and tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spectproj._validate import float_triplet, positive_triplet
from spectproj.grid import ImageGrid


def _coordinates(grid: ImageGrid, device: torch.device | str | None) -> tuple[torch.Tensor, ...]:
    z = grid.centres_mm(0, device=device)[:, None, None]
    y = grid.centres_mm(1, device=device)[None, :, None]
    x = grid.centres_mm(2, device=device)[None, None, :]
    return z, y, x


def ellipsoid_mask(
    grid: ImageGrid,
    centre_mm: Sequence[float],
    semi_axes_mm: Sequence[float],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``[Z, Y, X]``: voxel centres inside the ellipsoid.

    ``centre_mm`` is (z, y, x) and ``semi_axes_mm`` (a_z, a_y, a_x), both in mm.
    """
    cz, cy, cx = float_triplet("centre_mm", centre_mm, "mm")
    az, ay, ax = positive_triplet("semi_axes_mm", semi_axes_mm, "mm")
    z, y, x = _coordinates(grid, device)
    return ((z - cz) / az) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1.0

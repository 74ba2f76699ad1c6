"""Acquisition geometry of a parallel-hole (orthographic) camera.

Angles follow ``docs/conventions.md``: β is the detector position around the head–foot axis,
0 = anterior, 90 = patient right, 180 = posterior, 270 = patient left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spectproj.grid import ImageGrid

_ALIGNED_TOLERANCE_DEG = 1e-9


@dataclass(frozen=True)
class ParallelGeometry:
    """Detector angles, detector shape and pixel size for a volume on ``grid``.

    Parameters
    ----------
    grid:
        The image grid of the volumes to project.
    angles_deg:
        Detector angles β in degrees (one view each, in this order). Taken modulo 360.
    detector_shape:
        ``(rows, bins)``; default ``(Z, X)`` of the grid.
    pixel_size_mm:
        ``(row height, bin width)`` in mm; default ``(dz, dx)`` of the grid. May differ from the
        voxel size (e.g. 4.42 mm pixels on a 3.9 mm grid): detector pixels then receive the
        area-weighted mean of the line integrals they cover.
    radius_mm:
        Distance in mm from the rotation axis to the collimator face; needed only for the
        collimator blur. ``None`` if unknown.
    """

    grid: ImageGrid
    angles_deg: tuple[float, ...]
    # ``None`` (the default) is replaced in ``__post_init__``, so the attributes are never None.
    detector_shape: tuple[int, int] = None  # type: ignore[assignment]  # see __post_init__
    pixel_size_mm: tuple[float, float] = None  # type: ignore[assignment]  # see __post_init__
    radius_mm: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.grid, ImageGrid):
            raise TypeError(f"grid must be an ImageGrid, got {type(self.grid).__name__}")
        angles = _as_angles(self.angles_deg)
        object.__setattr__(self, "angles_deg", angles)
        shape = self.detector_shape or (self.grid.shape[0], self.grid.shape[2])
        try:
            shape_t = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise TypeError(f"detector_shape must be (rows, bins), got {shape!r}") from None
        if len(shape_t) != 2 or any(n < 1 for n in shape_t) or shape_t != tuple(shape):
            raise ValueError(
                f"detector_shape must be two positive integers (rows, bins), got {shape!r}"
            )
        object.__setattr__(self, "detector_shape", shape_t)
        pixel = self.pixel_size_mm or (self.grid.spacing_mm[0], self.grid.spacing_mm[2])
        try:
            pixel_t = tuple(float(p) for p in pixel)
        except (TypeError, ValueError):
            raise TypeError(f"pixel_size_mm must be (row, bin) in mm, got {pixel!r}") from None
        if len(pixel_t) != 2 or not all(math.isfinite(p) and p > 0 for p in pixel_t):
            raise ValueError(f"pixel_size_mm must be two positive lengths (mm), got {pixel!r}")
        object.__setattr__(self, "pixel_size_mm", pixel_t)
        if self.radius_mm is not None:
            r = float(self.radius_mm)
            if not (math.isfinite(r) and r > 0):
                raise ValueError(
                    f"radius_mm must be a positive length (mm) or None, got {self.radius_mm!r}"
                )
            object.__setattr__(self, "radius_mm", r)

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def ap_pa(cls, grid: ImageGrid, **kwargs: Any) -> ParallelGeometry:
        """Planar anterior (β = 0) and posterior (β = 180) views, in that order."""
        return cls(grid, angles_deg=(0.0, 180.0), **kwargs)

    @classmethod
    def full_circle(
        cls, grid: ImageGrid, n_views: int, start_deg: float = 0.0, **kwargs: Any
    ) -> ParallelGeometry:
        """``n_views`` equally spaced views over 360°, starting at ``start_deg``."""
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views must be a positive integer, got {n_views!r}")
        angles = tuple(float(start_deg) + 360.0 * k / n_views for k in range(n_views))
        return cls(grid, angles_deg=angles, **kwargs)

    # -- derived quantities ------------------------------------------------------------------
    @property
    def n_views(self) -> int:
        """Number of views V."""
        return len(self.angles_deg)

    def quadrant(self, view: int) -> int | None:
        """``k`` if view ``view`` is at ``k·90°`` (k = 0..3), else ``None`` (an oblique view)."""
        beta = self.angles_deg[view]
        k = round(beta / 90.0)
        if abs(beta - 90.0 * k) <= _ALIGNED_TOLERANCE_DEG:
            return k % 4
        return None

    def detector_centres_mm(
        self,
        axis: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Centres of detector rows (``axis=0``, z in mm) or bins (``axis=1``, r in mm)."""
        n, p = self.detector_shape[axis], self.pixel_size_mm[axis]
        return (torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2) * p

    def opposed_view(self, view: int) -> int | None:
        """Index of the view at β + 180° (the conjugate view), or ``None`` if absent."""
        target = (self.angles_deg[view] + 180.0) % 360.0
        for other, beta in enumerate(self.angles_deg):
            if abs(((beta - target + 180.0) % 360.0) - 180.0) <= _ALIGNED_TOLERANCE_DEG:
                return other
        return None


def _as_angles(angles_deg: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    if isinstance(angles_deg, torch.Tensor):
        angles_deg = angles_deg.detach().cpu().reshape(-1).tolist()
    try:
        angles = tuple(float(a) % 360.0 for a in angles_deg)
    except (TypeError, ValueError):
        raise TypeError(
            f"angles_deg must be a sequence of numbers (degrees), got {angles_deg!r}"
        ) from None
    if not angles:
        raise ValueError("angles_deg must hold at least one angle (degrees), got an empty list")
    if not all(math.isfinite(a) for a in angles):
        raise ValueError(f"angles_deg must be finite (degrees), got {angles_deg!r}")
    return angles

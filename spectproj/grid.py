"""The image grid: where the voxels of a ``[Z, Y, X]`` volume are, in mm.

See ``docs/conventions.md`` for the patient frame (DICOM LPS: +x patient left, +y posterior,
+z head) and the position of the rotation axis (the line x = y = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spectproj._validate import float_triplet, positive_triplet

AXES = ("z", "y", "x")


@dataclass(frozen=True)
class ImageGrid:
    """A regular voxel grid for volumes ``[Z, Y, X]``.

    Parameters
    ----------
    shape:
        Number of voxels ``(Z, Y, X)`` (slices, rows, columns).
    spacing_mm:
        Voxel size ``(dz, dy, dx)`` in mm.
    offset_mm:
        Position ``(oz, oy, ox)`` in mm of the volume's centre relative to the rotation axis
        (x = y = 0) and the detector's centre row (z = 0). ``(0, 0, 0)`` (default) centres it.

    Notes
    -----
    Voxel ``(k, j, i)`` lies at ``x = (i - (X-1)/2)·dx + ox`` and likewise for y and z.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        try:
            shape = tuple(int(n) for n in self.shape)
        except (TypeError, ValueError):
            raise TypeError(f"shape must be three integers (Z, Y, X), got {self.shape!r}") from None
        if len(shape) != 3 or any(n < 1 for n in shape) or shape != tuple(self.shape):
            raise ValueError(f"shape must be three positive integers (Z, Y, X), got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(
            self, "spacing_mm", positive_triplet("spacing_mm", self.spacing_mm, "mm")
        )
        object.__setattr__(self, "offset_mm", float_triplet("offset_mm", self.offset_mm, "mm"))

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size ``(Z·dz, Y·dy, X·dx)`` of the volume in mm."""
        (z, y, x), (dz, dy, dx) = self.shape, self.spacing_mm
        return (z * dz, y * dy, x * dx)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return math.prod(self.spacing_mm)

    @property
    def inplane_diagonal_mm(self) -> float:
        """Length in mm of the diagonal of the (y, x) cross-section."""
        return math.hypot(self.extent_mm[1], self.extent_mm[2])

    def centres_mm(
        self,
        axis: int | str,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Voxel-centre coordinates in mm along ``axis`` (0/'z', 1/'y' or 2/'x'), shape ``[N]``."""
        a = AXES.index(axis) if isinstance(axis, str) else int(axis)
        n, d, o = self.shape[a], self.spacing_mm[a], self.offset_mm[a]
        return (torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2) * d + o

    def index_of(self, point_mm: tuple[float, float, float]) -> tuple[float, float, float]:
        """Fractional voxel index ``(k, j, i)`` of a point ``(z, y, x)`` in mm."""
        k, j, i = (
            (p - o) / d + (n - 1) / 2
            for p, o, d, n in zip(
                point_mm, self.offset_mm, self.spacing_mm, self.shape, strict=True
            )
        )
        return (k, j, i)

"""What the format modules of `recon.io` share when they build a `Study`.

canonical_isotope
    A nuclide name as the library spells it (``"lu177"`` → ``"Lu-177"``).
detector_grid
    The image grid that covers a detector, centred on the rotation axis (Interfile without a
    volume, DICOM NM).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from spectproj import ImageGrid

__all__ = ["PathLike", "canonical_isotope", "detector_grid"]

PathLike = str | os.PathLike[str]


def canonical_isotope(name: str | None) -> str | None:
    """A nuclide name as the library spells it (``"lu177"`` → ``"Lu-177"``) when it is one of
    `recon.data.phantoms.NUCLIDES`, else the text as given (stripped); ``None`` for no name."""
    from recon.data.phantoms import nuclide_name

    if name is None or not str(name).strip():
        return None
    try:
        return nuclide_name(name)
    except ValueError:
        return str(name).strip()


def _count(extent_mm: float, size_mm: float) -> int:
    """Voxels of ``size_mm`` needed to cover ``extent_mm`` (a whole number within 1e-6 is exact)."""
    return max(1, math.ceil(extent_mm / size_mm - 1e-6))


def detector_grid(
    detector_shape: Sequence[int],
    pixel_size_mm: Sequence[float],
    *,
    spacing_mm: float | None = None,
    transverse_size: int | None = None,
) -> ImageGrid:
    """A grid centred on the rotation axis and the detector's centre row that covers the detector.

    Parameters
    ----------
    detector_shape, pixel_size_mm
        ``(rows, bins)`` and ``(row height, bin width)`` (mm).
    spacing_mm
        Isotropic voxel size (mm); default (row height, bin width, bin width), so that voxels line
        up with the detector pixels.
    transverse_size
        Voxels along y and x; default enough to cover the detector's width.

    Returns
    -------
    ImageGrid
        Z voxels covering the detector's height, Y = X voxels covering its width (or
        ``transverse_size``), offset 0.
    """
    rows, bins = (int(n) for n in detector_shape)
    row_mm, bin_mm = (float(p) for p in pixel_size_mm)
    if spacing_mm is not None and not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm must be a positive length (mm), got {spacing_mm!r}")
    dz, dxy = (spacing_mm, spacing_mm) if spacing_mm is not None else (row_mm, bin_mm)
    if transverse_size is not None and transverse_size < 1:
        raise ValueError(f"transverse_size must be >= 1, got {transverse_size}")
    nz = _count(rows * row_mm, dz)
    nxy = transverse_size if transverse_size is not None else _count(bins * bin_mm, dxy)
    return ImageGrid((nz, nxy, nxy), (dz, dxy, dxy))

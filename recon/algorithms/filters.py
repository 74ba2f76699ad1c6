"""Post-reconstruction Gaussian filtering with a FWHM in mm (anisotropic voxels allowed)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spectproj import ImageGrid

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def gaussian_filter(volume: torch.Tensor, grid: ImageGrid, fwhm_mm: float) -> torch.Tensor:
    """Separable Gaussian of ``fwhm_mm`` (mm) over ``[..., Z, Y, X]``.

    The kernel is truncated at 3σ and normalised. At the volume's faces the part of the kernel
    inside the volume is renormalised, so a uniform volume stays uniform; away from the faces the
    total activity is preserved.
    """
    if not (math.isfinite(fwhm_mm) and fwhm_mm >= 0):
        raise ValueError(f"fwhm_mm must be a finite length >= 0 (mm), got {fwhm_mm!r}")
    if fwhm_mm == 0:
        return volume
    out = volume
    ones = torch.ones_like(volume)
    for axis, spacing in zip((-3, -2, -1), grid.spacing_mm, strict=True):
        sigma = fwhm_mm / FWHM_PER_SIGMA / spacing  # in voxels
        half = max(1, math.ceil(3 * sigma))
        offsets = torch.arange(-half, half + 1, dtype=volume.dtype, device=volume.device)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()
        out = _convolve_axis(out, kernel, axis) / _convolve_axis(ones, kernel, axis).clamp_min(
            1e-12
        )
    return out


def _convolve_axis(v: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    moved = v.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    conv = F.conv1d(flat, kernel.view(1, 1, -1), padding=kernel.numel() // 2)
    return conv.reshape(shape).movedim(-1, axis)

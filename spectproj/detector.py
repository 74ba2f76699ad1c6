"""From lattice bins to detector pixels: area-weighted rebinning in one dimension.

A detector pixel of width p centred at c receives the mean, over [c − p/2, c + p/2], of the
piecewise-constant lattice values (cells of width h centred at the lattice positions). Values stay
line integrals, and ``Σ value · width`` is conserved wherever the detector covers the lattice.
"""

from __future__ import annotations

import torch


def rebin_matrix(
    source_centres_mm: torch.Tensor,
    source_width_mm: float,
    target_centres_mm: torch.Tensor,
    target_width_mm: float,
) -> torch.Tensor | None:
    """``[T, S]`` float64 matrix of overlap fractions, or ``None`` when it is the identity."""
    src = source_centres_mm.to(torch.float64)
    tgt = target_centres_mm.to(torch.float64)
    if (
        src.shape == tgt.shape
        and abs(source_width_mm - target_width_mm) <= 1e-9 * target_width_mm
        and bool(torch.all((src - tgt).abs() <= 1e-9 * target_width_mm))
    ):
        return None
    lo = torch.maximum(tgt[:, None] - target_width_mm / 2, src[None, :] - source_width_mm / 2)
    hi = torch.minimum(tgt[:, None] + target_width_mm / 2, src[None, :] + source_width_mm / 2)
    return (hi - lo).clamp_min(0.0) / target_width_mm

"""Depth integration on the lattice: the one path that grids and fields share.

Lattice tensors are "lattice-major, columns-last": samples ``[V, S, R, B, Z]`` (views, depth far →
near, bins, batch, slices) and attenuation weights ``[V, S, R, Z]`` (mm, from
``attenuation.depth_weights``). Optional collimator blur matrices act per depth plane:
``blur_r [V|1, S, R, R]`` along bins and ``blur_z [V|1, S, Z, Z]`` along slices.

``integrate`` gives native projections ``[V, R, B, Z]``; ``integrate_adjoint`` is its exact
transpose (the back-projection onto the lattice).
"""

from __future__ import annotations

import torch


def integrate(
    samples: torch.Tensor,
    weights: torch.Tensor | None,
    step_mm: float,
    blur_r: torch.Tensor | None = None,
    blur_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ_s samples · weights`` (with per-plane blur), ``[V, S, R, B, Z] → [V, R, B, Z]``.

    With ``weights=None`` (no attenuation) every weight is ``step_mm``.
    """
    emission = samples * (weights.unsqueeze(3) if weights is not None else step_mm)
    if blur_r is None:
        return emission.sum(dim=1)
    return _blur(emission, blur_r, blur_z, transpose=False).sum(dim=1)


def integrate_adjoint(
    native: torch.Tensor,
    weights: torch.Tensor | None,
    step_mm: float,
    depth: int,
    blur_r: torch.Tensor | None = None,
    blur_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Transpose of ``integrate``: ``[V, R, B, Z] → [V, S, R, B, Z]`` with ``S = depth``."""
    v, r, b, z = native.shape
    spread = native.unsqueeze(1).expand(v, depth, r, b, z)
    if blur_r is not None:
        spread = _blur(spread, blur_r, blur_z, transpose=True)
    return spread * (weights.unsqueeze(3) if weights is not None else step_mm)


def _blur(
    emission: torch.Tensor, blur_r: torch.Tensor, blur_z: torch.Tensor | None, *, transpose: bool
) -> torch.Tensor:
    v, s, r, b, z = emission.shape
    mat_r = blur_r.transpose(-1, -2) if transpose else blur_r
    out = mat_r @ emission.reshape(v, s, r, b * z)
    if blur_z is not None:
        mat_z = blur_z if transpose else blur_z.transpose(-1, -2)
        out = out.reshape(v, s, r * b, z) @ mat_z
    return out.reshape(v, s, r, b, z)

"""The midpoint attenuation rule along a ray.

For samples ordered from far (index 0) to near the detector (last index) with step Δ (mm)::

    weight_i = Δ · exp(−Δ · (Σ_{j > i} μ_j + μ_i / 2))

so that the expected bin value is ``Σ_i a_i · weight_i`` (see ``docs/conventions.md``).
"""

from __future__ import annotations

from typing import overload

import torch


def survival_exponent(
    mu: torch.Tensor, step_mm: float | torch.Tensor, dim: int = -1
) -> torch.Tensor:
    """Optical depth ``Δ·(Σ_{j nearer} μ_j + μ_i/2)`` of each sample (dimensionless).

    ``mu`` (1/mm) is ordered far → near along ``dim``; the result has the same shape.
    ``step_mm`` (Δ, mm) is a number or a tensor that broadcasts against ``mu`` (one step per ray).
    """
    # Σ_{j>i} μ_j + μ_i/2 = total − Σ_{j<=i} μ_j + μ_i/2 : one cumulative sum, no flips.
    total = mu.sum(dim=dim, keepdim=True)
    return step_mm * (total - torch.cumsum(mu, dim=dim) + 0.5 * mu)


@overload
def depth_weights(
    mu: torch.Tensor, step_mm: float | torch.Tensor, dim: int = -1
) -> torch.Tensor: ...


@overload
def depth_weights(mu: None, step_mm: float | torch.Tensor, dim: int = -1) -> None: ...


def depth_weights(
    mu: torch.Tensor | None, step_mm: float | torch.Tensor, dim: int = -1
) -> torch.Tensor | None:
    """Integration weights ``Δ·exp(−optical depth)`` in mm, or ``None`` when ``mu`` is ``None``.

    With no attenuation every weight is simply Δ; callers then multiply by the scalar instead.
    ``step_mm`` (Δ, mm) is a number or a tensor that broadcasts against ``mu`` (one step per ray).
    """
    if mu is None:
        return None
    if torch.is_grad_enabled() and mu.requires_grad:
        return step_mm * torch.exp(-survival_exponent(mu, step_mm, dim))
    # The same arithmetic in place on one buffer: this runs once per geometry on large lattices.
    w = torch.cumsum(mu, dim=dim)
    w.sub_(mu.sum(dim=dim, keepdim=True)).sub_(mu, alpha=0.5)  # −(Σ_{j nearer} μ_j + μ_i/2)
    return w.mul_(step_mm).exp_().mul_(step_mm)

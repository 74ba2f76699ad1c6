"""Smoothing priors for one-step-late MAP-EM, on the 6-neighbourhood of a ``[Z, Y, X]`` volume.

``U(x) = Σ_{pairs j~k} φ(x_j, x_k)`` summed over each neighbouring pair once; the functions here
return the gradient ``∂U/∂x`` (same shape as ``x``).

- quadratic: ``φ = ½ (x_j − x_k)²``
- relative difference (Nuyts et al. 2002): ``φ = (x_j − x_k)² / (x_j + x_k + γ|x_j − x_k|)``,
  which smooths noise but keeps edges between regions of different uptake.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PriorGradient = Callable[[torch.Tensor], torch.Tensor]


def _pair_gradient(
    x: torch.Tensor, dphi: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Σ over the 6 neighbours k of ∂φ(x_j, x_k)/∂x_j, for ``x`` ``[..., Z, Y, X]``."""
    grad = torch.zeros_like(x)
    for dim in (-3, -2, -1):
        n = x.shape[dim]
        if n < 2:
            continue
        a = x.narrow(dim, 0, n - 1)  # x_j
        b = x.narrow(dim, 1, n - 1)  # its neighbour x_k at +1
        grad.narrow(dim, 0, n - 1).add_(dphi(a, b))
        grad.narrow(dim, 1, n - 1).add_(dphi(b, a))
    return grad


def quadratic_gradient(x: torch.Tensor) -> torch.Tensor:
    """Gradient of the quadratic prior ``½ Σ (x_j − x_k)²``."""
    return _pair_gradient(x, lambda a, b: a - b)


def relative_difference_gradient(
    x: torch.Tensor, gamma: float = 2.0, eps: float = 1e-9
) -> torch.Tensor:
    """Gradient of the relative-difference prior with edge-preservation ``gamma`` (>= 0).

    ``eps`` (same unit as ``x``) keeps the denominator positive where both voxels are 0.
    """

    def dphi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a - b
        den = a + b + gamma * d.abs() + eps
        return d * (gamma * d.abs() + a + 3 * b) / den**2

    return _pair_gradient(x, dphi)


def prior_value(x: torch.Tensor, kind: str, gamma: float = 2.0, eps: float = 1e-9) -> torch.Tensor:
    """``U(x)`` of the named prior (``"quadratic"`` or ``"relative_difference"``), a scalar."""
    total = x.new_zeros(())
    for dim in (-3, -2, -1):
        n = x.shape[dim]
        if n < 2:
            continue
        a, b = x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)
        d = a - b
        if kind == "quadratic":
            total = total + 0.5 * (d**2).sum()
        else:
            total = total + (d**2 / (a + b + gamma * d.abs() + eps)).sum()
    return total

"""The Poisson model of SPECT counts: y ~ Poisson(ŷ), ŷ = scale · A x + b.

Shared by MLEM/OSEM and the gradient-based reconstructions so that every method reports the same
likelihood.
"""

from __future__ import annotations

import torch


def poisson_log_likelihood(counts: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Σ (y·log ŷ − ŷ − log y!) over all bins (a scalar tensor).

    Bins with ŷ = 0 contribute 0 when y = 0 and −inf otherwise (the data are impossible there).
    """
    y = counts
    safe = torch.where(expected > 0, expected, torch.ones_like(expected))
    term = torch.where(y > 0, y * torch.log(safe), torch.zeros_like(y))
    impossible = (expected <= 0) & (y > 0)
    total = (term - expected - torch.lgamma(y + 1)).sum()
    return torch.where(impossible.any(), torch.full_like(total, -torch.inf), total)


def poisson_deviance(counts: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """2 Σ (y·log(y/ŷ) − (y − ŷ)): zero for a perfect fit, ≈ number of bins for a good one.

    Infinite when a bin with counts has ŷ = 0 (the data are impossible there).
    """
    y = counts
    safe = torch.where(expected > 0, expected, torch.ones_like(expected))
    ratio = torch.where(y > 0, y * torch.log(torch.where(y > 0, y, torch.ones_like(y)) / safe), 0.0)
    total = 2.0 * (ratio - (y - expected)).sum()
    impossible = (expected <= 0) & (y > 0)
    return torch.where(impossible.any(), torch.full_like(total, torch.inf), total)


def measurement_ratio(counts: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """y / ŷ where ŷ > 0, else 0: the factor that MLEM back-projects."""
    return torch.where(expected > 0, counts / torch.where(expected > 0, expected, 1.0), 0.0)

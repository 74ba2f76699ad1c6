"""The loss terms of one study, shared by the single-study and the cohort objective.

For a study with mean training count ``count_level`` and activity level ``level``:

    data = (poisson_nll(ŷ, y) − poisson_nll_saturated(y)) / count_level

(half the mean Poisson deviance per pixel over the mean count: unchanged when the data are
scaled) and the regularisers of `recon.nerf.config.REGULARISERS` (`field_regularisers`), each
made dimensionless by ``level``. The weights are `TrainConfig`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from recon.nerf import losses
from recon.nerf.config import TrainConfig

__all__ = ["data_term", "draw_pairs", "field_regularisers", "pairs_in_grid"]


def data_term(
    expected: torch.Tensor, counts: torch.Tensor, count_level: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(data, nll)``: the scaled deviance above and the mean Poisson NLL, for expected and
    measured counts ``[M]``."""
    nll = losses.poisson_nll(expected, counts, count_level)
    return (nll - losses.poisson_nll_saturated(counts)) / count_level, nll


def draw_pairs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u [n, 3] uniform in [0, 1), d [n, 3] unit directions)`` (float64, CPU) for the point
    pairs of ``tv_3d`` and ``ct_smoothness`` (`pairs_in_grid`)."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    d = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return u, d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pairs_in_grid(
    grid: Any, u: torch.Tensor, d: torch.Tensor, offset_mm: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``p`` uniform in ``grid``'s box and ``q = p + offset_mm · d``, ``[n, 3]`` (x, y,
    z mm, float32 on ``device``) from `draw_pairs`'s ``u`` and ``d``."""
    centre = torch.tensor(grid.offset_mm[::-1], dtype=torch.float64)  # x, y, z
    size = torch.tensor(grid.extent_mm[::-1], dtype=torch.float64)
    p = centre + (u - 0.5) * size
    return p.float().to(device), (p + offset_mm * d).float().to(device)


def field_regularisers(
    field: Callable[[torch.Tensor], torch.Tensor],
    config: TrainConfig,
    level: float,
    *,
    latent: torch.Tensor | None = None,
    ray_samples: tuple[torch.Tensor, ...] = (),
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    mu_at: Callable[[torch.Tensor], torch.Tensor] | None = None,
    supervision: tuple[torch.Tensor, torch.Tensor] | None = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """The unweighted regularisers with a positive weight in ``config`` and their inputs.

    Parameters
    ----------
    field:
        Points ``[N, 3]`` (x, y, z mm) → activity ``[N]``.
    level:
        The study's activity level (activity unit).
    latent:
        The study's latent code ``[D]`` (``latent_l2``).
    ray_samples:
        Activity samples ``[rays, S]`` along rendered rays, per group (``tv_ray``: the mean
        over the groups weighted by their rays).
    pairs:
        Points ``p`` and ``q`` ``[n, 3]`` (``tv_3d``; ``ct_smoothness`` with ``mu_at``, the
        attenuation 1/mm at points).
    supervision:
        Points ``[n, 3]`` and the known activity there ``[n]`` (``l1_activity``).
    autocast:
        The AMP context the field is evaluated under (values are taken in float32).
    """
    c = config
    out: dict[str, torch.Tensor] = {}
    if c.latent_l2 > 0 and isinstance(latent, torch.Tensor):
        out["latent_l2"] = losses.latent_l2(latent)
    if c.tv_ray > 0 and ray_samples:
        n = sum(s.shape[0] for s in ray_samples)
        tv = [losses.tv_ray(s.float(), level) * (s.shape[0] / n) for s in ray_samples]
        out["tv_ray"] = sum(tv[1:], tv[0])
    if pairs is not None and (c.tv_3d > 0 or c.ct_smoothness > 0):
        p, q = pairs
        with autocast():
            values = field(torch.cat([p, q])).float()
        e_p, e_q = values[: len(p)], values[len(p) :]
        if c.tv_3d > 0:
            out["tv_3d"] = losses.tv_3d(e_p, e_q, level)
        if c.ct_smoothness > 0 and mu_at is not None:
            out["ct_smoothness"] = losses.ct_smoothness(
                e_p, e_q, mu_at(p), mu_at(q), level, c.ct_threshold_per_mm
            )
    if supervision is not None and c.l1_activity > 0:
        points, target = supervision
        with autocast():
            values = field(points).float()
        out["l1_activity"] = losses.l1_activity(values, target, level)
    return out

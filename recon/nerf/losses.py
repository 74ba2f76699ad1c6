"""Loss terms of a neural-field fit: the Poisson data term and the regularisers.

Every function is pure (tensors in, a scalar tensor out) and differentiable. Activity differences
are divided by the activity ``scale`` (the study's activity level) so that every regulariser is
dimensionless and unchanged when the data, and hence the activity, are scaled by a constant.

Data term
    ``poisson_nll(ŷ, y) = mean(ŷ − y·log ŷ)`` over pixels, the negative Poisson log-likelihood
    up to the constant ``log y!``; ``ŷ`` is clamped below at ``EPS_RELATIVE × count level``
    (``1e-8`` times the mean count) so that the logarithm stays finite.
Regularisers (weights in `recon.nerf.config.TrainConfig`, all 0 by default)
    ``latent_l2`` ‖z‖², ``ct_smoothness`` squared differences of emission between nearby points on
    CT plateaus, ``tv_ray`` total variation along each ray, ``tv_3d`` total variation between
    random points and small offsets, ``l1_activity`` L1 distance to a known activity volume (3D
    supervision).
"""

from __future__ import annotations

import torch

__all__ = [
    "EPS_RELATIVE",
    "count_epsilon",
    "ct_smoothness",
    "l1_activity",
    "latent_l2",
    "poisson_nll",
    "poisson_nll_saturated",
    "tv_3d",
    "tv_ray",
]

#: The expected counts are clamped below at this fraction of the count level (mean count).
EPS_RELATIVE = 1e-8


def count_epsilon(count_level: float) -> float:
    """The floor of the expected counts: ``EPS_RELATIVE × count_level`` (counts).

    ``count_level`` (mean measured count per pixel) <= 0 is treated as 1.
    """
    level = float(count_level)
    return EPS_RELATIVE * (level if level > 0 else 1.0)


def poisson_nll(
    expected: torch.Tensor, counts: torch.Tensor, count_level: float | None = None
) -> torch.Tensor:
    """Mean Poisson negative log-likelihood ``mean(ŷ − y·log ŷ)`` (without ``log y!``).

    Parameters
    ----------
    expected:
        ``ŷ`` ``[...]``, expected counts (>= 0).
    counts:
        ``y`` ``[...]``, measured counts, same shape.
    count_level:
        Typical count per pixel; ``ŷ`` is clamped below at ``count_epsilon(count_level)``.
        Default: the mean of ``counts``.

    Returns
    -------
    torch.Tensor
        Scalar, in counts per pixel.
    """
    if expected.shape != counts.shape:
        raise ValueError(
            f"expected and counts must have one shape, got {list(expected.shape)} and "
            f"{list(counts.shape)}"
        )
    level = float(counts.detach().mean()) if count_level is None else float(count_level)
    safe = expected.clamp_min(count_epsilon(level))
    return (safe - counts * torch.log(safe)).mean()


def poisson_nll_saturated(counts: torch.Tensor) -> torch.Tensor:
    """The smallest possible `poisson_nll` for ``counts``: ``mean(y − y·log y)`` (0·log 0 = 0).

    ``poisson_nll(ŷ, y) − poisson_nll_saturated(y)`` is half the mean Poisson deviance: 0 for a
    perfect fit, about 0.5 per pixel for a good fit of noisy data.
    """
    y = counts
    log_y = torch.log(torch.where(y > 0, y, torch.ones_like(y)))
    return (y - y * log_y).mean()


def latent_l2(latent: torch.Tensor) -> torch.Tensor:
    """``‖z‖²``, the squared norm of a latent code ``[D]`` (0 for an empty code)."""
    return (latent.float() ** 2).sum()


def tv_ray(samples: torch.Tensor, scale: float) -> torch.Tensor:
    """Total variation along rays: ``mean |e_{i+1} − e_i| / scale``.

    Parameters
    ----------
    samples:
        ``[N, S]`` activity at the S samples of N rays, ordered along each ray.
    scale:
        Activity level (activity unit) that makes the term dimensionless.

    Returns
    -------
    torch.Tensor
        Scalar: the mean over all neighbouring sample pairs (independent of S for smooth
        profiles up to the step; 0 for fewer than two samples).
    """
    if samples.dim() != 2:
        raise ValueError(f"samples must be [N, S], got {list(samples.shape)}")
    if samples.shape[1] < 2 or samples.shape[0] == 0:
        return samples.sum() * 0.0
    return (samples[:, 1:] - samples[:, :-1]).abs().mean() / scale


def tv_3d(values: torch.Tensor, shifted: torch.Tensor, scale: float) -> torch.Tensor:
    """Anisotropic 3D total variation estimate: ``mean |e(p) − e(p + δ)| / scale``.

    ``values`` and ``shifted`` ``[N]`` are the activity at random points p and at p + δ (a small
    offset in a random axis direction).
    """
    return (values - shifted).abs().mean() / scale


def ct_smoothness(
    values: torch.Tensor,
    shifted: torch.Tensor,
    mu: torch.Tensor,
    mu_shifted: torch.Tensor,
    scale: float,
    threshold_per_mm: float,
) -> torch.Tensor:
    """Smoothness of emission on CT plateaus: ``mean (e(p) − e(q))² / scale²`` over the pairs with
    ``|μ(p) − μ(q)| < threshold_per_mm``.

    Parameters
    ----------
    values, shifted:
        ``[N]`` activity at points p and at nearby points q.
    mu, mu_shifted:
        ``[N]`` attenuation (1/mm) at p and q.
    scale:
        Activity level (activity unit).
    threshold_per_mm:
        Pairs whose μ differ by this much or more (an edge in the CT) are not compared.

    Returns
    -------
    torch.Tensor
        Scalar; 0 when no pair lies on a plateau.
    """
    keep = (mu - mu_shifted).abs() < threshold_per_mm
    diff2 = ((values - shifted) / scale) ** 2
    n = keep.sum()
    return torch.where(keep, diff2, torch.zeros_like(diff2)).sum() / n.clamp_min(1)


def l1_activity(values: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """``mean |e(p) − a(p)| / scale``: L1 distance to a known activity ``a`` at points p.

    This is 3D supervision: a result fitted with it is not a pure projection-data
    reconstruction (`recon.nerf.training.fit` records ``used_3d_supervision``).
    """
    return (values - target).abs().mean() / scale

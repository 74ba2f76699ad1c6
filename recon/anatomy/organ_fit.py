"""Organ activities from planar views: one concentration per compartment, Poisson ML (QPlanar).

The model of the counts (`docs/anatomy.md`)::

    ŷ = Σ_k c_k · a_k + b,      a_k = count_scale · A m_k      [V, rows, bins]

with ``A`` the study's projector (attenuation, collimator blur), ``m_k`` the mask of compartment
``k`` (`recon.anatomy.compartments`), ``c_k >= 0`` its concentration (the study's activity unit,
Bq/mL) and ``b`` the study's background (scatter). The ``c`` that maximise the Poisson likelihood
are found by EM on the K coefficients followed by projected Newton steps (the problem is small
and concave), so the fit is exact to ``tolerance`` and takes milliseconds once the K basis
projections are made.

The uncertainty of each coefficient is the Cramér–Rao bound from the Fisher information
``F_kl = Σ_i a_ik a_il / ŷ_i``: ``sd(c_k) = sqrt((F⁻¹)_kk)``. It is the *statistical* error
(Poisson noise) of the model; errors of the model itself (a wrong segmentation, uneven uptake,
activity the anatomy does not contain) are not in it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from recon.algorithms.numerics import check_finite
from recon.anatomy.compartments import Compartments
from recon.io.study import Study
from spectproj import CollimatorResponse, SPECTProjector

__all__ = [
    "CompartmentEstimate",
    "OrganFit",
    "OrganFitConfig",
    "basis_projections",
    "fisher_information",
    "fit_organ_coefficients",
    "fit_organs",
    "mbq_per_unit_ml",
    "study_projector",
]


@dataclass(frozen=True)
class OrganFitConfig:
    """Settings of the organ fit.

    Parameters
    ----------
    em_iterations:
        EM iterations on the coefficients before the Newton polish (>= 1).
    newton_steps:
        At most this many projected Newton steps (>= 0).
    tolerance:
        Stop when the relative change of every free coefficient is below this.
    """

    em_iterations: int = 300
    newton_steps: int = 50
    tolerance: float = 1e-10

    def __post_init__(self) -> None:
        if isinstance(self.em_iterations, bool) or self.em_iterations < 1:
            raise ValueError(f"em_iterations must be >= 1, got {self.em_iterations!r}")
        if isinstance(self.newton_steps, bool) or self.newton_steps < 0:
            raise ValueError(f"newton_steps must be >= 0, got {self.newton_steps!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance > 0):
            raise ValueError(f"tolerance must be > 0, got {self.tolerance!r}")


@dataclass(frozen=True)
class CompartmentEstimate:
    """One compartment's fitted activity.

    Attributes
    ----------
    name: the compartment (segment or background region).
    background: whether it is a background region.
    volume_ml: its volume (mL).
    concentration: fitted concentration (activity unit, normally Bq/mL).
    concentration_sd: its Cramér–Rao standard deviation (same unit).
    activity_mbq: ``concentration × volume`` in MBq (NaN when the unit is not Bq/mL-based).
    activity_sd_mbq: its standard deviation (MBq).
    at_bound: the fit holds it at 0 (the data want less than nothing there).
    """

    name: str
    background: bool
    volume_ml: float
    concentration: float
    concentration_sd: float
    activity_mbq: float
    activity_sd_mbq: float
    at_bound: bool


@dataclass(frozen=True)
class OrganFit:
    """What `fit_organs` returns.

    Attributes
    ----------
    estimates: one per compartment, in the order of ``compartments``.
    compartments: the compartments fitted.
    covariance: ``[K, K]`` Cramér–Rao covariance of the concentrations (unit²).
    expected: ``[V, rows, bins]`` expected counts of the fit (with the background).
    deviance_per_pixel: mean Poisson deviance per pixel at the fit (≈ 1 for a good model).
    iterations: EM iterations + Newton steps taken.
    collimator: the blur modelled, or ``None``.
    elapsed_s: wall time of the fit, basis projections included.
    """

    estimates: tuple[CompartmentEstimate, ...]
    compartments: Compartments
    covariance: np.ndarray
    expected: np.ndarray
    deviance_per_pixel: float
    iterations: int
    collimator: CollimatorResponse | None
    elapsed_s: float

    @property
    def concentrations(self) -> np.ndarray:
        """``[K]`` fitted concentrations."""
        return np.array([e.concentration for e in self.estimates])

    def activity_volume(self) -> np.ndarray:
        """``[Z, Y, X]`` float32 activity concentration: each compartment at its value."""
        return self.compartments.volume(self.concentrations).astype(np.float32)


def basis_projections(
    projector: SPECTProjector, masks: torch.Tensor, count_scale: float, batch: int = 4
) -> torch.Tensor:
    """``[K, N]`` expected counts per unit concentration of each mask (``N`` = all pixels).

    ``masks``: ``[K, Z, Y, X]`` on the projector's grid, dtype and device.
    """
    rows = []
    for start in range(0, masks.shape[0], batch):
        part = projector(masks[start : start + batch])
        rows.append(part.reshape(part.shape[0], -1))
    return torch.cat(rows) * count_scale


def fisher_information(basis: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` Fisher information of the coefficients: ``Σ_i a_ik a_il / ŷ_i``.

    ``basis``: ``[K, N]``; ``expected``: ``[N]`` (> 0 where any basis entry is > 0).
    """
    weight = torch.where(expected > 0, 1.0 / expected.clamp_min(1e-300), 0.0)
    return (basis * weight) @ basis.T


def fit_organ_coefficients(
    basis: torch.Tensor,
    counts: torch.Tensor,
    background: torch.Tensor | None = None,
    config: OrganFitConfig | None = None,
) -> tuple[torch.Tensor, int]:
    """Poisson ML of ``c >= 0`` in ``y ~ Poisson(cᵀ basis + background)``.

    Parameters
    ----------
    basis: ``[K, N]`` (float64 recommended), non-negative.
    counts: ``[N]`` counts.
    background: ``[N]`` additive expected counts, or ``None``.

    Returns
    -------
    (c ``[K]``, iterations). Coefficients whose basis is all zero are 0.
    """
    config = OrganFitConfig() if config is None else config
    y = counts.to(basis.dtype)
    b = torch.zeros_like(y) if background is None else background.to(basis.dtype)
    sens = basis.sum(dim=1)
    seen = sens > 0
    # Start: every compartment at the concentration that explains the data's total.
    level = (y.sum() - b.sum()).clamp_min(y.sum() * 1e-3) / sens[seen].sum().clamp_min(1e-300)
    c = torch.where(seen, level, torch.zeros_like(sens))
    steps = 0
    for _ in range(config.em_iterations):
        expected = c @ basis + b
        ratio = torch.where(expected > 0, y / expected.clamp_min(1e-300), 0.0)
        update = torch.where(seen, c * (basis @ ratio) / sens.clamp_min(1e-300), 0.0)
        steps += 1
        change = (update - c).abs().max() / update.abs().max().clamp_min(1e-300)
        c = update
        if change < config.tolerance:
            break
    for _ in range(config.newton_steps):
        expected = c @ basis + b
        ratio = torch.where(expected > 0, y / expected.clamp_min(1e-300), 0.0)
        gradient = basis @ (ratio - 1.0)
        # Free set: positive coefficients, or zeros the gradient pushes up.
        free = seen & ((c > 0) | (gradient > 0))
        if not bool(free.any()):
            break
        idx = free.nonzero().squeeze(1)
        weight = torch.where(expected > 0, y / expected.clamp_min(1e-300) ** 2, 0.0)
        a = basis[idx]
        hessian = (a * weight) @ a.T  # minus the Hessian of the log-likelihood (free block)
        hessian = hessian + 1e-12 * torch.diag(hessian.diagonal().clamp_min(1e-300))
        step = torch.linalg.solve(hessian, gradient[idx])
        # Backtrack to keep c >= 0 and the likelihood rising.
        t = 1.0
        old = _log_likelihood(c, basis, y, b)
        while True:
            trial = c.clone()
            trial[idx] = (c[idx] + t * step).clamp_min(0.0)
            if _log_likelihood(trial, basis, y, b) >= old - 1e-12 * abs(old) or t < 1e-6:
                break
            t *= 0.5
        change = (trial - c).abs().max() / trial.abs().max().clamp_min(1e-300)
        c = trial
        steps += 1
        if change < config.tolerance:
            break
    return torch.where(seen, c, torch.zeros_like(c)), steps


def _log_likelihood(
    c: torch.Tensor, basis: torch.Tensor, y: torch.Tensor, b: torch.Tensor
) -> float:
    expected = c @ basis + b
    ok = expected > 0
    return float((y[ok] * torch.log(expected[ok]) - expected[ok]).sum() - expected[~ok].sum())


def fit_organs(
    study: Study,
    compartments: Compartments,
    *,
    collimator: CollimatorResponse | None,
    config: OrganFitConfig | None = None,
    device: torch.device | str = "cpu",
) -> OrganFit:
    """Fit one concentration per compartment to the study's projections.

    Parameters
    ----------
    study:
        Counts ``[V, rows, bins]``, μ (``None``: no attenuation), background, count scale.
    compartments:
        On ``study.grid`` (`recon.anatomy.compartments_from_anatomy`).
    collimator:
        The blur to model (normally ``study.collimator_response()``), or ``None``.
    config:
        `OrganFitConfig`.
    device:
        Where the basis projections are computed (the fit itself is tiny).

    Returns
    -------
    OrganFit
    """
    t0 = time.perf_counter()
    config = OrganFitConfig() if config is None else config
    if compartments.index.shape != tuple(study.grid.shape):
        raise ValueError(
            f"compartments are on a grid of shape {compartments.index.shape}, the study's grid "
            f"is {tuple(study.grid.shape)}"
        )
    dev = torch.device(device)
    projector = study_projector(study, collimator, device=dev)
    masks = torch.as_tensor(compartments.masks(), device=dev)
    scale = study.acquisition.count_scale
    basis = basis_projections(projector, masks, scale).double().cpu()
    y = torch.as_tensor(np.asarray(study.projections, dtype=np.float64)).reshape(-1)
    b = None
    if study.background is not None:
        b = torch.as_tensor(np.asarray(study.background, dtype=np.float64)).reshape(-1)
    c, steps = fit_organ_coefficients(basis, y, b, config)
    check_finite("organ fit", steps, "concentrations", c)
    expected = c @ basis + (0.0 if b is None else b)
    check_finite("organ fit", steps, "expected counts", expected)
    covariance = _covariance(fisher_information(basis, expected))
    deviance = _deviance(y, expected)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    to_mbq = mbq_per_unit_ml(study.activity_unit)
    estimates = []
    for k, name in enumerate(compartments.names):
        volume = float(compartments.voxel_counts[k]) * voxel_ml
        sd = math.sqrt(max(float(covariance[k, k]), 0.0))
        estimates.append(
            CompartmentEstimate(
                name=name,
                background=compartments.background[k],
                volume_ml=volume,
                concentration=float(c[k]),
                concentration_sd=sd,
                activity_mbq=float(c[k]) * volume * to_mbq,
                activity_sd_mbq=sd * volume * to_mbq,
                at_bound=bool(c[k] <= 0),
            )
        )
    return OrganFit(
        estimates=tuple(estimates),
        compartments=compartments,
        covariance=covariance,
        expected=expected.reshape(study.projections.shape).numpy().astype(np.float32),
        deviance_per_pixel=deviance,
        iterations=steps,
        collimator=collimator,
        elapsed_s=time.perf_counter() - t0,
    )


def _covariance(fisher: torch.Tensor) -> np.ndarray:
    f = fisher.numpy()
    try:
        return np.linalg.inv(f)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(f)


def _deviance(y: torch.Tensor, expected: torch.Tensor) -> float:
    from recon.algorithms.poisson import poisson_deviance

    return float(poisson_deviance(y, expected)) / max(int(y.numel()), 1)


def study_projector(
    study: Study,
    collimator: CollimatorResponse | None,
    *,
    attenuation: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> SPECTProjector:
    """The study's projector: its geometry, its μ (unless ``attenuation`` is off) and
    ``collimator`` (the one projector the anatomy methods build)."""
    mu = None
    if attenuation and study.mu_per_mm is not None:
        mu = torch.as_tensor(np.asarray(study.mu_per_mm), dtype=dtype)
    return SPECTProjector(study.geometry(), mu, collimator, dtype=dtype, device=device)


def mbq_per_unit_ml(unit: str) -> float:
    """MBq per (unit · mL); NaN for a unit that is not an activity concentration."""
    from recon.evaluation.metrics import unit_to_bq_per_ml

    try:
        return unit_to_bq_per_ml(unit) * 1e-6
    except ValueError:
        return math.nan

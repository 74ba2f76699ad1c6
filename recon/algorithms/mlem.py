"""MLEM, OSEM and one-step-late MAP-EM for y ~ Poisson(scale · A x + b).

``A`` is ``spectproj``'s projector (attenuation and collimator blur included; ``em_reconstruct``)
or any ``spectproj.LinearOperator`` (``em_reconstruct_operator``), ``scale`` converts its line
integrals to expected counts (``Acquisition.count_scale``: pixel area, sensitivity and duration)
and ``b`` is an optional additive background (scatter) in counts. The estimate ``x`` is an
activity concentration in the projector's input units, so results are quantitative.

OSEM uses ordered subsets of interleaved views (subset m holds views m, m + M, m + 2M, ...), each
with its own sensitivity image ``scale · A_mᵀ 1`` computed once. ``A_m`` is
``spectproj.subset_operator(A, views)``: for the projector a view of it that shares its cached
attenuation weights and matrices. Voxels that no view sees (zero sensitivity) and voxels outside
the optional mask are held at 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recon.algorithms.filters import gaussian_filter
from recon.algorithms.numerics import check_finite
from recon.algorithms.poisson import measurement_ratio, poisson_log_likelihood
from recon.algorithms.priors import prior_value, quadratic_gradient, relative_difference_gradient
from spectproj import (
    CollimatorResponse,
    ImageGrid,
    LinearOperator,
    ParallelGeometry,
    SPECTProjector,
    subset_operator,
)
from spectproj.projector import VolumeOrField

PRIORS = ("quadratic", "relative_difference")

#: ``callback(iteration, activity, log_likelihood)`` after each full iteration (1-based).
IterationCallback = Callable[[int, torch.Tensor, float], None]


@dataclass(frozen=True)
class EMConfig:
    """Settings of an EM reconstruction.

    Parameters
    ----------
    iterations: full passes over the data (each pass visits every subset once).
    subsets: number of ordered subsets (1 = MLEM).
    prior: ``None``, ``"quadratic"`` or ``"relative_difference"`` (one-step-late MAP-EM).
    beta: prior weight (>= 0), in counts per unit of the prior (it scales with the count level).
        One-step-late updates can oscillate when ``beta`` times the prior's gradient approaches
        the sensitivity; lower ``beta`` if the log-likelihood falls.
    gamma: edge preservation of the relative-difference prior (>= 0).
    filter_fwhm_mm: Gaussian post-filter FWHM in mm applied to the final image (0 = none).
    """

    iterations: int = 10
    subsets: int = 1
    prior: str | None = None
    beta: float = 0.0
    gamma: float = 2.0
    filter_fwhm_mm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("iterations", "subsets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.prior is not None and self.prior not in PRIORS:
            raise ValueError(f"prior must be None or one of {list(PRIORS)}, got {self.prior!r}")
        for name in ("beta", "gamma", "filter_fwhm_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.prior is not None and self.beta == 0:
            raise ValueError(f"prior {self.prior!r} needs beta > 0, got beta = 0")

    @property
    def method(self) -> str:
        """``"mlem"``, ``"osem"`` or ``"map-osl"``."""
        if self.prior is not None:
            return "map-osl"
        return "mlem" if self.subsets == 1 else "osem"


@dataclass
class EMResult:
    """The estimate and how it got there.

    Attributes
    ----------
    activity: ``[Z, Y, X]`` final estimate (post-filtered if asked), activity concentration.
    log_likelihood: Poisson log-likelihood of the data after each iteration (unfiltered estimate).
    log_prior: ``β·U(x)`` after each iteration (zeros without a prior).
    unfiltered: ``[Z, Y, X]`` the estimate before the post-filter.
    """

    activity: torch.Tensor
    log_likelihood: list[float] = field(default_factory=list)
    log_prior: list[float] = field(default_factory=list)
    unfiltered: torch.Tensor | None = None


def interleaved_subsets(n_views: int, n_subsets: int) -> list[list[int]]:
    """View indices of each subset: subset m = views m, m + M, m + 2M, ... (M = ``n_subsets``)."""
    if not 1 <= n_subsets <= n_views:
        raise ValueError(
            f"subsets must be between 1 and the number of views {n_views}, got {n_subsets}"
        )
    return [list(range(m, n_views, n_subsets)) for m in range(n_subsets)]


def em_reconstruct(
    counts: torch.Tensor,
    geometry: ParallelGeometry,
    config: EMConfig = EMConfig(),
    *,
    mu: VolumeOrField | None = None,
    collimator: CollimatorResponse | None = None,
    background: torch.Tensor | None = None,
    count_scale: float = 1.0,
    initial: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    callback: IterationCallback | None = None,
) -> EMResult:
    """Reconstruct activity ``[Z, Y, X]`` from ``counts`` ``[V, rows, bins]`` by (OS)EM.

    Builds one ``SPECTProjector`` (its chunks formed within the subsets) and runs
    ``em_reconstruct_operator`` with it: each subset's operator is a view of it
    (``SPECTProjector.subset``), so the attenuation weights are computed and held once.

    Parameters
    ----------
    counts: measured counts (>= 0) on ``geometry``'s detector; its dtype and device are used.
    geometry: the acquisition geometry.
    config: iterations, subsets, prior and post-filter.
    mu: attenuation map (1/mm), volume ``[Z, Y, X]`` or field; ``None`` for none.
    collimator: collimator response or ``None``.
    background: ``[V, rows, bins]`` expected additive counts (scatter), or ``None``.
    count_scale: expected counts per unit of projector output (``Acquisition.count_scale``).
    initial: ``[Z, Y, X]`` positive starting image; default a uniform image whose projection has
        the measured total.
    mask: ``[Z, Y, X]`` boolean; voxels outside are held at 0.
    callback: called after each iteration with ``(iteration, activity, log_likelihood)``.
    """
    y = _check_counts(counts, geometry)
    if background is not None:
        _check_background(background, y)
    _check_count_scale(count_scale)
    subsets = interleaved_subsets(geometry.n_views, config.subsets)
    projector = SPECTProjector(
        geometry, mu, collimator, dtype=y.dtype, device=y.device,
        view_groups=subsets if len(subsets) > 1 else None,
    )  # fmt: skip
    return em_reconstruct_operator(
        y, projector, config, grid=geometry.grid, background=background,
        count_scale=count_scale, initial=initial, mask=mask, callback=callback,
    )  # fmt: skip


def em_reconstruct_operator(
    counts: torch.Tensor,
    operator: LinearOperator,
    config: EMConfig = EMConfig(),
    *,
    grid: ImageGrid | None = None,
    background: torch.Tensor | None = None,
    count_scale: float = 1.0,
    initial: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    callback: IterationCallback | None = None,
) -> EMResult:
    """(OS)EM for any linear operator ``A`` (``spectproj.LinearOperator``).

    Parameters
    ----------
    counts: measured counts (>= 0), ``operator.output_shape`` ``[V, rows, bins]``, with the
        operator's dtype and device.
    operator: ``A``, mapping activity ``operator.input_shape`` ``[Z, Y, X]`` to projections.
        Subset m uses ``spectproj.subset_operator(operator, views)`` (the operator's own
        ``subset`` if it has one) over the first axis of the projections.
    config: iterations, subsets, prior and post-filter.
    grid: the voxel grid (spacing in mm), needed only for the post-filter
        (``config.filter_fwhm_mm > 0``).
    background, count_scale, initial, mask, callback: as in ``em_reconstruct``.
    """
    if not isinstance(operator, LinearOperator):
        raise TypeError(
            "operator must be a LinearOperator (input_shape, output_shape, dtype, device, "
            f"forward, adjoint), got {type(operator).__name__}"
        )
    y = _check_counts_shape(counts, list(operator.output_shape))
    if y.dtype != operator.dtype:
        raise TypeError(f"counts must have the operator's dtype {operator.dtype}, got {y.dtype}")
    if y.device != operator.device:
        raise ValueError(
            f"counts must be on the operator's device {operator.device}, got {y.device}"
        )
    b = None if background is None else _check_background(background, y)
    _check_count_scale(count_scale)
    if config.filter_fwhm_mm and grid is None:
        raise ValueError(
            f"grid (ImageGrid) is required for the post-filter of "
            f"filter_fwhm_mm = {config.filter_fwhm_mm} mm, got None"
        )
    device = y.device
    subsets = interleaved_subsets(y.shape[0], config.subsets)
    ops = [operator] if len(subsets) == 1 else [subset_operator(operator, v) for v in subsets]
    data = [y[views] for views in subsets]
    bgs = [None if b is None else b[views] for views in subsets]
    sens = [count_scale * op.adjoint(torch.ones_like(d)) for op, d in zip(ops, data, strict=True)]
    seen = sens[0]
    for part in sens[1:]:
        seen = seen + part
    support = seen > 0
    if mask is not None:
        if mask.shape != support.shape:
            raise ValueError(f"mask must have shape {list(support.shape)}, got {list(mask.shape)}")
        support = support & mask.to(device=device, dtype=torch.bool)

    x = _initial_image(initial, operator, y, b, count_scale, support)
    result = EMResult(activity=x)

    def record(iteration: int, estimate: torch.Tensor, expected: torch.Tensor) -> None:
        ll = float(poisson_log_likelihood(y, expected))
        check_finite(config.method.upper(), iteration, "log-likelihood", ll, allow_minus_inf=True)
        check_finite(config.method.upper(), iteration, "activity estimate", estimate)
        result.log_likelihood.append(ll)
        penalty = 0.0
        if config.prior is not None:
            penalty = config.beta * float(prior_value(estimate, config.prior, config.gamma))
        result.log_prior.append(penalty)
        if callback is not None:
            callback(iteration, estimate, ll)

    # With one subset the projection that starts iteration k + 1 is that of the estimate after
    # iteration k: its likelihood is recorded from it, saving one projection per iteration.
    single = len(ops) == 1
    for it in range(1, config.iterations + 1):
        for op, d, bg, s in zip(ops, data, bgs, sens, strict=True):
            projected = count_scale * op.forward(x)
            expected = projected if bg is None else projected + bg
            if single and it > 1:
                record(it - 1, x, expected)
            back = count_scale * op.adjoint(measurement_ratio(d, expected))
            denom = s if config.prior is None else s + config.beta * _prior_gradient(x, config)
            # a voxel this subset does not see (or an unstable OSL denominator) keeps its value
            updated = torch.where(denom > 0, x * back / torch.where(denom > 0, denom, 1.0), x)
            x = torch.where(support, updated, 0.0)
        if not single or it == config.iterations:
            record(it, x, count_scale * operator.forward(x) + (0.0 if b is None else b))
    result.unfiltered = x
    result.activity = x
    if config.filter_fwhm_mm and grid is not None:  # grid is not None: checked above
        result.activity = gaussian_filter(x, grid, config.filter_fwhm_mm)
    return result


def _prior_gradient(x: torch.Tensor, config: EMConfig) -> torch.Tensor:
    if config.prior == "quadratic":
        return quadratic_gradient(x)
    return relative_difference_gradient(x, config.gamma)


def _initial_image(
    initial: torch.Tensor | None,
    op: LinearOperator,
    y: torch.Tensor,
    b: torch.Tensor | None,
    count_scale: float,
    support: torch.Tensor,
) -> torch.Tensor:
    shape = tuple(op.input_shape)
    if initial is not None:
        if tuple(initial.shape) != shape:
            raise ValueError(f"initial must have shape {list(shape)}, got {list(initial.shape)}")
        if not bool(torch.isfinite(initial).all()) or bool((initial < 0).any()):
            raise ValueError("initial must be finite and >= 0")
        return torch.where(support, initial.to(dtype=y.dtype, device=y.device), 0.0)
    ones = support.to(y.dtype)
    projected = float((count_scale * op.forward(ones)).sum())
    signal = float(y.sum()) - (0.0 if b is None else float(b.sum()))
    level = signal / projected if projected > 0 and signal > 0 else 1.0
    return ones * level


def _check_counts(counts: torch.Tensor, geometry: ParallelGeometry) -> torch.Tensor:
    expected = [geometry.n_views, *geometry.detector_shape]
    return _check_counts_shape(counts, expected)


def _check_counts_shape(counts: torch.Tensor, expected: list[int]) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor) or not counts.is_floating_point():
        raise TypeError("counts must be a floating-point torch.Tensor [V, rows, bins]")
    if list(counts.shape) != expected:
        raise ValueError(
            f"counts must have shape [V, rows, bins] = {expected}, got {list(counts.shape)}"
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError("counts must be finite and >= 0")
    return counts


def _check_count_scale(count_scale: float) -> None:
    if not (math.isfinite(count_scale) and count_scale > 0):
        raise ValueError(f"count_scale must be a positive number, got {count_scale!r}")


def _check_background(background: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if tuple(background.shape) != tuple(y.shape):
        raise ValueError(
            f"background must have the shape of counts {list(y.shape)}, "
            f"got {list(background.shape)}"
        )
    if not bool(torch.isfinite(background).all()) or bool((background < 0).any()):
        raise ValueError("background must be finite and >= 0")
    return background.to(dtype=y.dtype, device=y.device)

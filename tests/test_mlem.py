"""MLEM/OSEM against a dense-matrix reference and the algorithm's known properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from recon.algorithms.mlem import (
    EMConfig,
    em_reconstruct,
    em_reconstruct_operator,
    interleaved_subsets,
)
from spectproj import (
    CollimatorResponse,
    ImageGrid,
    MatrixOperator,
    ParallelGeometry,
    SPECTProjector,
    ViewSubset,
)

from .helpers import random_volume

SHAPE = (3, 5, 4)
GRID = ImageGrid(SHAPE, (3.0, 2.5, 2.5))


def _problem(angles=(0.0, 30.0, 90.0, 180.0, 250.0), with_background=False, seed=0):
    geom = ParallelGeometry(GRID, list(angles), radius_mm=20.0)
    mu = random_volume(SHAPE, seed=seed + 1) * 0.05
    col = CollimatorResponse(0.5, 0.03)
    truth = random_volume(SHAPE, seed=seed + 2) * 4 + 0.5
    op = SPECTProjector(geom, mu=mu, collimator=col, dtype=torch.float64)
    scale = 7.0
    expected = scale * op(truth)
    bg = torch.full_like(expected, 2.0) if with_background else None
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(expected + (0 if bg is None else bg), generator=gen)
    return geom, mu, col, op, scale, counts, bg, truth


def _dense_matrix(op: SPECTProjector) -> torch.Tensor:
    n = GRID.shape[0] * GRID.shape[1] * GRID.shape[2]
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *GRID.shape)
    return op(eye).reshape(n, -1).t()  # [bins, voxels]


def _dense_em(a, y, b, x0, iterations, subsets_rows):
    x = x0.clone()
    for _ in range(iterations):
        for rows in subsets_rows:
            am, ym = a[rows], y[rows]
            ex = am @ x + (0 if b is None else b[rows])
            ratio = torch.where(ex > 0, ym / ex, torch.zeros_like(ym))
            sens = am.sum(0)
            x = torch.where(sens > 0, x * (am.t() @ ratio) / torch.where(sens > 0, sens, 1), x)
    return x


@pytest.mark.parametrize("with_background", [False, True])
@pytest.mark.parametrize("subsets", [1, 2])
def test_equals_dense_matrix_em(with_background, subsets):
    geom, mu, col, op, scale, counts, bg, _ = _problem(with_background=with_background)
    x0 = random_volume(SHAPE, seed=9) + 0.5
    res = em_reconstruct(
        counts, geom, EMConfig(iterations=4, subsets=subsets), mu=mu, collimator=col,
        background=bg, count_scale=scale, initial=x0,
    )  # fmt: skip
    a = scale * _dense_matrix(op)
    per_view = geom.detector_shape[0] * geom.detector_shape[1]
    rows = [
        torch.cat([torch.arange(v * per_view, (v + 1) * per_view) for v in views])
        for views in interleaved_subsets(geom.n_views, subsets)
    ]
    b = None if bg is None else bg.reshape(-1)
    ref = _dense_em(a, counts.reshape(-1), b, x0.reshape(-1), 4, rows).reshape(SHAPE)
    torch.testing.assert_close(res.activity, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("with_background", [False, True])
@pytest.mark.parametrize("subsets", [1, 2])
def test_matrix_operator_em_equals_dense_matrix_em(with_background, subsets):
    geom, _, _, op, scale, counts, bg, _ = _problem(with_background=with_background)
    x0 = random_volume(SHAPE, seed=9) + 0.5
    a = _dense_matrix(op)
    matrix = MatrixOperator(a, SHAPE, (geom.n_views, *geom.detector_shape))
    res = em_reconstruct_operator(
        counts, matrix, EMConfig(iterations=4, subsets=subsets), background=bg,
        count_scale=scale, initial=x0,
    )  # fmt: skip
    per_view = geom.detector_shape[0] * geom.detector_shape[1]
    rows = [
        torch.cat([torch.arange(v * per_view, (v + 1) * per_view) for v in views])
        for views in interleaved_subsets(geom.n_views, subsets)
    ]
    b = None if bg is None else bg.reshape(-1)
    ref = _dense_em(scale * a, counts.reshape(-1), b, x0.reshape(-1), 4, rows).reshape(SHAPE)
    torch.testing.assert_close(res.activity, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("subsets", [1, 3])
def test_operator_em_of_the_projector_equals_em_reconstruct(subsets):
    geom, mu, col, op, scale, counts, bg, _ = _problem(with_background=True)
    cfg = EMConfig(iterations=3, subsets=subsets, prior="quadratic", beta=0.5, filter_fwhm_mm=3.0)
    kwargs = {"background": bg, "count_scale": scale}
    ref = em_reconstruct(counts, geom, cfg, mu=mu, collimator=col, **kwargs)
    res = em_reconstruct_operator(counts, op, cfg, grid=geom.grid, **kwargs)
    torch.testing.assert_close(res.activity, ref.activity, rtol=1e-12, atol=1e-12)
    assert res.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-12)
    # the generic row-selection subsets (a full projection per subset) give the same iterates
    generic = em_reconstruct_operator(
        counts, ViewSubset(op, tuple(range(geom.n_views))), cfg, grid=geom.grid, **kwargs
    )
    torch.testing.assert_close(generic.activity, ref.activity, rtol=1e-12, atol=1e-12)


def test_operator_em_bad_inputs():
    geom, _, _, op, _, counts, _, _ = _problem()
    with pytest.raises(TypeError, match="operator must be a LinearOperator"):
        em_reconstruct_operator(counts, geom)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"counts must have shape \[V, rows, bins\] = \[5, "):
        em_reconstruct_operator(counts[:2], op)
    with pytest.raises(TypeError, match=r"counts must have the operator.s dtype torch\.float64"):
        em_reconstruct_operator(counts.float(), op)
    with pytest.raises(ValueError, match=r"grid \(ImageGrid\) is required for the post-filter"):
        em_reconstruct_operator(counts, op, EMConfig(filter_fwhm_mm=2.0))


def test_log_likelihood_never_decreases_and_counts_are_matched():
    geom, mu, col, op, scale, counts, _, _ = _problem()
    seen = []
    res = em_reconstruct(
        counts, geom, EMConfig(iterations=12), mu=mu, collimator=col, count_scale=scale,
        callback=lambda it, x, ll: seen.append((it, ll)),
    )  # fmt: skip
    ll = res.log_likelihood
    assert [it for it, _ in seen] == list(range(1, 13)) and [v for _, v in seen] == ll
    assert all(b >= a - 1e-9 * abs(a) for a, b in itertools.pairwise(ll))
    assert ll[-1] > ll[0]
    # after an MLEM iteration without background the projection has the data's total
    total = float((scale * op(res.activity)).sum())
    assert total == pytest.approx(float(counts.sum()), rel=1e-10)
    assert bool((res.activity >= 0).all())


def test_zero_counts_and_zero_sensitivity_are_handled():
    geom, mu, _, _, scale, counts, _, _ = _problem()
    res = em_reconstruct(
        torch.zeros_like(counts), geom, EMConfig(iterations=3), mu=mu, count_scale=scale
    )
    assert torch.count_nonzero(res.activity) == 0 and all(v == 0 for v in res.log_likelihood)
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[1, 2, 1] = True
    res = em_reconstruct(counts, geom, EMConfig(iterations=2), mu=mu, count_scale=scale, mask=mask)
    assert torch.count_nonzero(res.activity) == 1 and float(res.activity[1, 2, 1]) > 0
    nothing = torch.zeros(SHAPE, dtype=torch.bool)
    res = em_reconstruct(counts, geom, EMConfig(iterations=2), count_scale=scale, mask=nothing)
    assert torch.count_nonzero(res.activity) == 0


def test_noise_free_many_view_phantom_is_recovered():
    grid = ImageGrid((4, 16, 16), (4.0, 4.0, 4.0))
    _, y, x = torch.meshgrid(*(grid.centres_mm(a) for a in range(3)), indexing="ij")
    body = (x / 28) ** 2 + (y / 24) ** 2 <= 1
    truth = body * 1.0 + ((x - 8) ** 2 + (y + 6) ** 2 <= 36) * 3.0
    mu = body * 0.0154
    geom = ParallelGeometry.full_circle(grid, 32)
    op = SPECTProjector(geom, mu=mu.double(), dtype=torch.float64)
    counts = op(truth.double())
    res = em_reconstruct(counts, geom, EMConfig(iterations=30, subsets=8), mu=mu.double())
    nrmse = float((res.activity - truth).norm() / truth.norm())
    assert nrmse < 0.08


def test_map_priors_smooth_and_post_filter_keeps_total():
    geom, mu, _, _, scale, counts, _, _ = _problem(angles=(0.0, 180.0))
    plain = em_reconstruct(counts, geom, EMConfig(iterations=5), mu=mu, count_scale=scale)

    def roughness(v):
        return float(sum((v.diff(dim=d) ** 2).sum() for d in range(3)))

    for prior in ("quadratic", "relative_difference"):
        cfg = EMConfig(iterations=5, prior=prior, beta=1.0)
        res = em_reconstruct(counts, geom, cfg, mu=mu, count_scale=scale)
        assert roughness(res.activity) < roughness(plain.activity)
        assert len(res.log_prior) == 5 and res.log_prior[-1] > 0
    filt = em_reconstruct(
        counts, geom, EMConfig(iterations=5, filter_fwhm_mm=4.0), mu=mu, count_scale=scale
    )
    assert torch.equal(filt.unfiltered, plain.activity)
    assert roughness(filt.activity) < roughness(plain.activity)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": 0}, "iterations must be a positive integer"),
        ({"subsets": 1.5}, "subsets must be a positive integer"),
        ({"prior": "tv", "beta": 1.0}, "prior must be None or one of"),
        ({"prior": "quadratic"}, "needs beta > 0"),
        ({"beta": -1.0}, "beta must be a finite number >= 0"),
        ({"filter_fwhm_mm": float("nan")}, "filter_fwhm_mm must be"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EMConfig(**kwargs)


def test_bad_inputs():
    geom, _, _, _, _, counts, _, _ = _problem()
    with pytest.raises(ValueError, match=r"counts must have shape \[V, rows, bins\]"):
        em_reconstruct(counts[:2], geom)
    with pytest.raises(ValueError, match="counts must be finite and >= 0"):
        em_reconstruct(-counts, geom)
    with pytest.raises(ValueError, match="subsets must be between 1 and the number of views 5"):
        em_reconstruct(counts, geom, EMConfig(subsets=6))
    with pytest.raises(ValueError, match="background must have the shape"):
        em_reconstruct(counts, geom, background=counts[0])
    with pytest.raises(ValueError, match="count_scale must be a positive number"):
        em_reconstruct(counts, geom, count_scale=0.0)


def test_poisson_likelihood_and_deviance_values():
    from recon.algorithms.poisson import poisson_deviance, poisson_log_likelihood

    y = torch.tensor([0.0, 2.0, 5.0], dtype=torch.float64)
    mean = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # Σ y log ŷ − ŷ − log y! = (0 − 1 − 0) + (2 ln 2 − 2 − ln 2) + (5 ln 4 − 4 − ln 120)
    expected_ll = -1 + (2 * math.log(2) - 2 - math.log(2)) + (5 * math.log(4) - 4 - math.log(120))
    assert float(poisson_log_likelihood(y, mean)) == pytest.approx(expected_ll, rel=1e-12)
    # 2 Σ y ln(y/ŷ) − (y − ŷ) = 2 [(0 + 1) + 0 + (5 ln 1.25 − 1)]
    assert float(poisson_deviance(y, mean)) == pytest.approx(2 * (1 + 5 * math.log(1.25) - 1))
    impossible = torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64)  # ŷ = 0 where y = 2
    assert float(poisson_log_likelihood(y, impossible)) == -math.inf
    assert float(poisson_deviance(y, impossible)) == math.inf

"""The projector as a linear operator: exact adjoint, autograd, fast path = reference twin.

Every configuration in CONFIGS goes through every check (a conformance list, as in DeepInverse).
"""

from __future__ import annotations

import pytest
import torch

from spectproj import CollimatorResponse, ImageGrid, ParallelGeometry, SPECTProjector, project

from .helpers import random_volume

SHAPE = (4, 6, 5)
SPACING = (2.0, 2.5, 2.5)


def _config(name: str):
    grid = ImageGrid(SHAPE, SPACING)
    mu = random_volume(SHAPE, seed=1) * 0.05
    col = CollimatorResponse(sigma0_mm=1.0, slope=0.05)
    configs = {
        "aligned": (ParallelGeometry.full_circle(grid, 4), mu, None),
        "ap_pa_no_mu": (ParallelGeometry.ap_pa(grid), None, None),
        "oblique": (ParallelGeometry(grid, [10.0, 45.0, 123.4, 300.0]), mu, None),
        "mixed_blur": (ParallelGeometry(grid, [0.0, 90.0, 45.0, 200.0], radius_mm=30.0), mu, col),
        "offset_grid": (
            ParallelGeometry(
                ImageGrid(SHAPE, SPACING, offset_mm=(1.0, -3.3, 2.1)), [0.0, 90.0, 180.0, 33.0]
            ),
            mu,
            None,
        ),
        "rebinned_detector": (
            ParallelGeometry(
                grid, [0.0, 270.0, 60.0], detector_shape=(3, 7), pixel_size_mm=(2.7, 2.1)
            ),
            mu,
            None,
        ),
        "anisotropic_blur": (
            ParallelGeometry(ImageGrid(SHAPE, (2.0, 3.0, 2.0)), [0.0, 90.0, 135.0], radius_mm=25.0),
            mu,
            col,
        ),
    }
    return configs[name]


NAMES = [
    "aligned",
    "ap_pa_no_mu",
    "oblique",
    "mixed_blur",
    "offset_grid",
    "rebinned_detector",
    "anisotropic_blur",
]


@pytest.mark.parametrize("name", NAMES)
def test_dot_product_identity_float64(name):
    geom, mu, col = _config(name)
    op = SPECTProjector(geom, mu=mu, collimator=col, dtype=torch.float64)
    x = random_volume(SHAPE, seed=2)
    y = torch.rand(
        (geom.n_views, *geom.detector_shape),
        generator=torch.Generator().manual_seed(3),
        dtype=torch.float64,
    )
    lhs = torch.dot(op(x).reshape(-1), y.reshape(-1))
    rhs = torch.dot(x.reshape(-1), op.adjoint(y).reshape(-1))
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-13)
    assert lhs.item() > 0


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_equals_reference_twin(name):
    geom, mu, col = _config(name)
    op = SPECTProjector(geom, mu=mu, collimator=col, dtype=torch.float64)
    x = random_volume(SHAPE, seed=4)
    y = torch.rand(
        (geom.n_views, *geom.detector_shape),
        generator=torch.Generator().manual_seed(5),
        dtype=torch.float64,
    )
    torch.testing.assert_close(op(x), op(x, reference=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.adjoint(y), op.adjoint(y, reference=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_adjoint_equals_autograd_vjp(name):
    geom, mu, col = _config(name)
    op = SPECTProjector(geom, mu=mu, collimator=col, dtype=torch.float64)
    x = random_volume(SHAPE, seed=6).requires_grad_(True)
    y = torch.rand(
        (geom.n_views, *geom.detector_shape),
        generator=torch.Generator().manual_seed(7),
        dtype=torch.float64,
    )
    (vjp,) = torch.autograd.grad(op(x), x, y)
    torch.testing.assert_close(vjp, op.adjoint(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["aligned", "oblique", "mixed_blur", "rebinned_detector"])
def test_gradcheck_activity_and_mu(name):
    geom, mu, col = _config(name)
    x = random_volume(SHAPE, seed=8).requires_grad_(True)
    m = mu.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, u: project(a, geom, mu=u, collimator=col), (x, m), fast_mode=True
    )


def test_backprojection_is_differentiable():
    geom, mu, _ = _config("oblique")
    op = SPECTProjector(geom, mu=mu, dtype=torch.float64)
    y = torch.rand((geom.n_views, *geom.detector_shape), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.adjoint, (y,), fast_mode=True)


def test_batch_equals_loop_and_linearity():
    geom, mu, col = _config("mixed_blur")
    op = SPECTProjector(geom, mu=mu, collimator=col, dtype=torch.float64)
    xs = torch.stack([random_volume(SHAPE, seed=s) for s in range(3)])
    batched = op(xs)
    assert batched.shape == (3, geom.n_views, *geom.detector_shape)
    for b in range(3):
        torch.testing.assert_close(batched[b], op(xs[b]), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(
        op(2.0 * xs[0] + xs[1]), 2.0 * batched[0] + batched[1], rtol=1e-12, atol=1e-12
    )
    back = op.adjoint(batched)
    assert back.shape == xs.shape
    torch.testing.assert_close(back[1], op.adjoint(batched[1]), rtol=1e-13, atol=1e-13)


def test_cached_projector_equals_functional_project_in_float32(device):
    geom, mu, col = _config("mixed_blur")
    x = random_volume(SHAPE, seed=9, dtype=torch.float32).to(device)
    op = SPECTProjector(geom, mu=mu.float(), collimator=col).to(device)
    assert op.device.type == device.type and op.dtype == torch.float32
    expected = project(x.double().cpu(), geom, mu=mu, collimator=col)
    torch.testing.assert_close(op(x).double().cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        project(x, geom, mu=mu.float().to(device), collimator=col).double().cpu(),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )


def test_projector_moves_between_dtypes():
    geom, mu, _ = _config("oblique")
    op = SPECTProjector(geom, mu=mu.float())
    x = random_volume(SHAPE, seed=10)
    with pytest.raises(TypeError, match="dtype"):
        op(x)
    op64 = op.to(torch.float64)
    assert op64.dtype == torch.float64
    torch.testing.assert_close(op64(x), project(x, geom, mu=mu), rtol=1e-6, atol=1e-6)


def test_gradient_wrt_mu_through_functional_project():
    geom, mu, _ = _config("aligned")
    x = random_volume(SHAPE, seed=11)
    m = mu.clone().requires_grad_(True)
    project(x, geom, mu=m).sum().backward()
    assert m.grad is not None and bool((m.grad <= 0).all())  # more attenuation, fewer counts
    assert float(m.grad.abs().sum()) > 0

"""Implicit fields go through the same pipeline as grids."""

from __future__ import annotations

import math

import pytest
import torch

from spectproj import (
    CollimatorResponse,
    GridField,
    ImageGrid,
    ParallelGeometry,
    SPECTProjector,
    project,
)

from .helpers import random_volume

SHAPE = (4, 5, 5)  # square in-plane, so that every view's lattice is the default detector
SPACING = (2.0, 2.5, 2.5)


class CountingField:
    """A field that records how many points it was asked for."""

    def __init__(self, inner):
        self.inner, self.points = inner, 0

    def __call__(self, pts):
        self.points += pts.shape[0]
        return self.inner(pts)


@pytest.mark.parametrize(
    "angles", [[0.0, 90.0, 180.0, 270.0], [20.0, 200.0, 45.0, 111.0]], ids=["aligned", "oblique"]
)
@pytest.mark.parametrize("with_blur", [False, True])
def test_trilinear_field_of_a_grid_equals_the_voxel_path(angles, with_blur):
    grid = ImageGrid(SHAPE, SPACING)
    geom = ParallelGeometry(grid, angles, radius_mm=40.0)
    a = random_volume(SHAPE, seed=1)
    mu = random_volume(SHAPE, seed=2) * 0.04
    col = CollimatorResponse(0.8, 0.04) if with_blur else None
    op = SPECTProjector(geom, mu=mu, collimator=col, dtype=torch.float64)
    torch.testing.assert_close(op(GridField(a, grid)), op(a), rtol=1e-12, atol=1e-12)
    # μ as a field too
    op_field_mu = SPECTProjector(geom, mu=GridField(mu, grid), collimator=col, dtype=torch.float64)
    torch.testing.assert_close(op_field_mu(GridField(a, grid)), op(a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op_field_mu(a), op(a), rtol=1e-12, atol=1e-12)


def test_opposed_views_share_field_evaluations():
    grid = ImageGrid(SHAPE, SPACING)
    a = GridField(random_volume(SHAPE, seed=3), grid)
    lattice_points = SHAPE[0] * SHAPE[1] * SHAPE[2]  # AP lattice: Z × S(=Y) × R(=X)
    both = CountingField(a)
    project(both, ParallelGeometry.ap_pa(grid))
    assert both.points == lattice_points
    single = CountingField(a)
    project(single, ParallelGeometry(grid, [0.0]))
    assert single.points == lattice_points


def test_field_with_jitter_and_more_samples_converges_to_the_analytic_chord():
    """A uniform ball field in uniform water: the field path needs no voxelisation."""
    radius, mu_value, activity = 30.0, 0.015, 1.5
    grid = ImageGrid((1, 33, 33), (2.0, 2.0, 2.0))

    def ball(p):
        return activity * (p.norm(dim=-1) <= radius).to(p.dtype)

    def water(p):
        return mu_value * (p.norm(dim=-1) <= radius).to(p.dtype)

    geom = ParallelGeometry(grid, [0.0, 180.0, 30.0, 210.0])
    r = geom.detector_centres_mm(1)
    chord = 2 * torch.sqrt((radius**2 - r**2).clamp_min(0))
    expected = activity * (1 - torch.exp(-mu_value * chord)) / mu_value
    central = r.abs() < 20
    op = SPECTProjector(geom, mu=water, dtype=torch.float64)
    errors = []
    for n in (33, 264):
        proj = op(ball, n_samples=n)[:, 0]
        errors.append(
            float(((proj[:, central] - expected[central]) / expected[central]).abs().max())
        )
    assert errors[1] < errors[0] / 4 and errors[1] < 0.01
    gen = torch.Generator().manual_seed(0)
    jittered = torch.stack(
        [op(ball, n_samples=66, jitter=True, generator=gen)[:, 0] for _ in range(8)]
    ).mean(0)
    assert (
        float(((jittered[:, central] - expected[central]) / expected[central]).abs().max()) < 0.02
    )


def test_jitter_is_seeded():
    grid = ImageGrid(SHAPE, SPACING)
    f = GridField(random_volume(SHAPE, seed=4), grid)
    geom = ParallelGeometry.ap_pa(grid)
    mu = random_volume(SHAPE, seed=5) * 0.03
    op = SPECTProjector(geom, mu=mu, dtype=torch.float64)
    p1 = op(f, jitter=True, generator=torch.Generator().manual_seed(7))
    p2 = op(f, jitter=True, generator=torch.Generator().manual_seed(7))
    p3 = op(f, jitter=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)


def test_field_gradients_reach_parameters():
    grid = ImageGrid(SHAPE, SPACING)
    centre = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64, requires_grad=True)

    def blob(p):
        return torch.exp(-((p - centre) ** 2).sum(-1) / 20.0)

    out = project(blob, ParallelGeometry(grid, [0.0, 45.0]), mu=random_volume(SHAPE, seed=6) * 0.02)
    out.sum().backward()
    assert (
        centre.grad is not None
        and math.isfinite(float(centre.grad.norm()))
        and float(centre.grad.norm()) > 0
    )


def test_field_chunks_do_not_change_the_result():
    grid = ImageGrid(SHAPE, SPACING)
    f = GridField(random_volume(SHAPE, seed=7), grid)
    geom = ParallelGeometry(grid, [0.0, 60.0])
    torch.testing.assert_close(
        project(f, geom, chunk_points=7), project(f, geom), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("angles", [[0.0, 180.0], [30.0, 210.0, 90.0, 270.0]])
def test_render_rays_equals_whole_view_projection(angles):
    grid = ImageGrid(SHAPE, SPACING)
    geom = ParallelGeometry(grid, angles)
    f = GridField(random_volume(SHAPE, seed=8), grid)
    op = SPECTProjector(geom, mu=random_volume(SHAPE, seed=9) * 0.05, dtype=torch.float64)
    full = op(f)
    v, r, b = torch.meshgrid(*(torch.arange(n) for n in full.shape), indexing="ij")
    for view in range(geom.n_views):  # views of one sample count per call
        rays = op.render_rays(f, v[view].reshape(-1), r[view].reshape(-1), b[view].reshape(-1))
        torch.testing.assert_close(
            rays.reshape(full[view].shape), full[view], rtol=1e-12, atol=1e-12
        )
    # the opposed view's value of the same line comes from the same samples
    counting = CountingField(f)
    pair = op.render_rays(
        counting, v[0].reshape(-1), r[0].reshape(-1), b[0].reshape(-1), with_opposed=True
    )
    assert counting.points == full[0].numel() * op.field_lattices[0].shape[0]  # S per ray
    opposed = geom.opposed_view(0)
    torch.testing.assert_close(pair[:, 0], full[0].reshape(-1), rtol=1e-12, atol=1e-12)
    mirrored = full[opposed].flip(-1).reshape(-1)
    torch.testing.assert_close(pair[:, 1], mirrored, rtol=1e-12, atol=1e-12)


def test_render_rays_bad_inputs():
    grid = ImageGrid(SHAPE, SPACING)
    op = SPECTProjector(ParallelGeometry(grid, [0.0, 45.0]))
    f = GridField(random_volume(SHAPE, seed=8, dtype=torch.float32), grid)
    idx = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"ray indices must be within \[0, 2\), got 0..5"):
        op.render_rays(f, torch.tensor([0, 5]), idx[:2], idx[:2])
    with pytest.raises(TypeError, match="ray indices must be integer tensors"):
        op.render_rays(f, idx.float(), idx, idx)
    with pytest.raises(ValueError, match="different sample counts"):
        op.render_rays(f, torch.tensor([0, 1]), idx[:2], idx[:2])
    with pytest.raises(ValueError, match="needs the view at"):
        op.render_rays(f, idx, idx, idx, with_opposed=True)
    assert op.render_rays(f, torch.tensor([0, 1]), idx[:2], idx[:2], n_samples=8).shape == (2,)

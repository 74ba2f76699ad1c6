"""Analytic values of the attenuated ray transform."""

from __future__ import annotations

import math

import pytest
import torch

from spectproj import ImageGrid, ParallelGeometry, project, water_mu_per_mm
from spectproj.attenuation import depth_weights, survival_exponent

from .helpers import disc_fraction


@pytest.mark.parametrize(
    ("energy", "expected"), [(140.5, 0.0154), (208.0, 0.0135), (364.5, 0.0111)]
)
def test_water_mu_matches_narrow_beam_values(energy, expected):
    assert water_mu_per_mm(energy) == pytest.approx(expected, rel=0.01)


def test_midpoint_rule_on_three_samples():
    mu = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)  # far → near
    step = 2.0
    expected = [step * (0.2 + 0.4 + 0.05), step * (0.4 + 0.1), step * 0.2]
    assert survival_exponent(mu, step).tolist() == pytest.approx(expected, rel=1e-14)
    w = depth_weights(mu, step)
    assert w.tolist() == pytest.approx([step * math.exp(-e) for e in expected], rel=1e-14)
    assert depth_weights(None, step) is None


def test_single_voxel_self_attenuation_matches_pytomography_probe():
    """PyTomography's probe: μ = 0.05/mm in the source voxel only, Δ = 4 mm → exp(−0.1)."""
    grid = ImageGrid((1, 3, 3), (4.0, 4.0, 4.0))
    a = torch.zeros(grid.shape, dtype=torch.float64)
    a[0, 1, 1] = 1.0
    mu = torch.zeros_like(a)
    mu[0, 1, 1] = 0.05
    ap = project(a, ParallelGeometry(grid, [0.0]), mu=mu)[0, 0, 1]
    assert ap.item() == pytest.approx(4.0 * math.exp(-0.1), rel=1e-14)


def _cylinder_error(n: int, beta: float, supersample: int) -> float:
    """Mean relative error of central chords of a uniform cylinder against a(1 − e^(−μL))/μ."""
    radius, size = 60.0, 140.0
    spacing = size / n
    grid = ImageGrid((1, n, n), (spacing, spacing, spacing))
    frac = disc_fraction(grid, radius, supersample)
    mu_value, activity = 0.015, 2.0
    geom = ParallelGeometry(grid, [beta])
    proj = project(activity * frac, geom, mu=mu_value * frac)[0, 0]
    r = geom.detector_centres_mm(1)
    central = r.abs() < 0.7 * radius
    chord = 2 * torch.sqrt(radius**2 - r[central] ** 2)
    expected = activity * (1 - torch.exp(-mu_value * chord)) / mu_value
    return float(((proj[central] - expected) / expected).abs().mean())


@pytest.mark.parametrize("beta", [0.0, 90.0, 30.0, 45.0])
def test_uniform_cylinder_chords_converge_to_the_analytic_value(beta):
    # binary voxelisation: the staircase error shrinks with the voxel size
    coarse, fine = _cylinder_error(28, beta, 1), _cylinder_error(112, beta, 1)
    assert fine < 0.01
    assert fine < coarse / 2
    # partial-volume voxelisation: close to exact already on a coarse grid
    assert _cylinder_error(28, beta, 8) < 2e-3


def test_no_attenuation_conserves_activity_at_aligned_views():
    grid = ImageGrid((4, 6, 5), (2.0, 3.0, 4.0))
    a = torch.rand(grid.shape, dtype=torch.float64)
    proj = project(a, ParallelGeometry.full_circle(grid, 4))
    total = a.sum() * grid.voxel_volume_mm3
    pixel_areas = [2.0 * 4.0, 2.0 * 3.0, 2.0 * 4.0, 2.0 * 3.0]  # bins along x, y, x, y
    for v, area in enumerate(pixel_areas):
        if v % 2 == 1:
            continue  # the default detector is (Z, X): 90/270 views of a 6-row volume are cropped
        assert (proj[v].sum() * area).item() == pytest.approx(total.item(), rel=1e-12)


def test_detector_pixels_larger_than_voxels_keep_the_area_integral():
    """4.42 mm pixels on a 3.9 mm grid: Σ value·area is conserved, values stay line integrals."""
    grid = ImageGrid((12, 16, 16), (3.9, 3.9, 3.9))
    a = torch.zeros(grid.shape, dtype=torch.float64)
    a[3:9, 4:12, 5:11] = 1.0  # well inside the detector
    native = project(a, ParallelGeometry(grid, [0.0, 45.0]))
    geom = ParallelGeometry(grid, [0.0, 45.0], detector_shape=(14, 18), pixel_size_mm=(4.42, 4.42))
    proj = project(a, geom)
    for v in range(2):
        assert (proj[v].sum() * 4.42**2).item() == pytest.approx(
            (native[v].sum() * 3.9**2).item(), rel=1e-12
        )
    # a uniform slab keeps its line-integral value in fully covered pixels
    assert proj[0, 7, 9].item() == pytest.approx(8 * 3.9, rel=1e-12)

"""Every orientation claim of docs/conventions.md, checked with point sources."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectproj import ImageGrid, ParallelGeometry, project
from spectproj.display import mirror_bins, to_viewer

SHAPE = (5, 7, 9)  # Z, Y, X: all different so that a wrong axis cannot pass
SPACING = (2.0, 3.0, 2.5)


def point_source(k: int, j: int, i: int) -> torch.Tensor:
    a = torch.zeros(SHAPE, dtype=torch.float64)
    a[k, j, i] = 1.0
    return a


# (β, expected bin for voxel (k, j, i), step Δ along the ray)
CASES = [
    (0.0, lambda j, i: i, SPACING[1]),  # AP: r = x → bin = column
    (180.0, lambda j, i: SHAPE[2] - 1 - i, SPACING[1]),  # PA: r = −x
    (90.0, lambda j, i: SHAPE[1] - 1 - j, SPACING[2]),  # r = −y
    (270.0, lambda j, i: j, SPACING[2]),  # r = y
]


@pytest.mark.parametrize(("beta", "expected_bin", "step"), CASES)
@pytest.mark.parametrize("voxel", [(1, 2, 6), (4, 5, 1), (0, 0, 0)])
def test_point_source_lands_on_documented_pixel(beta, expected_bin, step, voxel):
    grid = ImageGrid(SHAPE, SPACING)
    # A square detector covering every view: bins of the in-plane size of the view's r axis.
    n_bins = SHAPE[2] if beta in (0.0, 180.0) else SHAPE[1]
    width = SPACING[2] if beta in (0.0, 180.0) else SPACING[1]
    geom = ParallelGeometry(
        grid, [beta], detector_shape=(SHAPE[0], n_bins), pixel_size_mm=(SPACING[0], width)
    )
    k, j, i = voxel
    proj = project(point_source(k, j, i), geom)[0]
    rows, bins = torch.nonzero(proj, as_tuple=True)
    assert rows.tolist() == [k]  # row index = slice index
    assert bins.tolist() == [expected_bin(j, i)]
    assert proj[k, expected_bin(j, i)].item() == pytest.approx(step)  # activity · Δ


def test_angles_are_taken_modulo_360():
    grid = ImageGrid(SHAPE, SPACING)
    a = point_source(2, 3, 4)
    p1 = project(a, ParallelGeometry(grid, [-180.0, 360.0]))
    p2 = project(a, ParallelGeometry(grid, [180.0, 0.0]))
    assert torch.equal(p1, p2)


def test_ln_ap_over_pa_equals_mu_times_l_minus_2d():
    """Point source at depth d (from the anterior surface) in a uniform slab of thickness L."""
    grid = ImageGrid(SHAPE, SPACING)
    mu_value = 0.0154
    mu = torch.full(SHAPE, mu_value, dtype=torch.float64)
    thickness = SHAPE[1] * SPACING[1]
    for j in range(SHAPE[1]):
        ap, pa = project(point_source(2, j, 4), ParallelGeometry.ap_pa(grid), mu=mu)
        depth = (j + 0.5) * SPACING[1]  # anterior surface (y min) to the voxel centre
        ratio = math.log(ap[2, 4].item() / pa[2, SHAPE[2] - 1 - 4].item())
        assert ratio == pytest.approx(mu_value * (thickness - 2 * depth), rel=1e-12, abs=1e-14)
        # the geometric mean does not depend on depth
        gm = math.sqrt(ap[2, 4].item() * pa[2, SHAPE[2] - 1 - 4].item())
        assert gm == pytest.approx(SPACING[1] * math.exp(-mu_value * thickness / 2), rel=1e-12)


def test_oblique_point_source_lands_where_r_says():
    """At β = 45° a source at (x, y) lands on the bin nearest r = x cos β − y sin β."""
    grid = ImageGrid((3, 21, 21), (2.0, 2.0, 2.0))
    a = torch.zeros(grid.shape, dtype=torch.float64)
    j, i = 15, 14  # y = 10 mm, x = 8 mm
    a[1, j, i] = 1.0
    beta = 45.0
    proj = project(a, ParallelGeometry(grid, [beta]))[0]
    y, x = grid.centres_mm(1)[j].item(), grid.centres_mm(2)[i].item()
    r = x * math.cos(math.radians(beta)) - y * math.sin(math.radians(beta))
    centres = ParallelGeometry(grid, [beta]).detector_centres_mm(1)
    centroid = (proj[1] * centres).sum() / proj[1].sum()
    assert centroid.item() == pytest.approx(r, abs=0.5)
    assert int(torch.argmax(proj[1])) == int(torch.argmin((centres - r).abs()))


def test_display_helpers_show_head_up_and_align_pa_on_ap():
    grid = ImageGrid(SHAPE, SPACING)
    a = point_source(4, 3, 1)  # top slice (head end), patient's right side (low x)
    ap, pa = project(a, ParallelGeometry.ap_pa(grid))
    shown = to_viewer(ap)
    assert torch.nonzero(shown).tolist() == [[0, 1]]  # head at the top row, patient right at left
    assert torch.nonzero(mirror_bins(pa)).tolist() == torch.nonzero(ap).tolist()
    assert np.array_equal(to_viewer(ap.numpy()), shown.numpy())
    assert np.array_equal(mirror_bins(pa.numpy()), mirror_bins(pa).numpy())
    # PA as displayed: patient's left (high x) on the viewer's left
    b = point_source(2, 3, SHAPE[2] - 1)
    assert torch.nonzero(project(b, ParallelGeometry.ap_pa(grid))[1])[0, 1].item() == 0


def test_field_points_are_x_y_z_in_mm():
    """A field blob at x = +12 mm (patient left), z = −4 mm lands on AP bin r = +12, row z = −4."""
    grid = ImageGrid((5, 9, 9), (2.0, 2.0, 2.0))
    centre = torch.tensor([12.0, 0.0, -4.0], dtype=torch.float64)

    def blob(p):
        return torch.exp(-((p - centre) ** 2).sum(-1) / 2.0)

    geom = ParallelGeometry.ap_pa(grid, detector_shape=(5, 17), pixel_size_mm=(2.0, 2.0))
    ap, pa = project(blob, geom)
    rows, bins = geom.detector_centres_mm(0), geom.detector_centres_mm(1)
    row, b = divmod(int(torch.argmax(ap)), ap.shape[1])
    assert (rows[row].item(), bins[b].item()) == (-4.0, 12.0)
    row, b = divmod(int(torch.argmax(pa)), pa.shape[1])
    assert (rows[row].item(), bins[b].item()) == (-4.0, -12.0)  # PA: r = −x

"""Bad input gets a clear error naming the argument, the expectation and the actual value."""

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
from spectproj.physics import water_mu_per_mm

GRID = ImageGrid((3, 4, 5), (2.0, 2.0, 2.0))
GEOM = ParallelGeometry.ap_pa(GRID)
GOOD = torch.ones(3, 4, 5)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda: ImageGrid((0, 4, 4), (1, 1, 1)),
            ValueError,
            r"shape must be three positive integers.*\(0, 4, 4\)",
        ),
        (lambda: ImageGrid((2, 4), (1, 1, 1)), ValueError, "shape must be three"),
        (
            lambda: ImageGrid((2.5, 4, 4), (1, 1, 1)),
            ValueError,
            "shape must be three positive integers",
        ),
        (
            lambda: ImageGrid((2, 4, 4), (1, -1, 1)),
            ValueError,
            r"spacing_mm must be three positive lengths \(mm\), got \(1, -1, 1\)",
        ),
        (lambda: ImageGrid((2, 4, 4), (1, 0, 1)), ValueError, "spacing_mm must be three positive"),
        (
            lambda: ImageGrid((2, 4, 4), (1, math.nan, 1)),
            ValueError,
            "spacing_mm must be three finite",
        ),
        (lambda: ImageGrid((2, 4, 4), "abc"), TypeError, "spacing_mm must be a sequence"),
        (
            lambda: ImageGrid((2, 4, 4), (1, 1, 1), offset_mm=(0, math.inf, 0)),
            ValueError,
            "offset_mm",
        ),
        (lambda: ParallelGeometry(GRID, []), ValueError, "angles_deg must hold at least one angle"),
        (lambda: ParallelGeometry(GRID, [0.0, math.nan]), ValueError, "angles_deg must be finite"),
        (
            lambda: ParallelGeometry(GRID, ["a"]),
            TypeError,
            "angles_deg must be a sequence of numbers",
        ),
        (lambda: ParallelGeometry("grid", [0.0]), TypeError, "grid must be an ImageGrid, got str"),
        (
            lambda: ParallelGeometry(GRID, [0.0], detector_shape=(0, 4)),
            ValueError,
            r"detector_shape.*\(0, 4\)",
        ),
        (
            lambda: ParallelGeometry(GRID, [0.0], pixel_size_mm=(1.0, -2.0)),
            ValueError,
            r"pixel_size_mm.*\(1.0, -2.0\)",
        ),
        (
            lambda: ParallelGeometry(GRID, [0.0], radius_mm=-5),
            ValueError,
            "radius_mm must be a positive length",
        ),
        (
            lambda: ParallelGeometry.full_circle(GRID, 0),
            ValueError,
            "n_views must be a positive integer, got 0",
        ),
        (
            lambda: CollimatorResponse(-1.0, 0.1),
            ValueError,
            "sigma0_mm must be a finite number >= 0, got -1.0",
        ),
        (lambda: CollimatorResponse(1.0, math.nan), ValueError, "slope must be a finite number"),
        (
            lambda: water_mu_per_mm(20.0),
            ValueError,
            r"energy_keV for water must be within \[50, 600\] keV, got 20.0",
        ),
        (
            lambda: project(torch.ones(3, 4, 4), GEOM),
            ValueError,
            r"activity must have shape \[Z, Y, X\] = \[3, 4, 5\].*got \[3, 4, 4\]",
        ),
        (
            lambda: project(torch.ones(3, 4, 5, dtype=torch.int64), GEOM),
            TypeError,
            "activity must be a floating-point tensor, got dtype torch.int64",
        ),
        (
            lambda: project([1, 2], GEOM),
            TypeError,
            "activity must be a torch.Tensor or a callable, got list",
        ),
        (
            lambda: project(GOOD, GEOM, mu=-GOOD),
            ValueError,
            r"mu \(attenuation, 1/mm\) must be >= 0, got minimum -1",
        ),
        (lambda: project(GOOD, GEOM, mu=GOOD * math.nan), ValueError, "mu .* must be finite"),
        (lambda: project(GOOD, GEOM, mu=torch.ones(2, 3, 4, 5)), ValueError, "mu must be one"),
        (
            lambda: project(GOOD, GEOM, mu="water"),
            TypeError,
            "mu must be a torch.Tensor, a callable or None, got str",
        ),
        (
            lambda: project(GOOD, GEOM, collimator=CollimatorResponse(1.0, 0.1)),
            ValueError,
            r"geometry.radius_mm \(mm\) is required",
        ),
        (
            lambda: project(GOOD, GEOM, collimator="LEHR"),
            TypeError,
            "collimator must be a CollimatorResponse",
        ),
        (
            lambda: project(GOOD, "geometry"),
            TypeError,
            "geometry must be a ParallelGeometry, got str",
        ),
        (
            lambda: project(lambda p: p.sum(-1, keepdim=True), GEOM),
            ValueError,
            r"activity field must map points \[N, 3\] to values \[N\]",
        ),
        (
            lambda: project(lambda p: [0.0], GEOM),
            TypeError,
            "activity field must return a torch.Tensor, got list",
        ),
        (
            lambda: project(lambda p: p[..., 0], GEOM, n_samples=0),
            ValueError,
            "n_samples must be a positive integer or None, got 0",
        ),
        (
            lambda: SPECTProjector(GEOM).adjoint(torch.ones(3, 3, 5)),
            ValueError,
            r"projections must have shape \[V, rows, bins\] = \[2, 3, 5\].*got \[3, 3, 5\]",
        ),
        (
            lambda: SPECTProjector(GEOM).adjoint(torch.ones(2, 3, 5, dtype=torch.float64)),
            TypeError,
            "projections has dtype torch.float64 but the projector uses torch.float32",
        ),
        (
            lambda: SPECTProjector(GEOM, dtype=torch.int32),
            TypeError,
            "dtype must be a floating-point dtype",
        ),
        (
            lambda: GridField(GOOD, GRID)(torch.ones(4, 2)),
            ValueError,
            r"points_mm must have shape \[..., 3\]",
        ),
    ],
)
def test_bad_input_table(make, error, match):
    with pytest.raises(error, match=match):
        make()

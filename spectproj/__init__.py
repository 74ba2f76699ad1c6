"""spectproj: a differentiable parallel-hole SPECT projector with attenuation and collimator blur.

The public API::

    from spectproj import ImageGrid, ParallelGeometry, project, backproject, SPECTProjector

    grid = ImageGrid(shape=(64, 64, 64), spacing_mm=(4.0, 4.0, 4.0))
    geometry = ParallelGeometry.ap_pa(grid)              # or .full_circle(grid, 120)
    projections = project(activity, geometry, mu=mu)     # [V, rows, bins], activity·mm
    volume = backproject(projections, geometry, mu=mu)   # exact transpose, [Z, Y, X]

``SPECTProjector`` is a ``LinearOperator`` (``spectproj.operator``: shapes, ``forward``,
``adjoint``); ``SPECTProjector.subset(views)`` is the operator of some views, sharing its cache.

Axes, angles and units are fixed in ``docs/conventions.md``.
"""

from spectproj.attenuation import depth_weights, survival_exponent
from spectproj.collimator import CollimatorResponse
from spectproj.collimator_table import CollimatorSpec
from spectproj.geometry import ParallelGeometry
from spectproj.grid import ImageGrid
from spectproj.operator import LinearOperator, MatrixOperator, ViewSubset, subset_operator
from spectproj.physics import bone_mu_per_mm, hu_to_mu_per_mm, lead_mu_per_mm, water_mu_per_mm
from spectproj.projector import SPECTProjector, backproject, project
from spectproj.projector_subset import ProjectorSubset
from spectproj.sampling import GridField

__all__ = [
    "CollimatorResponse",
    "CollimatorSpec",
    "GridField",
    "ImageGrid",
    "LinearOperator",
    "MatrixOperator",
    "ParallelGeometry",
    "ProjectorSubset",
    "SPECTProjector",
    "ViewSubset",
    "backproject",
    "bone_mu_per_mm",
    "depth_weights",
    "hu_to_mu_per_mm",
    "lead_mu_per_mm",
    "project",
    "subset_operator",
    "survival_exponent",
    "water_mu_per_mm",
]
__version__ = "0.1.0"

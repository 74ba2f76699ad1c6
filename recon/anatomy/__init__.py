"""Anatomy-guided quantification: organ activities from planar views and a CT-derived anatomy.

Modules
-------
compartments
    The anatomy's segments and background regions as masks (`compartments_from_anatomy`).
organ_fit
    One concentration per compartment by Poisson ML, with Cramér–Rao uncertainties (QPlanar).
residual
    `OrganResidualModel`: organs with registration and smooth uptake modulation, plus sources.
sources
    Residual sources seeded where counts stay unexplained, at the depth the AP/PA ratio gives.
reconstruct
    `reconstruct_organs`: the whole method on a study, as a `recon.io.Result`.
uncertainty
    The sd of a table row: count statistics and the method's measured model error.
quantify
    The organ and lesion table of any results of a study.
"""

from recon.anatomy.compartments import Compartments, compartments_from_anatomy
from recon.anatomy.organ_fit import OrganFit, OrganFitConfig, fit_organs
from recon.anatomy.reconstruct import OrgansConfig, OrgansOutcome, reconstruct_organs
from recon.anatomy.residual import OrganResidualModel, ResidualSource
from recon.anatomy.uncertainty import ModelError

__all__ = [
    "Compartments",
    "ModelError",
    "OrganFit",
    "OrganFitConfig",
    "OrganResidualModel",
    "OrgansConfig",
    "OrgansOutcome",
    "ResidualSource",
    "compartments_from_anatomy",
    "fit_organs",
    "reconstruct_organs",
]

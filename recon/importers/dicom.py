"""DICOM importers: NM planar and tomographic projections, CT series → μ on a SPECT grid.

This module gathers the public functions of :mod:`recon.importers.dicom_nm` and
:mod:`recon.importers.dicom_ct`. ``docs/dicom.md`` says what is read and how the orientation,
the angles, the HU → μ model and the resampling are decided.
"""

from __future__ import annotations

from recon.importers.dicom_ct import (
    CtGeometry,
    ct_to_mu_on_grid,
    read_ct_series,
    resample_to_grid,
)
from recon.importers.dicom_nm import (
    PHOTOPEAKS_KEV,
    NmTomo,
    PlanarImages,
    dicom_angle_to_beta,
    nm_planar_study,
    parse_isotope,
    read_nm_planar,
    read_nm_tomo,
    read_nm_tomo_details,
)

__all__ = [
    "PHOTOPEAKS_KEV",
    "CtGeometry",
    "NmTomo",
    "PlanarImages",
    "ct_to_mu_on_grid",
    "dicom_angle_to_beta",
    "nm_planar_study",
    "parse_isotope",
    "read_ct_series",
    "read_nm_planar",
    "read_nm_tomo",
    "read_nm_tomo_details",
    "resample_to_grid",
]

"""Importers: other tools' files into the `spect` data model (``recon.io.study``).

Modules
-------
interfile
    Interfile 3.3 volumes and projections (GATE, SIMIND, STIR): read and write.
patient15
    The shared Lu-177 DOTATATE patient phantom (Interfile) as volumes or as an AP/PA study.
pienerf
    The pieNeRF prototype's CSV manifest of ``.npy`` AP/PA images and CT volumes.
nifti
    NIfTI-1 volumes with an RAS affine that viewers (3D Slicer) display correctly.
dicom
    DICOM NM planar and tomographic projections, and CT series converted to μ (pydicom).
segmentation, seg_dicom, seg_threshold
    Segmentations onto a study's grid as its ``Anatomy``: NIfTI label maps and per-structure
    masks (TotalSegmentator), DICOM SEG and RTSTRUCT, and CT/μ threshold segmentation.

The orientation choices are documented in ``docs/importers.md`` and ``docs/dicom.md``.
``recon.importers.seg_dicom`` (DICOM SEG, RTSTRUCT) is imported on use, not here.
"""

from recon.importers.dicom import (
    PlanarImages,
    ct_to_mu_on_grid,
    nm_planar_study,
    read_ct_series,
    read_nm_planar,
    read_nm_tomo,
)
from recon.importers.interfile import (
    InterfileError,
    InterfileImage,
    read_interfile,
    reorient_from_zyx,
    reorient_spacing,
    reorient_to_zyx,
    write_interfile,
)
from recon.importers.nifti import read_nifti, write_nifti
from recon.importers.patient15 import Patient15, load_patient15, patient15_study
from recon.importers.pienerf import PieNeRFRow, pienerf_row_to_study, read_pienerf_manifest
from recon.importers.seg_threshold import anatomy_from_threshold, body_from_threshold
from recon.importers.segmentation import (
    TOTALSEGMENTATOR_TOTAL,
    anatomy_from_labels,
    anatomy_from_nifti,
    anatomy_from_nifti_folder,
    import_anatomy,
    read_names,
)

__all__ = [
    "TOTALSEGMENTATOR_TOTAL",
    "InterfileError",
    "InterfileImage",
    "Patient15",
    "PieNeRFRow",
    "PlanarImages",
    "anatomy_from_labels",
    "anatomy_from_nifti",
    "anatomy_from_nifti_folder",
    "anatomy_from_threshold",
    "body_from_threshold",
    "ct_to_mu_on_grid",
    "import_anatomy",
    "load_patient15",
    "nm_planar_study",
    "patient15_study",
    "pienerf_row_to_study",
    "read_ct_series",
    "read_interfile",
    "read_names",
    "read_nifti",
    "read_nm_planar",
    "read_nm_tomo",
    "read_pienerf_manifest",
    "reorient_from_zyx",
    "reorient_spacing",
    "reorient_to_zyx",
    "write_interfile",
    "write_nifti",
]

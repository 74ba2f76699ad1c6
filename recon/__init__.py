"""Reconstruction, data and evaluation built on `spectproj`.

The layout (see ``docs/architecture.md``): `recon.io` (the data model, its files, and one module
per outside format: DICOM, Interfile, NIfTI, pieNeRF, segmentations); `recon.data.phantoms` and
`recon.data.simulate` (test data); algorithms — `recon.algorithms.mlem`,
`recon.algorithms.conjugate_view`, `recon.nerf`, `recon.cohort`, `recon.anatomy` — trained, where
they learn, by the one loop of `recon.training`; one function per method in `recon.reconstruct`;
evaluation in `recon.evaluation.metrics`, `recon.evaluation.report` and
`recon.evaluation.figures`.
"""

"""Reconstruction algorithms on voxel grids and organ regions.

Modules
-------
mlem
    MLEM/OSEM and one-step-late MAP-EM for any `spectproj.LinearOperator` (`em_reconstruct`).
poisson
    The Poisson log-likelihood and deviance.
priors
    Quadratic and relative-difference priors for MAP-EM.
filters
    Gaussian post-filters in mm.
conjugate_view
    Organ activities from an AP/PA pair by the geometric mean (the clinical method).
"""

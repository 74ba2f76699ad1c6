"""Test data: phantoms and simulated acquisitions.

Modules
-------
phantoms
    The procedural torso phantom, its variants with the flaws of clinical data.
simulate
    Simulated planar and SPECT acquisitions of a phantom (counts, scatter, noise).
torso_study
    A simulated torso study in one call (``spect phantom``, ``spect simulate``).
"""

"""Reconstruction and test objects built on `spectproj`.

Modules
-------
phantoms_basic
    Small analytic phantoms (activity and attenuation maps) for demos and tests.
"""

"""Bridges between ``spectproj`` and other libraries (optional dependencies).

Nothing here is imported by ``spectproj`` itself; each submodule imports its library when it is
imported, and only then:

- ``spectproj.interop.pytorch3d``: a SPECT raymarcher for PyTorch3D's ``ImplicitRenderer`` and
  ``VolumeRenderer``, conversions between ``ImageGrid`` volumes and ``pytorch3d.structures.Volumes``
  and between ``ParallelGeometry`` and PyTorch3D orthographic cameras (install with
  ``pip install -e ".[pytorch3d]"``; see ``docs/pytorch3d.md``).
"""

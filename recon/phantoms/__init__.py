"""Built-in phantoms: a procedural torso with organs, lesions, μ and labels, on any grid.

See ``docs/phantoms.md``::

    from recon.phantoms import TorsoPhantom, default_grid, make_torso

    phantom = make_torso(default_grid(64), energy_keV=140.5, config=TorsoPhantom())
"""

from recon.phantoms.torso import (
    COLLIMATORS,
    ENERGY_WINDOWS_KEV,
    FIRST_LESION_LABEL,
    LABELS,
    NUCLIDES,
    ORGANS,
    TYPICAL_SENSITIVITY_CPS_PER_MBQ,
    Lesion,
    Phantom,
    TorsoPhantom,
    collimator_for,
    default_grid,
    default_lesions,
    make_torso,
    nuclide_energy,
    nuclide_name,
)

__all__ = [
    "COLLIMATORS",
    "ENERGY_WINDOWS_KEV",
    "FIRST_LESION_LABEL",
    "LABELS",
    "NUCLIDES",
    "ORGANS",
    "TYPICAL_SENSITIVITY_CPS_PER_MBQ",
    "Lesion",
    "Phantom",
    "TorsoPhantom",
    "collimator_for",
    "default_grid",
    "default_lesions",
    "make_torso",
    "nuclide_energy",
    "nuclide_name",
]

"""Built-in phantoms: a procedural torso with organs, lesions, μ and labels, on any grid.

See ``docs/phantoms.md``::

    from recon.data.phantoms import TorsoPhantom, default_grid, make_torso

    phantom = make_torso(default_grid(64), energy_keV=140.5, config=TorsoPhantom())

Variants with the flaws of clinical data (uneven uptake, necrotic and unsegmented lesions,
segmentation errors, scatter), simulated from a finer grid: `PhantomVariant`,
`simulate_variant`, `segmentation_from_phantom` (``recon.data.phantoms.variants``).

A population of torsos (body and organ sizes, positions, rotations, uptake per tracer, lesions,
a synthetic CT, segmentation errors) from a seeded distribution: `PopulationConfig`,
`sample_torso`, `simulate_sample` (``recon.data.phantoms.population``).
"""

from recon.data.phantoms.population import (
    TRACERS,
    PopulationConfig,
    PopulationSample,
    sample_population,
    sample_torso,
    simulate_sample,
)
from recon.data.phantoms.torso import (
    COLLIMATORS,
    DEFAULT_TISSUE_HU,
    ENERGY_WINDOWS_KEV,
    FIRST_LESION_LABEL,
    LABELS,
    NUCLIDES,
    ORGANS,
    TYPICAL_SENSITIVITY_CPS_PER_MBQ,
    Lesion,
    OrganPose,
    Phantom,
    TorsoPhantom,
    UptakeField,
    collimator_for,
    default_grid,
    default_lesions,
    make_torso,
    nuclide_energy,
    nuclide_name,
    structure_at,
)
from recon.data.phantoms.variants import (
    HETEROGENEOUS_ORGANS,
    PhantomVariant,
    block_mean,
    gaussian_random_field,
    heterogeneous_uptake,
    segmentation_from_phantom,
    simulate_variant,
    vary_lesions,
)

__all__ = [
    "COLLIMATORS",
    "DEFAULT_TISSUE_HU",
    "ENERGY_WINDOWS_KEV",
    "FIRST_LESION_LABEL",
    "HETEROGENEOUS_ORGANS",
    "LABELS",
    "NUCLIDES",
    "ORGANS",
    "TRACERS",
    "TYPICAL_SENSITIVITY_CPS_PER_MBQ",
    "Lesion",
    "OrganPose",
    "Phantom",
    "PhantomVariant",
    "PopulationConfig",
    "PopulationSample",
    "TorsoPhantom",
    "UptakeField",
    "block_mean",
    "collimator_for",
    "default_grid",
    "default_lesions",
    "gaussian_random_field",
    "heterogeneous_uptake",
    "make_torso",
    "nuclide_energy",
    "nuclide_name",
    "sample_population",
    "sample_torso",
    "segmentation_from_phantom",
    "simulate_sample",
    "simulate_variant",
    "structure_at",
    "vary_lesions",
]

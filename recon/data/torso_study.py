"""A study of the built-in torso phantom from a few choices (``spect phantom``, ``spect simulate``).

`torso_study` resolves the choices (the activity preset and the collimator from the nuclide, the
views), builds the phantom (`recon.data.phantoms.make_torso`) on ``default_grid(size, fov_mm)`` and
simulates its acquisition (`recon.data.simulate.simulate_acquisition`). It returns a `TorsoStudy`:
the study and what was chosen, for the provenance and the printed summary.
"""

from __future__ import annotations

from dataclasses import dataclass

from recon.io import Study

__all__ = ["PRESETS", "TorsoStudy", "torso_study"]

#: Activity presets: ``auto`` (``lu177-dotatate`` for Lu-177, ``tc99m`` otherwise) or one of them.
PRESETS = ("auto", "tc99m", "lu177-dotatate")


@dataclass(frozen=True)
class TorsoStudy:
    """What `torso_study` made.

    Attributes
    ----------
    study:
        The simulated study (truth activity in Bq/mL, labels, μ in 1/mm; background with
        scatter).
    preset:
        The activity preset used (``"tc99m"`` or ``"lu177-dotatate"``).
    collimator:
        The collimator simulated (``"LEHR"``, ...), or ``None``.
    phantom_mbq:
        Total activity of the phantom (MBq).
    """

    study: Study
    preset: str
    collimator: str | None
    phantom_mbq: float


def torso_study(
    *,
    size: int = 64,
    fov_mm: float = 400.0,
    nuclide: str = "Tc-99m",
    preset: str = "auto",
    views: str | int = "ap-pa",
    collimator: str = "auto",
    radius_mm: float | None = 250.0,
    scatter_fraction: float = 0.0,
    scatter_windows: bool = False,
    total_counts: float | None = None,
    duration_s: float | None = None,
    sensitivity_cps_per_mbq: float | None = None,
    seed: int = 0,
    noise: bool = True,
) -> TorsoStudy:
    """Build the torso phantom and simulate an acquisition of it.

    Parameters
    ----------
    size, fov_mm:
        Voxels per axis and edge (mm) of the cubic grid.
    nuclide:
        A name of `recon.data.phantoms.NUCLIDES` (its photopeak sets μ and the energy window).
    preset:
        One of `PRESETS`.
    views:
        ``"ap-pa"`` or a number of views equally spaced over 360° from β = 0.
    collimator:
        ``"none"``, ``"auto"`` (the nuclide's usual one: LEHR, MEGP, HE), a name of the
        collimator table (docs/collimators.md) or a ``FILE.toml`` describing one.
    radius_mm:
        Distance from the rotation axis to the collimator face (mm), or ``None``.
    scatter_fraction, scatter_windows, total_counts, duration_s, sensitivity_cps_per_mbq, seed,
    noise:
        As `recon.data.simulate.simulate_acquisition`.

    Raises
    ------
    ValueError
        An unknown nuclide, preset, collimator or views; bad simulation settings.
    """
    from recon.data.phantoms import COLLIMATORS, NUCLIDES, TorsoPhantom, default_grid, make_torso
    from recon.data.simulate import simulate_acquisition
    from spectproj import ParallelGeometry
    from spectproj.collimator_table import CollimatorSpec, collimator_spec

    if nuclide not in NUCLIDES:
        raise ValueError(f"nuclide must be one of {list(NUCLIDES)}, got {nuclide!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    if views != "ap-pa" and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
        raise ValueError(f"views must be 'ap-pa' or a positive number of views, got {views!r}")
    if preset == "auto":
        preset = "lu177-dotatate" if nuclide == "Lu-177" else "tc99m"
    config = TorsoPhantom.lu177_dotatate() if preset == "lu177-dotatate" else TorsoPhantom.tc99m()
    chosen: str | CollimatorSpec | None
    if collimator in ("none", "auto"):
        chosen = None if collimator == "none" else COLLIMATORS[nuclide]
    else:  # a table name or a TOML file (ValueError naming it otherwise)
        chosen = collimator_spec(collimator)
    name = chosen.name if isinstance(chosen, CollimatorSpec) else chosen
    phantom = make_torso(default_grid(size, fov_mm), NUCLIDES[nuclide], config)
    if views == "ap-pa":
        geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=radius_mm)
    else:
        geometry = ParallelGeometry.full_circle(phantom.grid, int(views), radius_mm=radius_mm)
    study = simulate_acquisition(
        phantom,
        geometry,
        collimator=chosen,
        scatter_fraction=scatter_fraction,
        scatter_windows=scatter_windows,
        total_counts=total_counts,
        sensitivity_cps_per_mbq=sensitivity_cps_per_mbq,
        duration_s=duration_s,
        isotope=nuclide,
        seed=seed,
        noise=noise,
    )
    return TorsoStudy(study, preset, name, phantom.total_activity_mbq)

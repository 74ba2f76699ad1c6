"""A phantom population: torsos drawn from a seeded distribution of anatomy, uptake and flaws.

A cohort of one anatomy teaches a network nothing about anatomy. `PopulationConfig` describes a
distribution of torsos, and `sample_torso` draws member ``index`` of it for a ``seed`` (each
member from its own random stream, so member 7 is the same whether 8 or 128 are drawn, and any
subset can be drawn in parallel):

- **body**: width, depth, length and taper of the elliptical body (uniform in ranges);
- **organs** (liver, spleen, kidneys, bladder, heart, lungs, spine, bowel: the torso phantom's
  shapes, `recon.data.phantoms.torso.ORGANS`): each gets an `OrganPose`: a size factor
  (log-normal, common to its three axes, times a smaller per-axis one), a shift (normal, mm) and
  small rotations (normal, degrees), the last two truncated at two standard deviations. A draw is
  kept only if every organ lies inside the body (≥ 97 % of its volume, or as much as in the
  reference anatomy of that body if that is less) and keeps ≥ 85 % of the
  share of its volume that is not covered by later-painted organs in the reference anatomy (the
  torso's painting order resolves overlaps; the heart always covers part of the lungs, the
  organs part of the bowel); otherwise the whole set is redrawn (up to ``max_tries``, then the
  reference anatomy scaled to the body is used);
- **uptake** per structure: a concentration ``u · unit`` with ``u`` log-uniform in the tracer's
  range (`TRACERS`) and ``unit`` (Bq/mL of uptake 1, i.e. SUV 1 at imaging time) uniform in the
  tracer's range; heterogeneity inside organs (`PhantomVariant.heterogeneity_rms`, the smooth
  random field of `recon.data.phantoms.variants`);
- **lesions**: a count, diameters, host structures among the tracer's lesion sites, a place
  entirely inside the host and apart from the other lesions, an uptake, and with some
  probability a necrotic core;
- **a synthetic CT**: HU per tissue (uniform in `TISSUE_HU_RANGES`), from which μ is derived
  with `spectproj.hu_to_mu_per_mm`, as for a patient (`make_torso`'s ``tissue_hu``);
- **the segmentation** the methods get (`recon.data.phantoms.segmentation_from_phantom`):
  lesions unsegmented, and with some probability one-voxel shifts of the organs.

`simulate_sample` turns a sample into an AP/PA `recon.io.study.Study` (through
`recon.data.phantoms.simulate_variant`, from a finer grid: no inverse crime).

Uptake ranges (`TRACERS`) are **our ranges, chosen to bracket published values**, not fits to
them. PET SUVs of the diagnostic analogue stand in for the therapy agent's pattern:

- Lu-177 DOTATATE — Kuyumcu et al., Ann Nucl Med (2013),
  doi:10.1007/s12149-013-0718-4 (⁶⁸Ga-DOTATATE mean SUVmax: spleen 24.7, kidneys 14.3, liver
  9.1; tumours in liver 28.7, bone 18.3, lymph nodes 12.6); Özgüven et al., Mol Imaging
  Radionucl Ther 30:39–46 (2021), doi:10.4274/mirt.galenos.2021.37268 (order spleen > kidneys >
  adrenals > liver > stomach > small intestine; lungs, muscle and bone low).
- Lu-177 PSMA — Müller et al., EJNMMI Res (2019), doi:10.1186/s13550-019-0538-1 (PSMA-617
  at 18–25 h: kidneys and bladder high, liver and spleen faint, intestinal uptake rising);
  Eur Arch Med Res 34:235–242 (2018) (⁶⁸Ga-PSMA-I&T SUVmax order
  kidneys > salivary glands > bladder > small bowel > duodenum > spleen > liver > colon).
- Tc-99m MDP — Rohani et al., Asian Spine J (2020), doi:10.31616/asj.2019.0308
  (normal vertebrae SUVmean 3.9, SUVmax 6.5); Cachovan et al., EJNMMI Res 3:45 (2013),
  doi:10.1186/2191-219X-3-45 (⁹⁹ᵐTc-DPD, normal lumbar spongiosa SUV 5.9 ± 1.5 at 4 h).

The unit of each tracer is the concentration of SUV 1 for a typical administration (Lu-177:
7.4 GBq, read about 24 h later, 60–90 kg, 40–55 % of the activity still in the body; Tc-99m MDP:
740 MBq read 3 h later). Units: mm, Bq/mL, HU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from recon.data.phantoms.torso import (
    LABELS,
    Lesion,
    OrganPose,
    TorsoPhantom,
    _posed_ellipsoids,
    _spine_geometry,
    nuclide_name,
    structure_at,
)
from recon.data.phantoms.variants import (
    PhantomVariant,
    simulate_variant,
    sphere_probe_directions,
)
from recon.io.study import Study

__all__ = [
    "POSED_ORGANS",
    "TISSUE_HU_RANGES",
    "TRACERS",
    "PopulationConfig",
    "PopulationSample",
    "Tracer",
    "sample_population",
    "sample_torso",
    "simulate_sample",
]

#: Organs that get an `OrganPose` (in the torso's painting order).
POSED_ORGANS: tuple[str, ...] = (
    "bowel", "lungs", "liver", "spleen", "kidney_right", "kidney_left", "spine", "bladder",
    "heart",
)  # fmt: skip

#: Range ``(low, high)`` of the CT number (HU) of each tissue of the synthetic CT (uniform):
#: typical unenhanced values at ~120 kVp (soft-tissue background from fatty to lean; lungs from
#: expiration to inspiration; vertebrae as a mix of cancellous and cortical bone).
TISSUE_HU_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "body": (-40.0, 40.0),
        "lungs": (-880.0, -720.0),
        "liver": (45.0, 65.0),
        "spleen": (40.0, 55.0),
        "kidney_right": (25.0, 40.0),
        "kidney_left": (25.0, 40.0),
        "spine": (400.0, 800.0),
        "bladder": (0.0, 20.0),
        "heart": (30.0, 50.0),
        "bowel": (-60.0, 30.0),
        "lesion": (30.0, 60.0),
    }
)

_STRUCTURES = tuple(LABELS)  # body, lungs, ..., bowel


def _check_range(name: str, pair: Any, *, positive: bool = False, lo: float = -math.inf) -> None:
    try:
        a, b = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {pair!r}") from None
    floor = 0.0 if positive else lo
    ok = math.isfinite(a) and math.isfinite(b) and a <= b and (a > floor if positive else a >= lo)
    if not ok:
        need = "> 0" if positive else (f">= {lo}" if math.isfinite(lo) else "finite")
        raise ValueError(f"{name} must be (low, high) with low <= high, both {need}; got {pair!r}")


@dataclass(frozen=True)
class Tracer:
    """Uptake of one radiopharmaceutical: ranges per structure, lesions, references.

    Attributes
    ----------
    name : str
        Key in `TRACERS` (e.g. ``"lu177-dotatate"``).
    nuclide : str
        The nuclide (`recon.data.phantoms.NUCLIDES`).
    unit_bq_per_ml : tuple of 2 float
        Range of the concentration (Bq/mL) of uptake 1 (SUV 1 at imaging time).
    uptake : tuple of (name, low, high)
        Range of the uptake (relative to the unit, i.e. an SUV) of every structure of `LABELS`.
    lesion_uptake : tuple of 2 float
        Range of the lesions' uptake.
    lesion_sites : tuple of str
        Structures that may host a lesion (``"body"``: soft tissue outside the organs).
    references : tuple of str
        Where the ranges come from (module notes).
    """

    name: str
    nuclide: str
    unit_bq_per_ml: tuple[float, float]
    uptake: tuple[tuple[str, float, float], ...]
    lesion_uptake: tuple[float, float]
    lesion_sites: tuple[str, ...]
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nuclide", nuclide_name(self.nuclide))
        _check_range(f"{self.name}: unit_bq_per_ml", self.unit_bq_per_ml, positive=True)
        _check_range(f"{self.name}: lesion_uptake", self.lesion_uptake, positive=True)
        names = [u[0] for u in self.uptake]
        if sorted(names) != sorted(_STRUCTURES):
            raise ValueError(f"{self.name}: uptake must name {list(_STRUCTURES)}, got {names}")
        for name, lo, hi in self.uptake:
            _check_range(f"{self.name}: uptake of {name}", (lo, hi), positive=True)
        bad = [s for s in self.lesion_sites if s not in LABELS]
        if bad or not self.lesion_sites:
            raise ValueError(f"{self.name}: lesion_sites must be structures of LABELS, got {bad}")

    def uptake_range(self, name: str) -> tuple[float, float]:
        """``(low, high)`` uptake of structure ``name``."""
        for n, lo, hi in self.uptake:
            if n == name:
                return lo, hi
        raise KeyError(f"{self.name}: no uptake range for {name!r}")

    def concentration_range(self, name: str) -> tuple[float, float]:
        """``(low, high)`` concentration (Bq/mL) of structure ``name`` (or ``"lesion"``)."""
        lo, hi = self.lesion_uptake if name == "lesion" else self.uptake_range(name)
        return lo * self.unit_bq_per_ml[0], hi * self.unit_bq_per_ml[1]


def _uptake(**ranges: tuple[float, float]) -> tuple[tuple[str, float, float], ...]:
    return tuple((name, float(lo), float(hi)) for name, (lo, hi) in ranges.items())


#: The supported tracers (module notes for the sources).
TRACERS: Mapping[str, Tracer] = MappingProxyType(
    {
        "lu177-dotatate": Tracer(
            "lu177-dotatate", "Lu-177", (30e3, 60e3),
            _uptake(
                body=(0.5, 1.5), lungs=(0.3, 1.0), liver=(5.0, 13.0), spleen=(15.0, 35.0),
                kidney_right=(9.0, 20.0), kidney_left=(9.0, 20.0), spine=(1.0, 3.0),
                bladder=(2.0, 20.0), heart=(1.0, 3.0), bowel=(2.0, 6.0),
            ),
            (10.0, 45.0), ("liver", "body", "spine"),
            ("Kuyumcu et al. 2013, doi:10.1007/s12149-013-0718-4",
             "Özgüven et al. 2021, doi:10.4274/mirt.galenos.2021.37268"),
        ),
        "lu177-psma": Tracer(
            "lu177-psma", "Lu-177", (30e3, 60e3),
            _uptake(
                body=(0.3, 1.0), lungs=(0.2, 0.6), liver=(3.0, 8.0), spleen=(2.0, 8.0),
                kidney_right=(15.0, 45.0), kidney_left=(15.0, 45.0), spine=(0.5, 2.0),
                bladder=(5.0, 40.0), heart=(0.5, 2.0), bowel=(3.0, 12.0),
            ),
            (8.0, 40.0), ("spine", "body", "liver"),
            ("Müller et al. 2019, doi:10.1186/s13550-019-0538-1",
             "Eur Arch Med Res 34:235-242 (2018)"),
        ),
        "tc99m-mdp": Tracer(
            "tc99m-mdp", "Tc-99m", (5.5e3, 9e3),
            _uptake(
                body=(0.3, 1.0), lungs=(0.2, 0.6), liver=(0.4, 1.2), spleen=(0.4, 1.2),
                kidney_right=(1.5, 5.0), kidney_left=(1.5, 5.0), spine=(3.0, 7.0),
                bladder=(10.0, 60.0), heart=(0.5, 1.5), bowel=(0.3, 1.0),
            ),
            (10.0, 40.0), ("spine",),
            ("Rohani et al. 2020, doi:10.31616/asj.2019.0308",
             "Cachovan et al. 2013, doi:10.1186/2191-219X-3-45"),
        ),
    }
)  # fmt: skip


_RANGES = (
    "body_width_mm", "body_depth_mm", "body_length_mm", "lesion_diameter_mm",
    "heterogeneity_rms", "heterogeneity_mm", "scatter_fraction", "counts_per_view",
)  # fmt: skip


@dataclass(frozen=True)
class PopulationConfig:
    """The distribution of a phantom population (module notes); ranges are ``(low, high)``.

    Attributes
    ----------
    tracer : str
        A key of `TRACERS`: ``"lu177-dotatate"``, ``"lu177-psma"`` or ``"tc99m-mdp"``.
    body_width_mm, body_depth_mm, body_length_mm : tuple of 2 float
        Uniform ranges of the body's size (mm); the length must fit the field of view.
    body_taper : tuple of 2 float
        Uniform range of `TorsoPhantom.body_taper`, within (−1, 1).
    organ_scale_sd : float
        Standard deviation of the log of each organ's size factor (common to its axes).
    organ_aspect_sd : float
        Standard deviation of the log of each organ's extra per-axis factor.
    organ_shift_mm : float
        Standard deviation (mm) of each organ's shift along each axis (truncated at 2 sd).
    organ_rotation_deg : float
        Standard deviation (degrees) of each organ's rotation about each axis (truncated at 2 sd).
    lesion_count : tuple of 2 int
        Inclusive range of the number of lesions (uniform). Each lesion takes the first of 200
        candidate (place, diameter) pairs that lies entirely in its host and apart from the
        others; a lesion with none is left out.
    lesion_diameter_mm : tuple of 2 float
        Uniform range of lesion diameters (mm) of the candidates (small hosts such as the spine
        keep the smaller ones).
    necrotic_probability : float
        Probability that a lesion has a cold core (half its diameter, a tenth of its uptake).
    heterogeneity_rms, heterogeneity_mm : tuple of 2 float
        Uniform ranges of `PhantomVariant.heterogeneity_rms` (in [0, 1)) and
        ``heterogeneity_mm``.
    segmentation_error_probability : float
        Probability that the segmentation has one-voxel random shifts per organ
        (`PhantomVariant.seg_random_shift`).
    unsegmented_lesions : bool
        Lesions absent from the segmentation (the CT does not show them).
    scatter_fraction : tuple of 2 float
        Uniform range of the simulated scatter-to-primary ratio.
    counts_per_view : tuple of 2 float
        Log-uniform range of the expected counts per view.
    max_tries : int
        Redraws of the organ poses before falling back to the reference anatomy.
    """

    tracer: str = "lu177-dotatate"
    body_width_mm: tuple[float, float] = (300.0, 380.0)
    body_depth_mm: tuple[float, float] = (190.0, 250.0)
    body_length_mm: tuple[float, float] = (360.0, 390.0)
    body_taper: tuple[float, float] = (0.0, 0.2)
    organ_scale_sd: float = 0.12
    organ_aspect_sd: float = 0.06
    organ_shift_mm: float = 8.0
    organ_rotation_deg: float = 8.0
    lesion_count: tuple[int, int] = (1, 4)
    lesion_diameter_mm: tuple[float, float] = (15.0, 40.0)
    necrotic_probability: float = 0.25
    heterogeneity_rms: tuple[float, float] = (0.0, 0.2)
    heterogeneity_mm: tuple[float, float] = (20.0, 40.0)
    segmentation_error_probability: float = 0.5
    unsegmented_lesions: bool = True
    scatter_fraction: tuple[float, float] = (0.0, 0.0)
    counts_per_view: tuple[float, float] = (1e6, 4e6)
    max_tries: int = 50

    def __post_init__(self) -> None:
        if self.tracer not in TRACERS:
            raise ValueError(f"tracer must be one of {list(TRACERS)}, got {self.tracer!r}")
        for name in _RANGES:
            positive = name not in ("heterogeneity_rms", "scatter_fraction")
            _check_range(name, getattr(self, name), positive=positive, lo=0.0)
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.heterogeneity_rms[1] >= 1.0:
            raise ValueError(f"heterogeneity_rms must be below 1, got {self.heterogeneity_rms}")
        _check_range("body_taper", self.body_taper, lo=-0.99)
        if self.body_taper[1] >= 1.0:
            raise ValueError(f"body_taper must be within (-1, 1), got {self.body_taper!r}")
        object.__setattr__(self, "body_taper", tuple(float(v) for v in self.body_taper))
        count = self.lesion_count
        if (
            not isinstance(count, tuple | list)
            or len(count) != 2
            or any(isinstance(c, bool) or not isinstance(c, int | np.integer) for c in count)
            or not 0 <= count[0] <= count[1] <= 50
        ):
            raise ValueError(f"lesion_count must be (low, high) integers, 0 <= low <= high <= 50, "
                             f"got {count!r}")  # fmt: skip
        object.__setattr__(self, "lesion_count", (int(count[0]), int(count[1])))
        for name in ("organ_scale_sd", "organ_aspect_sd", "organ_shift_mm", "organ_rotation_deg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (math.isfinite(float(v)) and float(v) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.organ_rotation_deg > 20.0:
            raise ValueError(
                f"organ_rotation_deg must be <= 20 (small rotations), got {self.organ_rotation_deg}"
            )
        for name in ("necrotic_probability", "segmentation_error_probability"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        if not isinstance(self.unsegmented_lesions, bool):
            raise TypeError(f"unsegmented_lesions must be a bool, got {self.unsegmented_lesions!r}")
        tries = self.max_tries
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise ValueError(f"max_tries must be an integer >= 1, got {tries!r}")

    @property
    def tracer_info(self) -> Tracer:
        """The `Tracer` of ``tracer``."""
        return TRACERS[self.tracer]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PopulationConfig:
        """Undo `to_dict` (unknown keys raise ``ValueError`` naming them)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown population settings {unknown}; valid: {sorted(known)}")
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        return cls(**kwargs)


@dataclass(frozen=True)
class PopulationSample:
    """Member ``index`` of a population for ``seed``: everything needed to simulate it.

    Attributes
    ----------
    index, seed : int
        Which member of which population.
    tracer : str
        The tracer (`TRACERS`).
    phantom : TorsoPhantom
        Body, organ poses, bowel, concentrations (Bq/mL) and lesions.
    variant : PhantomVariant
        Heterogeneity, segmentation errors, scatter and the noise seed.
    tissue_hu : tuple of (name, HU)
        CT number of each tissue (`make_torso`'s ``tissue_hu``).
    counts_per_view : float
        Expected counts per view.
    tries : int
        Draws of the organ poses it took (``max_tries + 1``: the reference anatomy was used).
    """

    index: int
    seed: int
    tracer: str
    phantom: TorsoPhantom
    variant: PhantomVariant
    tissue_hu: tuple[tuple[str, float], ...]
    counts_per_view: float
    tries: int = 1

    @property
    def nuclide(self) -> str:
        return TRACERS[self.tracer].nuclide

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (what a study's provenance records)."""
        return {
            "index": self.index,
            "seed": self.seed,
            "tracer": self.tracer,
            "phantom": self.phantom.to_dict(),
            "variant": self.variant.to_dict(),
            "tissue_hu": dict(self.tissue_hu),
            "counts_per_view": self.counts_per_view,
            "tries": self.tries,
        }

    def anatomy_summary(self) -> dict[str, float]:
        """Body size and each organ's size factor (product of its three scales): a few numbers
        that tell anatomies apart (e.g. to stratify a split)."""
        ph = self.phantom
        out = {
            "body_width_mm": ph.body_width_mm,
            "body_depth_mm": ph.body_depth_mm,
            "body_length_mm": ph.body_length_mm,
        }
        for pose in ph.organ_poses:
            out[f"{pose.organ}_volume_factor"] = float(np.prod(pose.scale))
        return out


# -- sampling ---------------------------------------------------------------------------------

_STREAM = 15  # the population's random stream, apart from PhantomVariant's


@functools.lru_cache(maxsize=1)
def _unit_ball(n: int = 256) -> np.ndarray:
    """Fixed points ``[n, 3]`` uniform in the unit ball (for the geometry checks)."""
    g = np.random.default_rng(12345)
    v = g.normal(size=(n, 3))
    v *= (g.uniform(size=(n, 1)) ** (1 / 3)) / np.linalg.norm(v, axis=1, keepdims=True)
    v.setflags(write=False)
    return v


def _organ_points(config: TorsoPhantom, name: str) -> np.ndarray:
    """Fixed sample points ``[n, 3]`` (z, y, x mm) inside organ ``name``'s own shape."""
    u = _unit_ball()
    if name == "spine":
        sy, sx, r = _spine_geometry(config)
        half = config.body_length_mm / 2.0
        return np.stack([u[:, 0] * half * 0.9, sy + r * u[:, 1], sx + r * u[:, 2]], axis=1)
    parts = []
    for centre, semi, rot in _posed_ellipsoids(config, name):
        local = u * np.asarray(semi)
        parts.append(np.asarray(centre) + local @ np.asarray(rot).T)
    return np.concatenate(parts)


def _shares(config: TorsoPhantom) -> dict[str, tuple[float, float]]:
    """Per posed organ: (share of its points inside the body, share that keeps its label)."""
    names = [n for n in POSED_ORGANS if n != "bowel" or config.include_bowel]
    points = [_organ_points(config, name) for name in names]
    labels = structure_at(config, torch.from_numpy(np.concatenate(points)))
    out = {}
    for name, part in zip(names, torch.split(labels, [len(p) for p in points]), strict=True):
        out[name] = (
            float((part > 0).double().mean()),
            float((part == LABELS[name]).double().mean()),
        )
    return out


def _truncated_normal(rng: np.random.Generator, sd: float, size: int) -> np.ndarray:
    return np.clip(rng.normal(0.0, sd, size), -2.0 * sd, 2.0 * sd)


def _draw_poses(rng: np.random.Generator, c: PopulationConfig) -> tuple[OrganPose, ...]:
    poses = []
    for name in POSED_ORGANS:
        size = math.exp(float(_truncated_normal(rng, c.organ_scale_sd, 1)[0]))
        aspect = np.exp(_truncated_normal(rng, c.organ_aspect_sd, 3))
        scale = tuple(float(size * a) for a in aspect)
        shift = tuple(float(v) for v in _truncated_normal(rng, c.organ_shift_mm, 3))
        rotation = tuple(float(v) for v in _truncated_normal(rng, c.organ_rotation_deg, 3))
        poses.append(OrganPose(name, scale, shift, rotation))  # type: ignore[arg-type]  # 3 values
    return tuple(poses)


def sample_torso(config: PopulationConfig, seed: int, index: int) -> PopulationSample:
    """Member ``index`` of the population ``config`` for ``seed`` (module notes).

    Parameters
    ----------
    config : PopulationConfig
        The distribution.
    seed : int
        Seed of the population (>= 0).
    index : int
        Which member (>= 0); each has its own random stream ``(seed, index)``.

    Returns
    -------
    PopulationSample
    """
    if not isinstance(config, PopulationConfig):
        raise TypeError(f"config must be a PopulationConfig, got {type(config).__name__}")
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    rng = np.random.default_rng([int(seed), int(index), _STREAM])
    tracer = config.tracer_info

    def uniform(pair: tuple[float, float]) -> float:
        return float(rng.uniform(pair[0], pair[1])) if pair[1] > pair[0] else float(pair[0])

    def log_uniform(pair: tuple[float, float]) -> float:
        return float(math.exp(uniform((math.log(pair[0]), math.log(pair[1])))))

    body = TorsoPhantom(
        body_width_mm=uniform(config.body_width_mm),
        body_depth_mm=uniform(config.body_depth_mm),
        body_length_mm=uniform(config.body_length_mm),
        body_taper=uniform(config.body_taper),
        lesions=(),
        include_bowel=True,
    )
    reference = _shares(body)
    poses: tuple[OrganPose, ...] = ()
    tries = config.max_tries + 1
    for attempt in range(1, config.max_tries + 1):
        candidate = _draw_poses(rng, config)
        shares = _shares(replace(body, organ_poses=candidate))
        if all(
            inside >= min(0.97, reference[name][0]) and own >= 0.85 * reference[name][1]
            for name, (inside, own) in shares.items()
        ):
            poses, tries = candidate, attempt
            break
    anatomy = replace(body, organ_poses=poses)

    unit = uniform(tracer.unit_bq_per_ml)
    concentrations: dict[str, Any] = {
        name: log_uniform((lo, hi)) * unit for name, lo, hi in tracer.uptake
    }
    lesions = _draw_lesions(rng, config, anatomy, unit)
    phantom = replace(anatomy, lesions=lesions, **concentrations)
    variant = PhantomVariant(
        heterogeneity_rms=uniform(config.heterogeneity_rms),
        heterogeneity_mm=uniform(config.heterogeneity_mm),
        unsegmented_lesions=config.unsegmented_lesions,
        seg_random_shift=bool(rng.uniform() < config.segmentation_error_probability),
        scatter_fraction=uniform(config.scatter_fraction),
        seed=int(rng.integers(2**31 - 1)),
    )
    hu = tuple((name, round(uniform(pair), 1)) for name, pair in TISSUE_HU_RANGES.items())
    return PopulationSample(
        index=int(index), seed=int(seed), tracer=config.tracer, phantom=phantom,
        variant=variant, tissue_hu=hu, counts_per_view=log_uniform(config.counts_per_view),
        tries=tries,
    )  # fmt: skip


def _draw_lesions(
    rng: np.random.Generator, config: PopulationConfig, anatomy: TorsoPhantom, unit: float
) -> tuple[Lesion, ...]:
    """Lesions entirely inside their hosts (27 points checked) and 2 mm apart."""
    tracer = config.tracer_info
    n = int(rng.integers(config.lesion_count[0], config.lesion_count[1] + 1))
    scale = np.array([
        anatomy.body_length_mm / 380.0, anatomy.body_depth_mm / 220.0, anatomy.body_width_mm / 340.0
    ])  # fmt: skip  # REFERENCE_BODY_MM: lesion centres are stored in the reference frame
    dirs = sphere_probe_directions()
    placed: list[tuple[np.ndarray, float]] = []
    lesions: list[Lesion] = []
    half = anatomy.body_length_mm / 2.0
    tries = 200
    for k in range(n):
        host = str(rng.choice(list(tracer.lesion_sites)))
        uptake = math.exp(float(rng.uniform(*np.log(tracer.lesion_uptake))))
        necrotic = bool(rng.uniform() < config.necrotic_probability)
        # Candidate (place, diameter) pairs, all checked at once; the first that fits is taken.
        diameters = rng.uniform(*config.lesion_diameter_mm, size=tries)
        if host == "body":  # soft tissue of the abdomen, away from the body's ends
            centres = np.stack([
                rng.uniform(-0.6 * half, 0.4 * half, tries),
                rng.uniform(-0.45, 0.45, tries) * anatomy.body_depth_mm,
                rng.uniform(-0.45, 0.45, tries) * anatomy.body_width_mm,
            ], axis=1)  # fmt: skip
        else:
            points = _organ_points(anatomy, host)
            centres = points[rng.integers(len(points), size=tries)] + rng.normal(
                0.0, 3.0, (tries, 3)
            )
        probe = (
            centres[:, None, :]
            + (diameters[:, None, None] / 2.0) * np.concatenate([np.zeros((1, 3)), dirs])[None]
        )
        labels = structure_at(anatomy, torch.from_numpy(probe.reshape(-1, 3))).reshape(tries, -1)
        fits = (labels == LABELS[host]).all(dim=1).numpy()
        for centre, diameter in zip(centres[fits], diameters[fits], strict=True):
            radius = float(diameter) / 2.0
            if any(np.linalg.norm(centre - c) < radius + r + 2.0 for c, r in placed):
                continue
            placed.append((centre, radius))
            lesions.append(
                Lesion(
                    tuple(float(v) for v in centre / scale),  # type: ignore[arg-type]  # 3 values
                    float(diameter),
                    uptake * unit,
                    f"lesion_{k + 1}_{host}",
                    core_diameter_mm=0.5 * diameter if necrotic else 0.0,
                    core_concentration=0.1 * uptake * unit if necrotic else 0.0,
                )
            )
            break
    return tuple(lesions)


def sample_population(
    config: PopulationConfig, n: int, seed: int = 0, *, start: int = 0
) -> tuple[PopulationSample, ...]:
    """Members ``start … start + n − 1`` of the population (`sample_torso` for each)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    return tuple(sample_torso(config, seed, start + k) for k in range(n))


def simulate_sample(
    sample: PopulationSample,
    *,
    size: int = 64,
    fov_mm: float = 400.0,
    oversample: int = 2,
    noise: bool = True,
) -> Study:
    """An AP/PA study of a population member (`recon.data.phantoms.simulate_variant`).

    The study carries the synthetic CT (``ct_hu``) and the μ derived from it, the truth (activity,
    labels, per-structure MBq), the segmentation with the member's errors (``anatomy``), and in
    its provenance ``"population_sample"``: the member as JSON (`PopulationSample.to_dict`).

    Parameters
    ----------
    sample : PopulationSample
        The member.
    size : int
        Study grid voxels per axis.
    fov_mm : float
        Edge of the cubic field of view (mm); must hold the body length.
    oversample : int
        Simulation grid factor (no inverse crime with >= 2).
    noise : bool
        Poisson counts (seeded by the member) or the expected counts.
    """
    if not isinstance(sample, PopulationSample):
        raise TypeError(f"sample must be a PopulationSample, got {type(sample).__name__}")
    if sample.phantom.body_length_mm > fov_mm:
        raise ValueError(
            f"the body ({sample.phantom.body_length_mm:.0f} mm long) does not fit the field of "
            f"view fov_mm={fov_mm}"
        )
    study = simulate_variant(
        sample.phantom, sample.variant, size=size, fov_mm=fov_mm, oversample=oversample,
        isotope=sample.nuclide, counts_per_view=sample.counts_per_view, noise=noise,
        tissue_hu=dict(sample.tissue_hu),
    )  # fmt: skip
    provenance = dict(study.provenance)
    provenance["population_sample"] = json.dumps(sample.to_dict(), sort_keys=True)
    provenance["tracer"] = sample.tracer
    return replace(study, provenance=provenance)

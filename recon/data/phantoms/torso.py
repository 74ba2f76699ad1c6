"""A procedural torso phantom: activity, attenuation and organ labels on any image grid.

The anatomy is defined in millimetres in the patient frame of ``docs/conventions.md`` (DICOM
LPS: +x toward the patient's **left**, +y **posterior**, +z toward the **head**), centred on the
rotation axis, and evaluated on any :class:`spectproj.ImageGrid` with partial-volume
supersampling: each voxel is split into ``s × s × s`` sub-voxels, every sub-voxel takes the
structure that holds its centre, and a voxel's activity and μ are the means over its sub-voxels
(its label is the structure holding most of them). Coarse and fine grids therefore hold the same
organ volumes and the same total activity.

Units: lengths mm, μ 1/mm at the photon energy, activity concentration Bq/mL. See
``docs/phantoms.md`` for the organ table and default concentrations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType

import torch

from spectproj import (
    CollimatorResponse,
    ImageGrid,
    bone_mu_per_mm,
    hu_to_mu_per_mm,
    water_mu_per_mm,
)

__all__ = [
    "COLLIMATORS",
    "DEFAULT_TISSUE_HU",
    "ENERGY_WINDOWS_KEV",
    "FIRST_LESION_LABEL",
    "LABELS",
    "NUCLIDES",
    "ORGANS",
    "TYPICAL_SENSITIVITY_CPS_PER_MBQ",
    "Lesion",
    "OrganPose",
    "Phantom",
    "TorsoPhantom",
    "UptakeField",
    "collimator_for",
    "default_grid",
    "default_lesions",
    "make_torso",
    "nuclide_energy",
    "nuclide_name",
    "structure_at",
]

# -- nuclides --------------------------------------------------------------------------------

#: Main photopeak energy (keV) of the supported nuclides.
NUCLIDES: Mapping[str, float] = MappingProxyType({"Tc-99m": 140.5, "Lu-177": 208.4, "I-131": 364.5})
#: The usual parallel-hole collimator for each nuclide (names of ``CollimatorResponse.preset``).
COLLIMATORS: Mapping[str, str] = MappingProxyType(
    {"Tc-99m": "LEHR", "Lu-177": "MEGP", "I-131": "HE"}
)
#: A 20 % photopeak window ``(low, high)`` in keV (±10 % of the photopeak).
ENERGY_WINDOWS_KEV: Mapping[str, tuple[float, float]] = MappingProxyType(
    {name: (round(0.9 * e, 2), round(1.1 * e, 2)) for name, e in NUCLIDES.items()}
)
#: Order-of-magnitude planar sensitivity (counts/s per MBq) of one head with the collimator of
#: `COLLIMATORS` in the photopeak window. Nominal values for simulations only; calibrate your own
#: camera for quantitation.
TYPICAL_SENSITIVITY_CPS_PER_MBQ: Mapping[str, float] = MappingProxyType(
    {"Tc-99m": 90.0, "Lu-177": 10.0, "I-131": 6.0}
)


def nuclide_name(name: str) -> str:
    """Canonical name (``"Tc-99m"``, ``"Lu-177"``, ``"I-131"``) of a nuclide, any spelling.

    ``"tc99m"``, ``"Tc-99m"``, ``"TC99M"`` and ``"lu-177"`` are all accepted.

    Raises
    ------
    ValueError
        If the nuclide is not in `NUCLIDES`.
    """
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    for canonical in NUCLIDES:
        if key == "".join(ch for ch in canonical.lower() if ch.isalnum()):
            return canonical
    raise ValueError(f"unknown nuclide {name!r}; expected one of {sorted(NUCLIDES)}")


def nuclide_energy(name: str) -> float:
    """Photopeak energy (keV) of a nuclide of `NUCLIDES` (any spelling, see `nuclide_name`)."""
    return NUCLIDES[nuclide_name(name)]


def collimator_for(name: str, energy_keV: float | None = None) -> CollimatorResponse:
    """The usual collimator's response for a nuclide, at ``energy_keV`` (default its photopeak).

    Parameters
    ----------
    name : str
        Nuclide, e.g. ``"Tc-99m"`` (LEHR), ``"Lu-177"`` (MEGP), ``"I-131"`` (HE).
    energy_keV : float, optional
        Photon energy in keV; the nuclide's photopeak when ``None``.

    Returns
    -------
    spectproj.CollimatorResponse
        Depth-dependent Gaussian blur of the collimator of `COLLIMATORS`.
    """
    canonical = nuclide_name(name)
    energy = NUCLIDES[canonical] if energy_keV is None else float(energy_keV)
    return CollimatorResponse.preset(COLLIMATORS[canonical], energy)


# -- labels and the reference anatomy --------------------------------------------------------

#: Label value of each structure; lesions take ``FIRST_LESION_LABEL + k``. 0 is outside the body.
LABELS: Mapping[str, int] = MappingProxyType(
    {
        "body": 1,
        "lungs": 2,
        "liver": 3,
        "spleen": 4,
        "kidney_right": 5,
        "kidney_left": 6,
        "spine": 7,
        "bladder": 8,
        "heart": 9,
        "bowel": 10,
    }
)
FIRST_LESION_LABEL = 11

#: Typical unenhanced CT numbers (HU, at ~120 kVp) of the structures, for a synthetic CT
#: (`make_torso`'s ``tissue_hu``): ``"lesion"`` stands for every lesion; ``"spine"`` is a mix of
#: cancellous and cortical vertebral bone. Air outside the body is −1000 HU.
DEFAULT_TISSUE_HU: Mapping[str, float] = MappingProxyType(
    {
        "body": 20.0,
        "lungs": -800.0,
        "liver": 55.0,
        "spleen": 45.0,
        "kidney_right": 30.0,
        "kidney_left": 30.0,
        "spine": 600.0,
        "bladder": 10.0,
        "heart": 40.0,
        "bowel": 0.0,
        "lesion": 40.0,
    }
)

#: Reference body size (mm) for which `ORGANS` and lesion centres are given.
REFERENCE_BODY_MM: tuple[float, float, float] = (380.0, 220.0, 340.0)  # length, depth, width


@dataclass(frozen=True)
class _Ellipsoid:
    """An organ part: centre ``(z, y, x)`` and semi-axes ``(a_z, a_y, a_x)`` in mm."""

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]


#: Organ ellipsoids of the reference body (centre (z, y, x), semi-axes (a_z, a_y, a_x), mm). They
#: are painted in the order bowel (only with ``include_bowel``), lungs, liver, spleen, kidneys,
#: spine, bladder, heart, lesions: a later structure overwrites an earlier one where they overlap,
#: and every structure is clipped to the body. The spine is a bone cylinder (see `_SPINE`).
ORGANS: Mapping[str, tuple[_Ellipsoid, ...]] = MappingProxyType(
    {
        "lungs": (
            _Ellipsoid((110.0, 0.0, -75.0), (80.0, 75.0, 60.0)),  # right lung
            _Ellipsoid((110.0, 0.0, 80.0), (80.0, 70.0, 52.0)),  # left lung
        ),
        "liver": (_Ellipsoid((0.0, -15.0, -65.0), (60.0, 70.0, 80.0)),),
        "spleen": (_Ellipsoid((30.0, 45.0, 100.0), (45.0, 30.0, 30.0)),),
        "kidney_right": (_Ellipsoid((-50.0, 55.0, -65.0), (50.0, 28.0, 25.0)),),
        "kidney_left": (_Ellipsoid((-40.0, 55.0, 65.0), (50.0, 28.0, 25.0)),),
        "bladder": (_Ellipsoid((-150.0, -35.0, 0.0), (30.0, 35.0, 45.0)),),
        "heart": (_Ellipsoid((75.0, -25.0, 30.0), (45.0, 45.0, 55.0)),),
        "bowel": (
            _Ellipsoid((-85.0, -25.0, 0.0), (45.0, 45.0, 95.0)),  # small bowel, lower abdomen
            _Ellipsoid((-25.0, -50.0, 0.0), (18.0, 22.0, 105.0)),  # transverse colon
        ),
    }
)
#: Spine: a cylinder along z over the whole body length, axis (y, x) in mm and radius in mm.
_SPINE_AXIS_YX_MM = (70.0, 0.0)
_SPINE_RADIUS_MM = 18.0


@dataclass(frozen=True)
class OrganPose:
    """How one organ of a torso differs from the reference anatomy (a population's variation).

    Each ellipsoid of the organ (`ORGANS`, after scaling with the body) has its semi-axes
    multiplied by ``scale``, its centre moved by ``shift_mm``, and is rotated about its own centre
    by ``rotation_deg``. The spine (a cylinder along z) takes the shift in (y, x) and scales its
    radius by ``sqrt(scale_y · scale_x)``; it is not rotated.

    Attributes
    ----------
    organ : str
        An organ of `LABELS` (not ``"body"``).
    scale : tuple of 3 float
        Factors ``(z, y, x)`` of the semi-axes, each in (0.2, 5).
    shift_mm : tuple of 3 float
        Shift ``(z, y, x)`` of the centre in mm (patient frame).
    rotation_deg : tuple of 3 float
        Angles (degrees) of rotations about the z (axial plane), y and x axes, applied in that
        order (``R = R_z · R_y · R_x``), each in [−90, 90].
    """

    organ: str
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.organ not in LABELS or self.organ == "body":
            organs = [n for n in LABELS if n != "body"]
            raise ValueError(f"OrganPose.organ must be one of {organs}, got {self.organ!r}")
        for name, lo, hi in (
            ("scale", 0.2, 5.0), ("shift_mm", -math.inf, math.inf), ("rotation_deg", -90.0, 90.0)
        ):  # fmt: skip
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or not all(math.isfinite(v) and lo <= v <= hi for v in values):
                raise ValueError(
                    f"OrganPose.{name} ({self.organ}) must be three finite numbers (z, y, x)"
                    + ("" if math.isinf(hi) else f" in [{lo}, {hi}]")
                    + f", got {getattr(self, name)!r}"
                )
            if name == "scale" and min(values) <= lo:
                raise ValueError(f"OrganPose.scale ({self.organ}) must be > {lo}, got {values}")
            object.__setattr__(self, name, values)

    @functools.cached_property
    def _matrix(self) -> tuple[tuple[float, float, float], ...]:
        return _rotation_zyx(*self.rotation_deg)

    def rotation(self) -> tuple[tuple[float, float, float], ...]:
        """The 3 × 3 rotation matrix ``R_z · R_y · R_x`` in (z, y, x) coordinates (rows)."""
        return self._matrix


def _rotation_zyx(az: float, ay: float, ax: float) -> tuple[tuple[float, float, float], ...]:
    """``R_z(az) · R_y(ay) · R_x(ax)`` (degrees) acting on (z, y, x) column vectors."""
    a, b, c = (math.radians(v) for v in (az, ay, ax))
    # About z: mixes (y, x); about y: mixes (z, x); about x: mixes (z, y).
    rz = ((1.0, 0.0, 0.0), (0.0, math.cos(a), -math.sin(a)), (0.0, math.sin(a), math.cos(a)))
    ry = ((math.cos(b), 0.0, math.sin(b)), (0.0, 1.0, 0.0), (-math.sin(b), 0.0, math.cos(b)))
    rx = ((math.cos(c), -math.sin(c), 0.0), (math.sin(c), math.cos(c), 0.0), (0.0, 0.0, 1.0))

    def mul(p: tuple[tuple[float, ...], ...], q: tuple[tuple[float, ...], ...]) -> tuple:
        return tuple(
            tuple(sum(p[i][k] * q[k][j] for k in range(3)) for j in range(3)) for i in range(3)
        )

    return mul(mul(rz, ry), rx)


@dataclass(frozen=True)
class Lesion:
    """A spherical lesion of uniform activity.

    Attributes
    ----------
    centre_mm : tuple of float
        Centre ``(z, y, x)`` in mm in the reference body frame (the patient frame when the body has
        its default size; otherwise scaled with the body so that a lesion stays in its organ).
    diameter_mm : float
        Diameter in mm (not scaled with the body).
    concentration : float
        Activity concentration inside, in Bq/mL (replaces the organ's, it is not added).
    name : str
        Label name; ``"lesion_<k>"`` when empty.
    core_diameter_mm : float
        Diameter (mm) of a concentric cold (necrotic) core, 0 for none; less than
        ``diameter_mm``. The core belongs to the lesion's label.
    core_concentration : float
        Activity concentration (Bq/mL) inside the core (ignored without a core).
    """

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    concentration: float
    name: str = ""
    core_diameter_mm: float = 0.0
    core_concentration: float = 0.0

    def __post_init__(self) -> None:
        centre = tuple(float(c) for c in self.centre_mm)
        if len(centre) != 3 or not all(math.isfinite(c) for c in centre):
            raise ValueError(f"centre_mm must be three finite numbers (z, y, x) in mm: {centre}")
        object.__setattr__(self, "centre_mm", centre)
        if not (math.isfinite(self.diameter_mm) and self.diameter_mm > 0):
            raise ValueError(f"diameter_mm must be a positive length (mm), got {self.diameter_mm}")
        if not (math.isfinite(self.concentration) and self.concentration >= 0):
            raise ValueError(f"concentration must be >= 0 (Bq/mL), got {self.concentration}")
        object.__setattr__(self, "diameter_mm", float(self.diameter_mm))
        object.__setattr__(self, "concentration", float(self.concentration))
        core = self.core_diameter_mm
        if not (math.isfinite(core) and 0 <= core < self.diameter_mm):
            raise ValueError(
                f"core_diameter_mm must be in [0, {self.diameter_mm}) mm (the diameter), "
                f"got {core!r}"
            )
        if not (math.isfinite(self.core_concentration) and self.core_concentration >= 0):
            raise ValueError(
                f"core_concentration must be >= 0 (Bq/mL), got {self.core_concentration!r}"
            )
        object.__setattr__(self, "core_diameter_mm", float(core))
        object.__setattr__(self, "core_concentration", float(self.core_concentration))

    @property
    def volume_ml(self) -> float:
        """Volume of the sphere in mL."""
        return math.pi / 6.0 * self.diameter_mm**3 * 1e-3

    @property
    def activity_mbq(self) -> float:
        """Activity of the sphere (MBq): shell at ``concentration`` plus the core at its own."""
        core_ml = math.pi / 6.0 * self.core_diameter_mm**3 * 1e-3
        shell_ml = self.volume_ml - core_ml
        return (shell_ml * self.concentration + core_ml * self.core_concentration) * 1e-6


#: Default lesion sites (centre (z, y, x) mm, diameter mm): two in the liver, two in soft tissue.
_LESION_SITES: tuple[tuple[tuple[float, float, float], float, str], ...] = (
    ((10.0, -30.0, -80.0), 30.0, "lesion_liver_30mm"),
    ((-25.0, 10.0, -40.0), 20.0, "lesion_liver_20mm"),
    ((-90.0, -70.0, 50.0), 25.0, "lesion_soft_25mm"),
    ((-100.0, 20.0, -110.0), 15.0, "lesion_soft_15mm"),
)


def default_lesions(concentrations: tuple[float, float, float, float]) -> tuple[Lesion, ...]:
    """The four default lesions with the given concentrations (Bq/mL).

    Parameters
    ----------
    concentrations : tuple of 4 float
        For, in order: a 30 mm and a 20 mm liver lesion, a 25 mm anterior soft-tissue lesion
        (left lower abdomen) and a 15 mm soft-tissue lesion (right flank).

    Returns
    -------
    tuple of Lesion
    """
    if len(concentrations) != len(_LESION_SITES):
        raise ValueError(f"need {len(_LESION_SITES)} concentrations, got {len(concentrations)}")
    return tuple(
        Lesion(centre, diameter, c, name)
        for (centre, diameter, name), c in zip(_LESION_SITES, concentrations, strict=True)
    )


_ORGAN_NAMES = tuple(LABELS)


@dataclass(frozen=True)
class TorsoPhantom:
    """Configuration of the torso phantom: body size, concentrations (Bq/mL) and lesions.

    The default is a Tc-99m-like study (`tc99m`); `lu177_dotatate` gives a Lu-177 DOTATATE
    distribution. Change single values with `dataclasses.replace` or `with_concentrations`.

    Attributes
    ----------
    body_width_mm, body_depth_mm : float
        Left–right and front–back size of the body's elliptical cross-section at its centre (mm).
    body_length_mm : float
        Head–foot length of the body (mm), centred on z = 0.
    body_taper : float
        Relative change of the cross-section over the body length: the semi-axes scale as
        ``1 + body_taper · z / body_length_mm`` (wider at the chest than at the pelvis for > 0).
        Organs and lesion centres scale with the body size (relative to `REFERENCE_BODY_MM`).
    body, lungs, liver, spleen, kidney_right, kidney_left, spine, bladder, heart, bowel : float
        Activity concentration of each structure in Bq/mL (``body`` is the soft-tissue
        background; ``bowel`` is used only with ``include_bowel``).
    lesions : tuple of Lesion
        Spherical lesions, painted last (labels 11, 12, ...).
    include_heart : bool
        Whether to draw the heart; without it the lungs and body fill its place.
    include_bowel : bool
        Whether to draw the bowel (label 10, painted first so every other organ covers it).
    lung_density : float
        Lung density relative to water: lung μ = ``lung_density · μ_water``.
    organ_poses : tuple of OrganPose
        Per-organ size, position and rotation changes (at most one per organ); none: the
        reference anatomy scaled with the body.
    """

    body_width_mm: float = 340.0
    body_depth_mm: float = 220.0
    body_length_mm: float = 380.0
    body_taper: float = 0.1
    body: float = 1000.0
    lungs: float = 300.0
    liver: float = 5000.0
    spleen: float = 4000.0
    kidney_right: float = 8000.0
    kidney_left: float = 8000.0
    spine: float = 1000.0
    bladder: float = 10000.0
    heart: float = 2000.0
    bowel: float = 1000.0
    lesions: tuple[Lesion, ...] = field(
        default_factory=lambda: default_lesions((8000.0, 8000.0, 6000.0, 4000.0))
    )
    include_heart: bool = True
    lung_density: float = 0.3
    include_bowel: bool = False
    organ_poses: tuple[OrganPose, ...] = ()

    def __post_init__(self) -> None:
        for name in ("body_width_mm", "body_depth_mm", "body_length_mm"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive length (mm), got {v!r}")
        if not (math.isfinite(self.body_taper) and abs(self.body_taper) < 1.0):
            raise ValueError(f"body_taper must be in (-1, 1), got {self.body_taper!r}")
        for name in _ORGAN_NAMES:
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"concentration {name} must be >= 0 (Bq/mL), got {v!r}")
        if not (math.isfinite(self.lung_density) and self.lung_density >= 0):
            raise ValueError(f"lung_density must be >= 0, got {self.lung_density!r}")
        lesions = tuple(self.lesions)
        if not all(isinstance(les, Lesion) for les in lesions):
            raise TypeError("lesions must be a sequence of Lesion")
        if FIRST_LESION_LABEL + len(lesions) > 256:
            raise ValueError(f"at most {256 - FIRST_LESION_LABEL} lesions fit in uint8 labels")
        object.__setattr__(self, "lesions", lesions)
        poses = tuple(self.organ_poses)
        if not all(isinstance(p, OrganPose) for p in poses):
            raise TypeError("organ_poses must be a sequence of OrganPose")
        organs = [p.organ for p in poses]
        if len(set(organs)) != len(organs):
            raise ValueError(f"organ_poses: at most one pose per organ, got {organs}")
        object.__setattr__(self, "organ_poses", poses)
        for name in ("include_heart", "include_bowel"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def pose(self, organ: str) -> OrganPose:
        """The pose of ``organ`` (the identity when `organ_poses` has none)."""
        for p in self.organ_poses:
            if p.organ == organ:
                return p
        return OrganPose(organ)

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def tc99m(cls) -> TorsoPhantom:
        """A Tc-99m-like study (the default): liver/spleen uptake, renal and bladder activity."""
        return cls()

    @classmethod
    def lu177_dotatate(cls) -> TorsoPhantom:
        """Lu-177 DOTATATE: very hot tumours, hot kidneys and spleen, moderate liver.

        Order-of-magnitude concentrations about a day after a 7.4 GBq cycle (~1 GBq in the
        torso).
        """
        return cls(
            body=20e3,
            lungs=6e3,
            liver=150e3,
            spleen=500e3,
            kidney_right=600e3,
            kidney_left=600e3,
            spine=20e3,
            bladder=300e3,
            heart=40e3,
            bowel=40e3,
            lesions=default_lesions((2.5e6, 2.0e6, 1.5e6, 1.2e6)),
        )

    # -- helpers -----------------------------------------------------------------------------
    def with_concentrations(self, **concentrations: float) -> TorsoPhantom:
        """A copy with some organ concentrations (Bq/mL) changed, e.g. ``liver=3000.0``."""
        unknown = sorted(set(concentrations) - set(_ORGAN_NAMES))
        if unknown:
            raise ValueError(f"unknown organs {unknown}; expected some of {list(_ORGAN_NAMES)}")
        return replace(self, **concentrations)  # type: ignore[arg-type]  # names checked above

    def concentration(self, name: str) -> float:
        """Concentration (Bq/mL) of an organ (``"liver"``, ...) or a lesion by its label name."""
        if name in _ORGAN_NAMES:
            return float(getattr(self, name))
        for k, lesion in enumerate(self.lesions):
            if name == _lesion_name(lesion, k):
                return lesion.concentration
        raise KeyError(f"no structure named {name!r}")

    def label_names(self) -> dict[int, str]:
        """Label value → name of every structure this configuration draws (0, outside, omitted)."""
        drawn = {"heart": self.include_heart, "bowel": self.include_bowel}
        names = {v: k for k, v in LABELS.items() if drawn.get(k, True)}
        for k, lesion in enumerate(self.lesions):
            names[FIRST_LESION_LABEL + k] = _lesion_name(lesion, k)
        return names

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable description (lesions as dicts)."""
        d = asdict(self)
        d["lesions"] = [asdict(les) for les in self.lesions]
        d["organ_poses"] = [asdict(p) for p in self.organ_poses]
        return d


def _lesion_name(lesion: Lesion, k: int) -> str:
    return lesion.name or f"lesion_{k + 1}"


# -- the phantom -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Phantom:
    """A phantom on a grid: activity, attenuation and labels.

    Attributes
    ----------
    activity : torch.Tensor
        ``[Z, Y, X]`` activity concentration in Bq/mL (partial-volume mean per voxel).
    mu : torch.Tensor
        ``[Z, Y, X]`` linear attenuation coefficient in 1/mm at ``energy_keV``; 0 outside.
    labels : torch.Tensor
        ``[Z, Y, X]`` uint8 structure labels (0 outside the body), named by ``label_names``.
    label_names : Mapping[int, str]
        Label value → structure name.
    grid : spectproj.ImageGrid
        The grid of the three volumes.
    energy_keV : float
        Photon energy (keV) at which ``mu`` is given.
    volumes_ml : Mapping[int, float]
        Partial-volume volume (mL) of each label (more accurate than counting labelled voxels).
    activities_mbq : Mapping[int, float]
        Activity (MBq) of each label's structure, summed over its sub-voxels (so exact for the
        volume: it counts the structure's share of boundary voxels, a lesion's core, and any
        `UptakeField`), where known.
    config : TorsoPhantom or None
        The configuration it was made from (``None`` for hand-made phantoms).
    ct_hu : torch.Tensor or None
        ``[Z, Y, X]`` synthetic CT (HU, partial-volume mean per voxel, −1000 outside the body)
        when `make_torso` was given ``tissue_hu``; ``mu`` is then derived from it.
    """

    activity: torch.Tensor
    mu: torch.Tensor
    labels: torch.Tensor
    label_names: Mapping[int, str]
    grid: ImageGrid
    energy_keV: float
    volumes_ml: Mapping[int, float] = field(default_factory=dict)
    config: TorsoPhantom | None = None
    activities_mbq: Mapping[int, float] = field(default_factory=dict)
    ct_hu: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.grid.shape)
        names = ("activity", "mu", "labels") + (() if self.ct_hu is None else ("ct_hu",))
        for name in names:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"{name} must be a tensor of the grid's shape {shape}")
        if not (math.isfinite(self.energy_keV) and self.energy_keV > 0):
            raise ValueError(f"energy_keV must be positive (keV), got {self.energy_keV!r}")

    def label(self, name: str) -> int:
        """Label value of a structure name."""
        for value, n in self.label_names.items():
            if n == name:
                return int(value)
        raise KeyError(f"no structure named {name!r}; have {sorted(self.label_names.values())}")

    def mask(self, name: str) -> torch.Tensor:
        """Boolean ``[Z, Y, X]``: voxels labelled ``name``."""
        return self.labels == self.label(name)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL."""
        return self.grid.voxel_volume_mm3 * 1e-3

    @property
    def total_activity_mbq(self) -> float:
        """Total activity in the volume (MBq): Σ concentration × voxel volume."""
        return float(self.activity.double().sum()) * self.voxel_volume_ml * 1e-6


# -- grids -----------------------------------------------------------------------------------


def default_grid(size: int = 64, fov_mm: float = 400.0) -> ImageGrid:
    """A cubic grid centred on the rotation axis that covers the default torso.

    Parameters
    ----------
    size : int
        Voxels per axis: 64 gives 6.25 mm voxels, 128 gives 3.125 mm voxels.
    fov_mm : float
        Edge of the cube (mm); the default body needs about 360 × 240 × 380 mm (x, y, z).

    Returns
    -------
    spectproj.ImageGrid
        Shape ``(size, size, size)``, spacing ``fov_mm / size`` on every axis.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    step = float(fov_mm) / size
    return ImageGrid(shape=(size, size, size), spacing_mm=(step, step, step))


# -- uneven uptake ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class UptakeField:
    """Uneven uptake inside structures: a voxel's share of structure ``name`` has concentration
    ``concentration · max(0, offset + gain · field[voxel])`` with ``(offset, gain) =
    terms[name]``; other structures are uniform.

    Attributes
    ----------
    field : torch.Tensor
        ``[Z, Y, X]`` dimensionless field on the grid given to `make_torso` (e.g. a smooth
        Gaussian random field, `recon.data.phantoms.gaussian_random_field`).
    terms : Mapping[str, tuple[float, float]]
        Structure name → ``(offset, gain)``; names must be organs of `LABELS`.
    """

    field: torch.Tensor
    terms: Mapping[str, tuple[float, float]]

    def __post_init__(self) -> None:
        if not isinstance(self.field, torch.Tensor) or self.field.dim() != 3:
            raise ValueError("UptakeField.field must be a [Z, Y, X] tensor")
        terms = {}
        for name, pair in dict(self.terms).items():
            if name not in LABELS:
                raise ValueError(
                    f"UptakeField.terms: unknown structure {name!r}; expected {list(LABELS)}"
                )
            offset, gain = (float(v) for v in pair)
            if not (math.isfinite(offset) and math.isfinite(gain)):
                raise ValueError(f"UptakeField.terms[{name!r}] must be finite, got {pair!r}")
            terms[name] = (offset, gain)
        object.__setattr__(self, "terms", MappingProxyType(terms))


# -- evaluation ------------------------------------------------------------------------------

_Inside = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_Box = tuple[float, float, float, float, float, float]  # z0, z1, y0, y1, x0, x1


@dataclass(frozen=True)
class _Part:
    label: int
    box: _Box
    inside: _Inside  # (z [n,1,1], y [1,m,1], x [1,1,l]) mm -> bool [n, m, l]


def _ellipsoid_part(
    label: int, e: _Ellipsoid, scale: tuple[float, float, float], pose: OrganPose | None = None
) -> _Part:
    cz, cy, cx = (c * f for c, f in zip(e.centre_mm, scale, strict=True))
    az, ay, ax = (a * f for a, f in zip(e.semi_axes_mm, scale, strict=True))
    if pose is None or pose == OrganPose(pose.organ):
        return _ellipsoid_like(label, (cz, cy, cx), (az, ay, ax))
    centre = tuple(c + d for c, d in zip((cz, cy, cx), pose.shift_mm, strict=True))
    semi = tuple(a * f for a, f in zip((az, ay, ax), pose.scale, strict=True))
    return _rotated_ellipsoid(label, centre, semi, pose.rotation())  # type: ignore[arg-type]  # 3 values


def _spine_geometry(config: TorsoPhantom) -> tuple[float, float, float]:
    """Axis ``(y, x)`` and radius (mm) of the spine cylinder (body scaling and pose applied)."""
    sy_body = config.body_depth_mm / REFERENCE_BODY_MM[1]
    sx_body = config.body_width_mm / REFERENCE_BODY_MM[2]
    pose = config.pose("spine")
    sy = _SPINE_AXIS_YX_MM[0] * sy_body + pose.shift_mm[1]
    sx = _SPINE_AXIS_YX_MM[1] * sx_body + pose.shift_mm[2]
    r = _SPINE_RADIUS_MM * math.sqrt(sy_body * sx_body * pose.scale[1] * pose.scale[2])
    return sy, sx, r


_Posed = tuple[tuple[float, ...], tuple[float, ...], tuple[tuple[float, float, float], ...]]


def _posed_ellipsoids(config: TorsoPhantom, name: str) -> list[_Posed]:
    """``(centre (z, y, x) mm, semi-axes mm, rotation)`` of each ellipsoid of organ ``name``, as
    `make_torso` paints it (body scaling and the organ's pose applied)."""
    ref_len, ref_depth, ref_width = REFERENCE_BODY_MM
    scale = (
        config.body_length_mm / ref_len,
        config.body_depth_mm / ref_depth,
        config.body_width_mm / ref_width,
    )
    pose = config.pose(name)
    out: list[_Posed] = []
    for e in ORGANS[name]:
        centre = tuple(c * f + d for c, f, d in zip(e.centre_mm, scale, pose.shift_mm, strict=True))
        semi = tuple(a * f * g for a, f, g in zip(e.semi_axes_mm, scale, pose.scale, strict=True))
        out.append((centre, semi, pose.rotation()))
    return out


def _rotated_ellipsoid(
    label: int,
    centre: tuple[float, float, float],
    semi: tuple[float, float, float],
    rotation: tuple[tuple[float, float, float], ...],
) -> _Part:
    """An ellipsoid whose axes are the columns of ``rotation`` (in (z, y, x) coordinates)."""
    (cz, cy, cx), r = centre, rotation
    # Bounding box half-widths: h_j = sqrt(Σ_i (R_ji · a_i)²).
    h = [math.sqrt(sum((r[j][i] * semi[i]) ** 2 for i in range(3))) for j in range(3)]

    def inside(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dz, dy, dx = z - cz, y - cy, x - cx
        total = torch.zeros((), dtype=torch.float64, device=z.device)
        for i in range(3):  # local coordinate i = (Rᵀ d)_i
            local = r[0][i] * dz + r[1][i] * dy + r[2][i] * dx
            total = total + (local / semi[i]) ** 2
        return total <= 1.0

    box = (cz - h[0], cz + h[0], cy - h[1], cy + h[1], cx - h[2], cx + h[2])
    return _Part(label, box, inside)


def _ellipsoid_like(
    label: int, centre: tuple[float, float, float], semi: tuple[float, float, float]
) -> _Part:
    (cz, cy, cx), (az, ay, ax) = centre, semi

    def inside(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return ((z - cz) / az) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1.0

    return _Part(label, (cz - az, cz + az, cy - ay, cy + ay, cx - ax, cx + ax), inside)


def _parts(config: TorsoPhantom) -> tuple[_Part, list[_Part]]:
    """The body and the other structures in painting order (later ones win), in mm."""
    ref_len, ref_depth, ref_width = REFERENCE_BODY_MM
    scale = (
        config.body_length_mm / ref_len,
        config.body_depth_mm / ref_depth,
        config.body_width_mm / ref_width,
    )
    half_len = config.body_length_mm / 2.0
    ay0, ax0 = config.body_depth_mm / 2.0, config.body_width_mm / 2.0
    taper, length = config.body_taper, config.body_length_mm
    grow = 1.0 + abs(taper) / 2.0

    def body_inside(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = 1.0 + taper * z / length
        return ((y / (ay0 * s)) ** 2 + (x / (ax0 * s)) ** 2 <= 1.0) & (z.abs() <= half_len)

    body = _Part(
        LABELS["body"],
        (-half_len, half_len, -ay0 * grow, ay0 * grow, -ax0 * grow, ax0 * grow),
        body_inside,
    )
    sy, sx, r = _spine_geometry(config)

    def spine_inside(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return ((y - sy) ** 2 + (x - sx) ** 2 <= r * r) & (z.abs() <= half_len)

    spine = _Part(
        LABELS["spine"], (-half_len, half_len, sy - r, sy + r, sx - r, sx + r), spine_inside
    )

    def organ(name: str) -> list[_Part]:
        pose = config.pose(name)
        return [_ellipsoid_part(LABELS[name], e, scale, pose) for e in ORGANS[name]]

    others: list[_Part] = organ("bowel") if config.include_bowel else []
    for name in ("lungs", "liver", "spleen", "kidney_right", "kidney_left"):
        others.extend(organ(name))
    others.append(spine)
    others.extend(organ("bladder"))
    if config.include_heart:
        others.extend(organ("heart"))
    n_lesions = len(config.lesions)
    for k, lesion in enumerate(config.lesions):
        cz, cy, cx = (c * f for c, f in zip(lesion.centre_mm, scale, strict=True))
        r_les = lesion.diameter_mm / 2.0
        others.append(_ellipsoid_like(FIRST_LESION_LABEL + k, (cz, cy, cx), (r_les, r_les, r_les)))
        if lesion.core_diameter_mm > 0:
            # An internal label (folded into the lesion's in the output) with its own activity.
            r_core = lesion.core_diameter_mm / 2.0
            core_label = FIRST_LESION_LABEL + n_lesions + k
            others.append(_ellipsoid_like(core_label, (cz, cy, cx), (r_core, r_core, r_core)))
    return body, others


def structure_at(config: TorsoPhantom, points_mm: torch.Tensor) -> torch.Tensor:
    """Label of the structure holding each point (0 outside the body), as `make_torso` paints.

    Parameters
    ----------
    config : TorsoPhantom
        The phantom configuration (lesions included; a lesion's core counts as the lesion).
    points_mm : torch.Tensor
        ``[N, 3]`` points ``(z, y, x)`` in mm (patient frame).

    Returns
    -------
    torch.Tensor
        ``[N]`` int64 labels (`LABELS`, lesions ``FIRST_LESION_LABEL + k``).
    """
    p = torch.as_tensor(points_mm, dtype=torch.float64).reshape(-1, 3)
    z, y, x = p[:, 0], p[:, 1], p[:, 2]
    body, others = _parts(config)
    in_body = body.inside(z, y, x)
    out = torch.where(in_body, body.label, 0).to(torch.int64)
    n_lesions = len(config.lesions)
    for part in others:
        label = part.label
        if label >= FIRST_LESION_LABEL + n_lesions:  # a core: part of its lesion
            label -= n_lesions
        out = torch.where(part.inside(z, y, x) & in_body, label, out)
    return out


def _sub_coordinates(grid: ImageGrid, axis: int, s: int) -> torch.Tensor:
    """Sub-voxel centres (mm, float64, ascending) along an axis: ``[n·s]``, voxel-major."""
    centres = grid.centres_mm(axis)
    d = grid.spacing_mm[axis]
    offsets = ((torch.arange(s, dtype=torch.float64) + 0.5) / s - 0.5) * d
    return (centres[:, None] + offsets[None, :]).reshape(-1)


def _auto_supersample(grid: ImageGrid) -> int:
    """Sub-voxels per axis: sub-voxels of at most ~2.5 mm, between 2 and 5."""
    return int(min(5, max(2, math.ceil(max(grid.spacing_mm) / 2.5))))


def make_torso(
    grid: ImageGrid,
    energy_keV: float = 140.5,
    config: TorsoPhantom | None = None,
    *,
    supersample: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    uptake: UptakeField | None = None,
    tissue_hu: Mapping[str, float] | None = None,
) -> Phantom:
    """Evaluate the torso phantom on ``grid``.

    Parameters
    ----------
    grid : spectproj.ImageGrid
        Any grid; the default body needs about 360 × 240 × 380 mm (x, y, z) around the rotation
        axis (see `default_grid`). Parts outside the grid are simply cut off.
    energy_keV : float
        Photon energy (keV) of the attenuation map, 50–600 keV (140.5 for Tc-99m; see
        `NUCLIDES`).
    config : TorsoPhantom, optional
        Body size, concentrations and lesions; ``TorsoPhantom()`` (Tc-99m-like) by default.
    supersample : int, optional
        Sub-voxels per axis for the partial-volume means (``s³`` per voxel). Default: enough for
        sub-voxels of at most ~2.5 mm, between 2 and 5.
    dtype : torch.dtype
        Floating dtype of ``activity`` and ``mu``.
    device : torch.device or str, optional
        Device on which the phantom is evaluated and returned.
    uptake : UptakeField, optional
        Uneven uptake inside some organs (one field value per voxel of ``grid``).
    tissue_hu : Mapping[str, float], optional
        CT number (HU) of each structure (names of `LABELS`, ``"lesion"`` for every lesion;
        missing ones take `DEFAULT_TISSUE_HU`). Given, the phantom has a synthetic CT
        (``ct_hu``: partial-volume mean of the HU, −1000 outside the body) and its μ is derived
        from it by `spectproj.hu_to_mu_per_mm`, the way a patient's μ map comes from the CT
        (``lung_density`` is then unused).

    Returns
    -------
    Phantom
        ``activity`` ``[Z, Y, X]`` (Bq/mL), ``mu`` ``[Z, Y, X]`` (1/mm: soft tissue water's μ,
        lungs ``lung_density`` × water's, spine cortical bone's, 0 outside the body), ``labels``
        ``[Z, Y, X]`` (uint8, the structure holding most of the voxel), their names, the
        partial-volume volume of each label in mL and each structure's activity in MBq.
    """
    config = TorsoPhantom() if config is None else config
    if not isinstance(config, TorsoPhantom):
        raise TypeError(f"config must be a TorsoPhantom, got {type(config).__name__}")
    if not isinstance(grid, ImageGrid):
        raise TypeError(f"grid must be an ImageGrid, got {type(grid).__name__}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    s = _auto_supersample(grid) if supersample is None else int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be a positive integer, got {supersample!r}")
    mu_water = water_mu_per_mm(energy_keV)
    mu_bone = bone_mu_per_mm(energy_keV)

    names = config.label_names()
    n_lesions = len(config.lesions)
    n_labels = FIRST_LESION_LABEL + n_lesions
    # Internal labels n_labels + k: the necrotic core of lesion k (folded into it below).
    n_all = n_labels + n_lesions
    conc = torch.zeros(n_all, dtype=torch.float64)
    mu_of = torch.full((n_all,), mu_water, dtype=torch.float64)
    mu_of[0] = 0.0
    for organ, value in LABELS.items():
        conc[value] = getattr(config, organ)
    mu_of[LABELS["lungs"]] = config.lung_density * mu_water
    mu_of[LABELS["spine"]] = mu_bone
    for k, lesion in enumerate(config.lesions):
        conc[FIRST_LESION_LABEL + k] = lesion.concentration
        conc[n_labels + k] = lesion.core_concentration
    if tissue_hu is not None:  # paint HU, convert the voxel means to μ below
        unknown = sorted(set(tissue_hu) - set(DEFAULT_TISSUE_HU))
        if unknown:
            raise ValueError(
                f"tissue_hu: unknown structures {unknown}; expected some of "
                f"{list(DEFAULT_TISSUE_HU)}"
            )
        hu = {**DEFAULT_TISSUE_HU, **{k: float(v) for k, v in tissue_hu.items()}}
        bad = {k: v for k, v in hu.items() if not (math.isfinite(v) and -1000.0 <= v <= 3000.0)}
        if bad:
            raise ValueError(f"tissue_hu values must be in [-1000, 3000] HU, got {bad}")
        mu_of[0] = -1000.0
        for organ, value in LABELS.items():
            mu_of[value] = hu[organ]
        mu_of[FIRST_LESION_LABEL:] = hu["lesion"]
    cores = [k for k, les in enumerate(config.lesions) if les.core_diameter_mm > 0]
    n_paint = n_labels + (max(cores) + 1 if cores else 0)  # labels that may be painted

    modulated: list[tuple[int, float, float]] = []  # (label, offset, gain)
    if uptake is not None:
        if not isinstance(uptake, UptakeField):
            raise TypeError(f"uptake must be an UptakeField or None, got {type(uptake).__name__}")
        if tuple(uptake.field.shape) != tuple(grid.shape):
            raise ValueError(
                f"uptake.field has shape {tuple(uptake.field.shape)}, expected the grid's "
                f"{tuple(grid.shape)}"
            )
        modulated = [
            (LABELS[name], offset, gain)
            for name, (offset, gain) in uptake.terms.items()
            if LABELS[name] in names
        ]

    body, others = _parts(config)
    dev = torch.device("cpu") if device is None else torch.device(device)
    zs, ys, xs = (_sub_coordinates(grid, a, s) for a in range(3))
    nz, ny, nx = grid.shape
    activity = torch.empty(grid.shape, dtype=torch.float64, device=dev)
    mu = torch.empty(grid.shape, dtype=torch.float64, device=dev)
    labels = torch.empty(grid.shape, dtype=torch.uint8, device=dev)
    conc_d, mu_d = conc[:n_paint].to(dev), mu_of[:n_paint].to(dev)
    # Output label of each painted label (a core is its lesion's).
    label_of = torch.arange(n_paint, device=dev)
    label_of[n_labels:] -= n_lesions
    offset = torch.ones(n_paint, dtype=torch.float64, device=dev)
    gain = torch.zeros(n_paint, dtype=torch.float64, device=dev)
    for lab_m, off, gn in modulated:
        offset[lab_m], gain[lab_m] = off, gn
    count_total = torch.zeros(n_paint, dtype=torch.float64, device=dev)
    activity_total = torch.zeros(n_paint, dtype=torch.float64, device=dev)  # Σ concentration

    slab = max(1, (1 << 22) // (s**3 * ny * nx))
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        zsub = zs[k0 * s : k1 * s]
        sub_dtype = torch.uint8 if n_paint <= 256 else torch.int16
        sub = torch.zeros((zsub.numel(), ny * s, nx * s), dtype=sub_dtype, device=dev)
        _paint(sub, body, zsub, ys, xs, dev, clip=None)
        for part in others:
            _paint(sub, part, zsub, ys, xs, dev, clip=body)
        g = None
        if modulated and uptake is not None:  # modulated is empty without uptake
            g = uptake.field[k0:k1].to(device=dev, dtype=torch.float64)
        a, m, lab, n_sub, a_sub = _voxel_means(sub, s, conc_d, mu_d, label_of, offset, gain, g)
        activity[k0:k1], mu[k0:k1], labels[k0:k1] = a, m, lab.to(torch.uint8)
        count_total += n_sub
        activity_total += a_sub

    # Fold the cores into their lesions.
    counts = torch.zeros(n_labels, dtype=torch.float64, device=dev).index_add_(
        0, label_of, count_total
    )
    totals = torch.zeros(n_labels, dtype=torch.float64, device=dev).index_add_(
        0, label_of, activity_total
    )
    sub_ml = grid.voxel_volume_mm3 / s**3 * 1e-3
    volumes = {lab: float(counts[lab]) * sub_ml for lab in names}
    activities = {lab: float(totals[lab]) * sub_ml * 1e-6 for lab in names}
    ct = None
    if tissue_hu is not None:
        ct = mu.to(dtype)
        mu = hu_to_mu_per_mm(mu, energy_keV)
    return Phantom(
        activity=activity.to(dtype),
        mu=mu.to(dtype),
        ct_hu=ct,
        labels=labels,
        label_names=MappingProxyType(dict(names)),
        grid=grid,
        energy_keV=float(energy_keV),
        volumes_ml=MappingProxyType(volumes),
        config=config,
        activities_mbq=MappingProxyType(activities),
    )


def _voxel_means(
    sub: torch.Tensor,
    s: int,
    conc: torch.Tensor,
    mu: torch.Tensor,
    label_of: torch.Tensor,
    offset: torch.Tensor,
    gain: torch.Tensor,
    field: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-voxel means of the sub-voxels ``sub`` ``[k·s, Y·s, X·s]`` (painted labels).

    Returns activity and μ ``[k, Y, X]`` (float64: means over the sub-voxels, the activity of a
    sub-voxel being ``conc[l] · max(0, offset[l] + gain[l] · field[voxel])``), the majority
    output label ``[k, Y, X]`` (``label_of`` of the painted labels; ties go to the later one),
    and per painted label the number of sub-voxels and the sum of their activities ``[L]``.
    Pure voxels (one label) are handled per voxel, only mixed ones per sub-voxel.
    """
    n_paint = conc.numel()
    nk, ny, nx = (n // s for n in sub.shape)
    if s == 1:
        blocks = sub.reshape(-1, 1)
        lo = blocks[:, 0].long()
        mixed = lo[:0]
    else:
        blocks = sub.reshape(nk, s, ny, s, nx, s).permute(0, 2, 4, 1, 3, 5).reshape(-1, s**3)
        low = blocks.min(dim=1).values
        mixed = (blocks.max(dim=1).values != low).nonzero().squeeze(1)
        lo = low.long()
    g = None if field is None else field.reshape(-1)
    act = conc[lo] if g is None else conc[lo] * (offset[lo] + gain[lo] * g).clamp_min(0.0)
    mu_v = mu[lo]
    folds = bool((label_of != torch.arange(n_paint, device=label_of.device)).any())
    out = label_of[lo] if folds else lo.clone()
    n_sub = torch.zeros(n_paint, dtype=torch.float64, device=sub.device)
    a_sub = torch.zeros(n_paint, dtype=torch.float64, device=sub.device)
    pure: torch.Tensor | slice = slice(None)
    if mixed.numel():
        pure = torch.ones_like(lo, dtype=torch.bool)
        pure[mixed] = False
        b = blocks[mixed].long()  # [M, s³]
        cb = conc[b]
        if g is not None:
            cb = cb * (offset[b] + gain[b] * g[mixed, None]).clamp_min(0.0)
        act[mixed] = cb.mean(dim=1)
        mu_v[mixed] = mu[b].mean(dim=1)
        lb = label_of[b]
        n_out = int(label_of.max()) + 1
        index = torch.arange(b.shape[0], device=b.device)[:, None] * n_out + lb
        counts = torch.bincount(index.reshape(-1), minlength=b.shape[0] * n_out)
        out[mixed] = (n_out - 1) - counts.reshape(-1, n_out).flip(1).argmax(dim=1)
        n_sub += torch.bincount(b.reshape(-1), minlength=n_paint)
        a_sub += torch.bincount(b.reshape(-1), weights=cb.reshape(-1), minlength=n_paint)
    lp = lo[pure]
    n_sub += torch.bincount(lp, minlength=n_paint).double() * s**3
    a_sub += torch.bincount(lp, weights=act[pure], minlength=n_paint) * s**3
    shape = (nk, ny, nx)
    return act.reshape(shape), mu_v.reshape(shape), out.reshape(shape), n_sub, a_sub


def _paint(
    sub: torch.Tensor,
    part: _Part,
    zsub: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    device: torch.device,
    clip: _Part | None,
) -> None:
    """Write ``part.label`` into the sub-voxels of ``sub`` inside ``part`` (and inside ``clip``)."""
    z0, z1, y0, y1, x0, x1 = part.box
    ranges = []
    for coords, lo, hi in ((zsub, z0, z1), (ys, y0, y1), (xs, x0, x1)):
        i0 = int(torch.searchsorted(coords, torch.tensor(lo, dtype=torch.float64), right=False))
        i1 = int(torch.searchsorted(coords, torch.tensor(hi, dtype=torch.float64), right=True))
        if i1 <= i0:
            return
        ranges.append((i0, i1))
    (a0, a1), (b0, b1), (c0, c1) = ranges
    z = zsub[a0:a1].to(device)[:, None, None]
    y = ys[b0:b1].to(device)[None, :, None]
    x = xs[c0:c1].to(device)[None, None, :]
    inside = part.inside(z, y, x)
    if clip is not None:
        inside = inside & clip.inside(z, y, x)
    view = sub[a0:a1, b0:b1, c0:c1]
    view[inside] = part.label

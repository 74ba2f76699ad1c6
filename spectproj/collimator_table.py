"""Collimators as data: the shipped table, a user's own TOML file, and DICOM name matching.

A `CollimatorSpec` holds what a parallel-hole collimator *is* (hole diameter, hole length, septal
thickness, hole shape; the camera's intrinsic resolution; a septal penetration model) and turns
it into the depth-dependent blur the projector applies (`CollimatorSpec.response`, a
`spectproj.CollimatorResponse`) at a photon energy:

- geometric resolution ``FWHM_g(d) = D·(L_eff + d + b)/L_eff`` with ``L_eff = L − 2/μ_lead(E)``
  (Anger's effective length; Metz et al. 1980; Cherry, Sorenson & Phelps, *Physics in Nuclear
  Medicine*, ch. 14), d the distance from the collimator face, b ``back_distance_mm`` (collimator
  back face to the image plane in the crystal), μ_lead from NIST XCOM (`spectproj.physics`);
- intrinsic resolution ``FWHM_i(E) = intrinsic_fwhm_mm·sqrt(intrinsic_energy_keV/E)`` added in
  quadrature (the 1/√E scaling of an Anger camera's position statistics);
- ``penetration = "geometric"``: a fraction ``exp(−μ_lead·w)`` of the counts, with
  ``w = t·L/(2D + t)`` the shortest path through one septum (the septal-thickness design rule
  ``t = 2Dw/(L − w)`` of Cherry, Sorenson & Phelps solved for w), goes into a wide tail: the
  geometric response of a hole 2D + t wide (a hole, its neighbour and the septum between them)
  over the full length L. An estimate, not a fitted line-spread function: see docs/limits.md.

The table (``spectproj/data/collimators.toml``, rendered in docs/collimators.md) lists real
collimators with their sources; `table` loads it, `lookup` finds a row by name or alias
(case-, space- and punctuation-insensitive), `load_spec_file` reads a user's TOML file,
`collimator_spec` takes either (``--collimator NAME|FILE.toml``), `match_dicom_collimator` maps
DICOM CollimatorGridName/CollimatorType to a row. Every error is one line naming the file, the key,
what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from spectproj.collimator import FWHM_PER_SIGMA, CollimatorResponse
from spectproj.physics import lead_mu_per_mm

__all__ = [
    "HOLE_SHAPES",
    "PENETRATION_MODELS",
    "SPEC_KEYS",
    "CollimatorSpec",
    "CollimatorTable",
    "collimator_spec",
    "load_spec_file",
    "lookup",
    "match_dicom_collimator",
    "normalise_name",
    "table",
    "table_markdown",
]

HOLE_SHAPES = ("hex", "round", "square")
PENETRATION_MODELS = ("none", "geometric")
#: The keys of a user's collimator TOML file (and of the table's rows, which add a few more).
SPEC_KEYS = (
    "name",
    "hole_diameter_mm",
    "hole_length_mm",
    "septal_thickness_mm",
    "hole_shape",
    "intrinsic_fwhm_mm",
    "intrinsic_energy_keV",
    "back_distance_mm",
    "penetration",
    "vendor",
    "camera",
    "source",
)
_TABLE_ONLY_KEYS = ("aliases", "intrinsic_source", "note")
_REQUIRED = ("name", "hole_diameter_mm", "hole_length_mm", "septal_thickness_mm")
_TEXT_KEYS = ("name", "vendor", "camera", "source")
_DEFAULT_INTRINSIC_ENERGY_KEV = 140.0


def _bad(key: str, expected: str, actual: object) -> ValueError:
    return ValueError(f"key '{key}': expected {expected}, got {actual!r}")


def _number(key: str, value: object, *, positive: bool) -> float:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        raise _bad(key, "a positive number (mm)" if positive else "a number >= 0", value)
    return float(value)  # type: ignore[arg-type]  # checked to be int or float above


@dataclass(frozen=True)
class CollimatorSpec:
    """A parallel-hole collimator and its camera, in mm.

    Parameters
    ----------
    name:
        Its code (e.g. ``"SY-ME"``); non-empty.
    hole_diameter_mm, hole_length_mm:
        Hole diameter D and hole (bore) length L (mm), > 0.
    septal_thickness_mm:
        Septal thickness t (mm), >= 0.
    hole_shape:
        ``"hex"``, ``"round"`` or ``"square"`` (recorded; the Gaussian response uses D alone).
    intrinsic_fwhm_mm:
        The camera's intrinsic resolution (FWHM, mm) at ``intrinsic_energy_keV``; 0: none
        modelled.
    intrinsic_energy_keV:
        The photon energy (keV) of ``intrinsic_fwhm_mm``, > 0 (default 140).
    back_distance_mm:
        b: from the collimator's back face to the image plane in the crystal (mm), >= 0.
    penetration:
        ``"none"`` or ``"geometric"`` (the septal-penetration tail of the module docstring).
    vendor, camera, source:
        Free text: who makes it, for which camera, where the numbers come from.
    """

    name: str
    hole_diameter_mm: float
    hole_length_mm: float
    septal_thickness_mm: float
    hole_shape: str = "hex"
    intrinsic_fwhm_mm: float = 0.0
    intrinsic_energy_keV: float = _DEFAULT_INTRINSIC_ENERGY_KEV
    back_distance_mm: float = 0.0
    penetration: str = "none"
    vendor: str = ""
    camera: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        for key in _TEXT_KEYS:
            value = getattr(self, key)
            if not isinstance(value, str):
                raise _bad(key, "text", value)
        if not self.name.strip():
            raise _bad("name", "a non-empty name", self.name)
        for key in ("hole_diameter_mm", "hole_length_mm", "intrinsic_energy_keV"):
            object.__setattr__(self, key, _number(key, getattr(self, key), positive=True))
        for key in ("septal_thickness_mm", "intrinsic_fwhm_mm", "back_distance_mm"):
            object.__setattr__(self, key, _number(key, getattr(self, key), positive=False))
        if self.hole_shape not in HOLE_SHAPES:
            raise _bad("hole_shape", f"one of {list(HOLE_SHAPES)}", self.hole_shape)
        if self.penetration not in PENETRATION_MODELS:
            raise _bad("penetration", f"one of {list(PENETRATION_MODELS)}", self.penetration)
        if self.penetration == "geometric" and self.septal_thickness_mm == 0:
            raise _bad(
                "septal_thickness_mm", "a thickness > 0 (mm) with penetration 'geometric'", 0.0
            )

    # -- physics --------------------------------------------------------------------------------
    def effective_length_mm(self, energy_keV: float) -> float:
        """``L_eff = L − 2/μ_lead(E)`` (mm); raises if the holes are transparent at ``E``."""
        effective = self.hole_length_mm - 2.0 / lead_mu_per_mm(energy_keV)
        if effective <= 0:
            raise ValueError(
                f"collimator {self.name}: a {self.hole_length_mm:g} mm hole is transparent at "
                f"{energy_keV:g} keV (effective length <= 0); choose a collimator for this energy"
            )
        return effective

    def geometric_fwhm_mm(self, distance_mm: float, energy_keV: float) -> float:
        """``D·(L_eff + d + b)/L_eff`` (mm) at ``distance_mm`` from the collimator face."""
        effective = self.effective_length_mm(energy_keV)
        return self.hole_diameter_mm * (effective + distance_mm + self.back_distance_mm) / effective

    def intrinsic_fwhm_at(self, energy_keV: float) -> float:
        """The intrinsic resolution (FWHM, mm) at ``energy_keV``: scaled by ``sqrt(E0/E)``."""
        if not (math.isfinite(energy_keV) and energy_keV > 0):
            raise ValueError(f"energy_keV must be a positive energy (keV), got {energy_keV!r}")
        return self.intrinsic_fwhm_mm * math.sqrt(self.intrinsic_energy_keV / energy_keV)

    def penetration_fraction(self, energy_keV: float) -> float:
        """Fraction of the counts in the penetration tail at ``energy_keV`` (0 without one)."""
        if self.penetration == "none":
            return 0.0
        d, t, length = self.hole_diameter_mm, self.septal_thickness_mm, self.hole_length_mm
        shortest_path_mm = t * length / (2.0 * d + t)
        return math.exp(-lead_mu_per_mm(energy_keV) * shortest_path_mm)

    def response(self, energy_keV: float) -> CollimatorResponse:
        """The depth-dependent blur of this collimator and camera at ``energy_keV``."""
        effective = self.effective_length_mm(energy_keV)
        d = self.hole_diameter_mm
        base = d / FWHM_PER_SIGMA  # σ at the face when b = 0 (as `from_holes`, bit for bit)
        sigma0 = base * (1.0 + self.back_distance_mm / effective)
        fraction = self.penetration_fraction(energy_keV)
        tail0 = tail_slope = 0.0
        if fraction > 0:
            wide = 2.0 * d + self.septal_thickness_mm
            length = self.hole_length_mm
            tail0 = wide * (length + self.back_distance_mm) / length / FWHM_PER_SIGMA
            tail_slope = wide / length / FWHM_PER_SIGMA
        return CollimatorResponse(
            sigma0_mm=sigma0,
            slope=base / effective,
            intrinsic_sigma_mm=self.intrinsic_fwhm_at(energy_keV) / FWHM_PER_SIGMA,
            tail_fraction=fraction,
            tail_sigma0_mm=tail0,
            tail_slope=tail_slope,
        )

    # -- records --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field by name (the keys of a collimator TOML file)."""
        return dataclasses.asdict(self)

    def with_penetration(self, model: str) -> CollimatorSpec:
        """The same collimator with another penetration model (``"none"``/``"geometric"``)."""
        return dataclasses.replace(self, penetration=model)

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, extra_keys: tuple[str, ...] = ()
    ) -> CollimatorSpec:
        """A spec from a mapping of `SPEC_KEYS` (``extra_keys`` are allowed and ignored).

        Raises ``ValueError("key 'K': expected ..., got ...")`` for an unknown or missing key or
        a bad value.
        """
        allowed = (*SPEC_KEYS, *extra_keys)
        for key in values:
            if key not in allowed:
                raise ValueError(f"unknown key '{key}': expected one of {list(allowed)}")
        for key in _REQUIRED:
            if key not in values:
                raise ValueError(f"key '{key}': expected a value, got none (it is required)")
        return cls(**{k: v for k, v in values.items() if k in SPEC_KEYS})


def normalise_name(name: str) -> str:
    """A name for matching: upper case, letters and digits only (``"sy-me"`` → ``"SYME"``)."""
    return re.sub(r"[^0-9A-Z]", "", name.upper())


@dataclass(frozen=True)
class CollimatorTable:
    """The rows of the shipped table (`table`) with their sources.

    Parameters
    ----------
    rows:
        The collimators, in file order.
    aliases:
        Row name → its other names (as written in the file).
    sources:
        Source key → ``{"title": ..., "url": ...}``.
    row_sources:
        Row name → ``{"source": key, "intrinsic_source": key or ""}``.
    notes:
        Row name → free text (may be empty).
    """

    rows: tuple[CollimatorSpec, ...]
    aliases: Mapping[str, tuple[str, ...]]
    sources: Mapping[str, Mapping[str, str]]
    row_sources: Mapping[str, Mapping[str, str]]
    notes: Mapping[str, str]

    @functools.cached_property
    def _index(self) -> dict[str, CollimatorSpec]:
        index: dict[str, CollimatorSpec] = {}
        for row in self.rows:
            for key in (row.name, *self.aliases.get(row.name, ())):
                index[normalise_name(key)] = row
        return index

    def find(self, name: str) -> CollimatorSpec | None:
        """The row whose name or alias matches ``name`` (case/space/punctuation-insensitive)."""
        return self._index.get(normalise_name(name))

    @property
    def names(self) -> list[str]:
        """The row names, in file order."""
        return [row.name for row in self.rows]


def parse_table(text: str, where: str = "collimators.toml") -> CollimatorTable:
    """Parse and check a collimator table (the format of ``spectproj/data/collimators.toml``).

    Every row must validate as a `CollimatorSpec`, name a known source (and a known
    ``intrinsic_source`` when it gives ``intrinsic_fwhm_mm``), and names and aliases must be
    unique. Raises ``ValueError("<where>: ...")``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{where}: not valid TOML ({error})") from None
    sources = data.get("sources", {})
    rows_data = data.get("collimator", [])
    if not isinstance(sources, dict) or not isinstance(rows_data, list) or not rows_data:
        raise ValueError(f"{where}: expected [sources.*] tables and [[collimator]] rows")
    rows: list[CollimatorSpec] = []
    aliases: dict[str, tuple[str, ...]] = {}
    row_sources: dict[str, dict[str, str]] = {}
    notes: dict[str, str] = {}
    seen: dict[str, str] = {}
    for i, item in enumerate(rows_data):
        label = f"{where}: collimator {i + 1} ({item.get('name', '?')})"
        try:
            spec = CollimatorSpec.from_mapping(item, extra_keys=_TABLE_ONLY_KEYS)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{label}: {error}") from None
        source = item.get("source", "")
        if source not in sources:
            raise ValueError(
                f"{label}: key 'source': expected one of {list(sources)}, got {source!r}"
            )
        intrinsic_source = item.get("intrinsic_source", "")
        if spec.intrinsic_fwhm_mm > 0 and intrinsic_source not in sources:
            raise ValueError(
                f"{label}: key 'intrinsic_source': expected one of {list(sources)} for its "
                f"intrinsic_fwhm_mm, got {intrinsic_source!r}"
            )
        names = item.get("aliases", [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{label}: key 'aliases': expected a list of names, got {names!r}")
        for key in (spec.name, *names):
            norm = normalise_name(key)
            if not norm:
                raise ValueError(f"{label}: name or alias {key!r} has no letters or digits")
            if norm in seen:
                raise ValueError(f"{label}: name or alias {key!r} is already used by {seen[norm]}")
            seen[norm] = spec.name
        rows.append(spec)
        aliases[spec.name] = tuple(names)
        row_sources[spec.name] = {"source": source, "intrinsic_source": intrinsic_source}
        notes[spec.name] = str(item.get("note", ""))
    return CollimatorTable(tuple(rows), aliases, sources, row_sources, notes)


@functools.lru_cache(maxsize=1)
def table() -> CollimatorTable:
    """The collimator table shipped with spectproj (``spectproj/data/collimators.toml``)."""
    text = resources.files("spectproj").joinpath("data/collimators.toml").read_text("utf-8")
    return parse_table(text, "spectproj/data/collimators.toml")


def lookup(name: str) -> CollimatorSpec:
    """The table's row called ``name`` (or one of its aliases); ``ValueError`` if none."""
    row = table().find(name) if isinstance(name, str) else None
    if row is None:
        raise ValueError(
            f"unknown collimator {name!r}; expected a name of the collimator table "
            f"({', '.join(table().names)}; docs/collimators.md) or a FILE.toml"
        )
    return row


def load_spec_file(path: str | os.PathLike[str]) -> CollimatorSpec:
    """A user's collimator from a TOML file of `SPEC_KEYS` (docs/collimators.md).

    Raises ``ValueError("<file>: key 'K': expected ..., got ...")`` for a missing file, bad
    TOML, an unknown or missing key, or a bad value.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{p}: cannot read the collimator file ({error.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{p}: not valid TOML ({error})") from None
    try:
        return CollimatorSpec.from_mapping(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{p}: {error}") from None


def collimator_spec(text: str | os.PathLike[str] | CollimatorSpec) -> CollimatorSpec:
    """``--collimator NAME|FILE.toml``: a table name or alias, a TOML file, or a spec as is."""
    if isinstance(text, CollimatorSpec):
        return text
    if isinstance(text, os.PathLike) or str(text).lower().endswith(".toml"):
        return load_spec_file(text)
    return lookup(str(text))


def match_dicom_collimator(
    grid_name: str | None, collimator_type: str | None = None
) -> tuple[CollimatorSpec | None, str]:
    """Match DICOM CollimatorGridName (0018,1180) / CollimatorType (0018,1181) to the table.

    Returns ``(row, note)``: the row and how it was found, or ``None`` and why not (no name, not
    a parallel-hole collimator, a name the table does not know). The note is one line.
    """
    kind = (collimator_type or "").strip().upper()
    if kind and kind not in ("PARA", "UNKN"):
        return None, (
            f"CollimatorType {kind} is not a parallel-hole collimator (PARA); spect models "
            "parallel holes only"
        )
    name = (grid_name or "").strip()
    if not name:
        return None, "the file gives no CollimatorGridName"
    row = table().find(name)
    if row is None:
        return None, (
            f"CollimatorGridName {name!r} is not in the collimator table (docs/collimators.md)"
        )
    return row, f"CollimatorGridName {name!r} matched table row {row.name}"


def table_markdown(rows: CollimatorTable | None = None) -> str:
    """The table as Markdown (docs/collimators.md shows exactly this): rows, then sources."""
    t = table() if rows is None else rows
    lines = [
        "| name | vendor | camera | hole D (mm) | length L (mm) | septa t (mm) | shape | "
        "intrinsic FWHM (mm @ keV) | other names | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in t.rows:
        intrinsic = (
            f"{row.intrinsic_fwhm_mm:g} @ {row.intrinsic_energy_keV:g}"
            if row.intrinsic_fwhm_mm > 0
            else "–"
        )
        src = t.row_sources[row.name]
        cited = f"[{src['source']}](#source-{src['source']})"
        if src["intrinsic_source"]:
            cited += f", intrinsic: [{src['intrinsic_source']}](#source-{src['intrinsic_source']})"
        note = t.notes.get(row.name, "")
        other = ", ".join(t.aliases.get(row.name, ())) or "–"
        lines.append(
            f"| {row.name} | {row.vendor} | {row.camera}{f' ({note})' if note else ''} | "
            f"{row.hole_diameter_mm:g} | {row.hole_length_mm:g} | {row.septal_thickness_mm:g} | "
            f"{row.hole_shape} | {intrinsic} | {other} | {cited} |"
        )
    lines.append("")
    lines.append("Sources:")
    lines.append("")
    for key, source in t.sources.items():
        lines.append(
            f'- <a id="source-{key}"></a>**{key}**: {source.get("title", "")} '
            f"<{source.get('url', '')}>"
        )
    return "\n".join(lines) + "\n"

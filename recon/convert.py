"""Glue between the importers (`recon.importers`) and the study/result files of `recon.io`.

Each function assembles one `Study` (or `Result`) from what an importer returns, so that the
``spect convert`` commands stay thin. The choices made here (which grid, where the CT sits, how
spacings are ordered) are documented in ``docs/cli.md`` ("spect convert").

Functions
---------
read_pienerf_entries
    A pieNeRF manifest, leniently: a bad row is an entry with an error, not a failure.
convert_pienerf_manifest
    Every row of a pieNeRF manifest into ``OUT/<patient_id>.h5``; a failed row is an outcome
    with its error (``spect convert pienerf``).
pienerf_study_file_name, spacing_to_array_order, canonical_isotope
    Small helpers of the pieNeRF conversion.
interfile_study
    Interfile projections + an attenuation volume (μ or CT) → study.
find_patient15_folder
    The folder of the shared patient-15 phantom, given it or a folder above it.
detector_grid, ct_on_grid, dicom_planar_study, dicom_tomo_study
    DICOM NM planar or tomographic projections (+ a CT series → μ) → study.
file_kind, nifti_volume, tidy_nifti_grid, snap_grid, nifti_result
    Study/result volumes → NIfTI, and a NIfTI volume → result file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recon.importers.pienerf import PIENERF_COLUMNS, PieNeRFRow
from recon.io.study import Acquisition, Result, Study
from spectproj import ImageGrid, hu_to_mu_per_mm

__all__ = [
    "NIFTI_DATASETS",
    "PATIENT15_SUBFOLDER",
    "ManifestEntry",
    "PienerfOutcome",
    "canonical_isotope",
    "convert_pienerf_manifest",
    "ct_on_grid",
    "detector_grid",
    "dicom_planar_study",
    "dicom_tomo_study",
    "file_kind",
    "find_patient15_folder",
    "interfile_study",
    "nifti_result",
    "nifti_volume",
    "pienerf_study_file_name",
    "read_pienerf_entries",
    "snap_grid",
    "spacing_to_array_order",
    "tidy_nifti_grid",
]

PathLike = str | os.PathLike[str]

#: Where the patient-15 phantom lies in the shared data folder (``../shared``).
PATIENT15_SUBFOLDER = Path("data") / "lu177_dotatate_patient15"

#: Volumes ``spect convert to-nifti`` can write, and where they live in a study or result file.
NIFTI_DATASETS: Mapping[str, str] = {
    "activity": "result /activity, or a study's /truth/activity",
    "truth": "/truth/activity (study)",
    "mu": "/attenuation/mu (study)",
    "ct": "/attenuation/ct_hu (study)",
    "labels": "/truth/labels (study)",
}

# Patient direction letter -> our axis (0 = z, 1 = y, 2 = x).
_AXIS_OF_LETTER = {"S": 0, "I": 0, "P": 1, "A": 1, "L": 2, "R": 2}


# -- small helpers ------------------------------------------------------------------------------
def canonical_isotope(name: str | None) -> str | None:
    """A nuclide name as the library spells it (``"lu177"`` → ``"Lu-177"``) when it is one of
    `recon.data.phantoms.NUCLIDES`, else the text as given (stripped); ``None`` for no name."""
    from recon.data.phantoms import nuclide_name

    if name is None or not str(name).strip():
        return None
    try:
        return nuclide_name(name)
    except ValueError:
        return str(name).strip()


def spacing_to_array_order(
    spacing_zyx: Sequence[float], orientation: str
) -> tuple[float, float, float]:
    """Voxel sizes ``(dz, dy, dx)`` along the patient axes, reordered as the array's axes.

    Parameters
    ----------
    spacing_zyx
        Sizes (mm) along z (head–feet), y (anterior–posterior) and x (right–left).
    orientation
        Per array axis (array order), the patient direction in which its index increases: one
        letter each of S/I, A/P, L/R (e.g. ``"PIL"``).

    Returns
    -------
    tuple of float
        The size along each array axis, in array order.

    Raises
    ------
    ValueError
        ``orientation`` is not three letters naming each patient axis once, or a size is not a
        positive length.
    """
    code = str(orientation).strip().upper()
    axes = [_AXIS_OF_LETTER.get(c) for c in code]
    if len(code) != 3 or None in axes or sorted(axes) != [0, 1, 2]:  # type: ignore[type-var]  # None excluded just before
        raise ValueError(
            f"orientation must be three letters, one of R/L, A/P, S/I each (e.g. 'PIL'), "
            f"got {orientation!r}"
        )
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive lengths (mm), got {tuple(spacing_zyx)}")
    return tuple(spacing[a] for a in axes)  # type: ignore[return-value,index]  # 3 axes, no None (checked above)


def pienerf_study_file_name(patient_id: str) -> str:
    """``<patient_id>.h5``, refusing ids that are not a plain file name.

    Raises
    ------
    ValueError
        The id is empty, starts with a dot, or holds a path separator or a control character.
    """
    pid = str(patient_id).strip()
    bad = not pid or pid.startswith(".") or any(c in pid for c in "/\\") or not pid.isprintable()
    if bad:
        raise ValueError(f"patient_id {patient_id!r} cannot be used as a file name")
    return f"{pid}.h5"


# -- pieNeRF ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestEntry:
    """One data line of a pieNeRF manifest.

    Attributes
    ----------
    line
        Line number in the CSV (the header is line 1).
    patient_id
        The id as written (may be empty when the row is broken).
    row
        The row with its paths resolved, or ``None`` when ``error`` says why not.
    error
        A one-line reason why the row cannot be converted, or ``None``.
    """

    line: int
    patient_id: str
    row: PieNeRFRow | None
    error: str | None = None

    @property
    def label(self) -> str:
        """The patient id, or ``"line N"`` for a row without one."""
        return self.patient_id or f"line {self.line}"


def read_pienerf_entries(csv_path: PathLike) -> list[ManifestEntry]:
    """Read a pieNeRF manifest, keeping going past bad rows.

    Same rules as `recon.importers.read_pienerf_manifest` (columns
    ``patient_id, ap_path, pa_path, ct_path[, act_path]``, paths relative to the CSV's folder,
    blank lines skipped), but a row with an empty required cell, a repeated patient id or a
    missing file becomes an entry with an ``error`` instead of failing the whole manifest.

    Raises
    ------
    ValueError
        A required column is missing, or the manifest holds no data rows.
    OSError
        The CSV cannot be read.
    """
    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in PIENERF_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; expected "
                f"{', '.join(PIENERF_COLUMNS)}[, act_path], got {columns}"
            )
        entries: list[ManifestEntry] = []
        seen: set[str] = set()
        for line, record in enumerate(reader, start=2):
            cells = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k}
            if not any(cells.values()):
                continue
            pid = cells.get("patient_id", "")
            entries.append(ManifestEntry(line, pid, *_pienerf_row(path, line, cells, seen)))
            seen.add(pid)
    if not entries:
        raise ValueError(f"{path}: the manifest has no data rows")
    return entries


def _pienerf_row(
    path: Path, line: int, cells: Mapping[str, str], seen: set[str]
) -> tuple[PieNeRFRow | None, str | None]:
    for column in PIENERF_COLUMNS:
        if not cells.get(column):
            return None, f"{path}: line {line}: empty {column}"
    pid = cells["patient_id"]
    if pid in seen:
        return None, f"{path}: line {line}: patient_id {pid!r} repeats"
    files: dict[str, Path] = {}
    for column in (*PIENERF_COLUMNS[1:], "act_path"):
        if not cells.get(column):
            continue
        file = Path(cells[column])
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            return None, f"{path}: line {line}: {column} {file} not found"
        files[column] = file
    row = PieNeRFRow(
        pid, files["ap_path"], files["pa_path"], files["ct_path"], files.get("act_path"), path
    )
    return row, None


#: Errors of one pieNeRF row that make it a failed outcome while the other rows go on.
_ROW_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, EOFError)


@dataclass(frozen=True)
class PienerfOutcome:
    """What became of one row of a pieNeRF manifest (`convert_pienerf_manifest`).

    Attributes
    ----------
    label
        The patient id, or ``"line N"``.
    output
        The study file written, or ``None`` on failure.
    grid_shape
        ``(Z, Y, X)`` of the study's grid (``None`` on failure).
    total_counts
        Sum of the study's projections (``None`` on failure).
    error
        One line on why the row failed, or ``None``.
    """

    label: str
    output: Path | None = None
    grid_shape: tuple[int, int, int] | None = None
    total_counts: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def convert_pienerf_manifest(
    manifest: PathLike,
    out_dir: PathLike,
    *,
    spacing_mm: Sequence[float],
    energy_keV: float,
    ct_orientation: str = "PIL",
    pa_mirrored: bool = True,
    ct_is_mu: bool = False,
    ct_mu_unit: Literal["1/mm", "1/cm"] = "1/mm",
    isotope: str | None = None,
    overwrite: bool = False,
    provenance: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[PienerfOutcome]:
    """Convert every row of a pieNeRF manifest into ``out_dir/<patient_id>.h5``.

    Each row's ap.npy and pa.npy (counts), ct.npy (HU, or μ with ``ct_is_mu``) and optional
    act.npy (truth) become a study (`recon.importers.pienerf_row_to_study`) written atomically.
    A row that fails (a bad cell, a missing file, bad data, an existing output without
    ``overwrite``) is an outcome with its error; the others go on.

    Parameters
    ----------
    manifest, out_dir:
        The CSV, and the folder of the studies (created if missing).
    spacing_mm:
        Voxel size (mm) along the CT array's axes in ``ct_orientation`` order (z, y, x of ours
        after `spacing_to_array_order`).
    energy_keV, ct_orientation, pa_mirrored, ct_is_mu, ct_mu_unit:
        As `recon.importers.pienerf_row_to_study` (docs/importers.md).
    isotope:
        Isotope to record (any spelling `canonical_isotope` knows).
    overwrite:
        Replace existing study files.
    provenance:
        Entries added to each study's provenance (e.g. the command line).
    progress:
        Called with ``"Converting <label>..."`` before each row.

    Returns
    -------
    list of PienerfOutcome
        One per data row, in the manifest's order.

    Raises
    ------
    ValueError
        A bad orientation or spacing, a manifest without the required columns or rows.
    NotADirectoryError
        ``out_dir`` is a file.
    """
    from recon.importers import pienerf_row_to_study
    from recon.io.hdf5 import write_study

    array_spacing = spacing_to_array_order(spacing_mm, ct_orientation)  # checks the orientation
    entries = read_pienerf_entries(manifest)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    name = canonical_isotope(isotope)
    outcomes: list[PienerfOutcome] = []
    for entry in entries:
        try:
            if entry.error is not None:
                raise ValueError(entry.error)
            assert entry.row is not None
            target = folder / pienerf_study_file_name(entry.patient_id)
            if not overwrite and os.path.lexists(target):
                raise FileExistsError(f"{target}: already exists; use --force to overwrite it")
            if progress is not None:
                progress(f"Converting {entry.label}...")
            study = pienerf_row_to_study(
                entry.row,
                spacing_mm=array_spacing,
                energy_keV=energy_keV,
                ct_orientation=ct_orientation,
                pa_mirrored=pa_mirrored,
                ct_is_mu=ct_is_mu,
                ct_mu_unit=ct_mu_unit,
                isotope=name,
            )
            if provenance:
                study = dataclasses.replace(study, provenance={**study.provenance, **provenance})
            write_study(target, study, overwrite=overwrite)
        except _ROW_ERRORS as error:
            message = " ".join(str(error).split()) or type(error).__name__
            outcomes.append(PienerfOutcome(entry.label, error=message))
            continue
        outcomes.append(
            PienerfOutcome(
                entry.label,
                target,
                study.grid.shape,
                float(study.projections.sum(dtype=np.float64)),
            )
        )
    return outcomes


# -- Interfile ----------------------------------------------------------------------------------
def interfile_study(
    projections_header: PathLike,
    *,
    energy_keV: float,
    mu_header: PathLike | None = None,
    ct_header: PathLike | None = None,
    ct_offset_hu: float = 0.0,
    mu_unit: Literal["1/mm", "1/cm"] = "1/mm",
    orientation: str = "LAI",
    isotope: str | None = None,
    radius_mm: float | None = None,
) -> Study:
    """A study from Interfile projections and, optionally, an attenuation volume.

    Parameters
    ----------
    projections_header
        Interfile projections (``process status := acquired`` or ``number of projections``):
        their views, angles, pixel size and ``Radius`` make the acquisition.
    energy_keV
        Photon energy (keV) of the projections; μ is at this energy.
    mu_header
        A μ volume (unit ``mu_unit``) on the reconstruction grid.
    ct_header
        A CT volume in HU + ``ct_offset_hu`` (e.g. 1000 for files that store HU + 1000); μ is
        computed with `spectproj.hu_to_mu_per_mm`. At most one of ``mu_header`` and ``ct_header``.
    ct_offset_hu
        Subtracted from the CT file's values to give HU.
    mu_unit
        Unit of the values of ``mu_header``.
    orientation
        Patient directions of the volume's column, row and slice indices (`read_interfile`).
    isotope
        Recorded in the acquisition (`canonical_isotope`).
    radius_mm
        Rotation radius (mm); default the projections' ``Radius``, if any.

    Returns
    -------
    Study
        The grid is the volume's (centred on the rotation axis). Without a volume it covers the
        detector: voxels of (row height, bin width, bin width), rows × bins × bins of them
        (`detector_grid`).

    Raises
    ------
    ValueError
        Both volumes given, a file of the wrong kind (volume/projections), bad values.
    """
    from recon.importers.interfile import read_interfile

    if mu_header is not None and ct_header is not None:
        raise ValueError("give either a μ volume (--mu) or a CT (--ct), not both")
    if mu_unit not in ("1/mm", "1/cm"):
        raise ValueError(f"mu_unit must be '1/mm' or '1/cm', got {mu_unit!r}")
    projections = read_interfile(projections_header, orientation=orientation)
    if projections.kind != "projections" or projections.angles_deg is None:
        raise ValueError(
            f"{projections_header}: holds a volume, not projections (process status, number of "
            "projections)"
        )
    radius = radius_mm if radius_mm is not None else projections.radius_mm
    acquisition = Acquisition(
        angles_deg=projections.angles_deg,
        detector_shape=projections.data.shape[1:],
        pixel_size_mm=projections.spacing_mm,  # type: ignore[arg-type]  # Acquisition checks the length
        energy_keV=float(energy_keV),
        radius_mm=radius,
        isotope=canonical_isotope(isotope),
    )
    provenance = {
        "source": "Interfile",
        "projections_file": str(projections_header),
        "volume_orientation": str(orientation).strip().upper(),
    }
    mu = ct_hu = None
    volume_header = mu_header if mu_header is not None else ct_header
    if volume_header is None:
        grid = detector_grid(acquisition.detector_shape, acquisition.pixel_size_mm)
        provenance["grid"] = "covers the detector (no attenuation volume given)"
    else:
        volume = read_interfile(volume_header, orientation=orientation)
        if volume.kind != "volume":
            raise ValueError(f"{volume_header}: holds projections, not a volume")
        grid = volume.grid()
        values = volume.data.astype(np.float32)
        if mu_header is not None:
            mu = values / np.float32(10.0) if mu_unit == "1/cm" else values
            if not np.all(np.isfinite(mu)) or np.any(mu < 0):
                raise ValueError(f"{mu_header}: μ must be finite and >= 0")
            provenance["mu_file"] = f"{mu_header} ({mu_unit})"
        else:
            ct_hu = values - np.float32(ct_offset_hu)
            if not np.all(np.isfinite(ct_hu)):
                raise ValueError(f"{ct_header}: the CT holds NaN/Inf values")
            mu = hu_to_mu_per_mm(ct_hu, acquisition.energy_keV).astype(np.float32)
            provenance["ct_file"] = f"{ct_header} (HU + {ct_offset_hu:g})"
        provenance["grid"] = f"the volume's ({volume_header}), centred on the rotation axis"
    counts = projections.data.astype(np.float32)
    return Study(
        projections=np.ascontiguousarray(counts),
        acquisition=acquisition,
        grid=grid,
        mu_per_mm=None if mu is None else np.ascontiguousarray(mu, dtype=np.float32),
        ct_hu=None if ct_hu is None else np.ascontiguousarray(ct_hu, dtype=np.float32),
        provenance=provenance,
    )


# -- patient 15 ---------------------------------------------------------------------------------
def find_patient15_folder(folder: PathLike) -> Path:
    """The folder holding ``patient15_LuDOTATATE_{attn,src}.h33``: ``folder`` itself, or its
    ``lu177_dotatate_patient15`` or ``data/lu177_dotatate_patient15`` subfolder (so the shared
    data folder works too).

    Raises
    ------
    FileNotFoundError
        None of them holds the two headers.
    """
    from recon.importers.patient15 import ATTN_HEADER, SRC_HEADER

    base = Path(folder)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such folder")
    for candidate in (base, base / PATIENT15_SUBFOLDER.name, base / PATIENT15_SUBFOLDER):
        if (candidate / ATTN_HEADER).is_file() and (candidate / SRC_HEADER).is_file():
            return candidate
    raise FileNotFoundError(
        f"{base}: holds neither {ATTN_HEADER} and {SRC_HEADER} nor a "
        f"{PATIENT15_SUBFOLDER} folder with them"
    )


# -- DICOM --------------------------------------------------------------------------------------
def _count(extent_mm: float, size_mm: float) -> int:
    """Voxels of ``size_mm`` needed to cover ``extent_mm`` (a whole number within 1e-6 is exact)."""
    return max(1, math.ceil(extent_mm / size_mm - 1e-6))


def detector_grid(
    detector_shape: Sequence[int],
    pixel_size_mm: Sequence[float],
    *,
    spacing_mm: float | None = None,
    transverse_size: int | None = None,
) -> ImageGrid:
    """A grid centred on the rotation axis and the detector's centre row that covers the detector.

    Parameters
    ----------
    detector_shape, pixel_size_mm
        ``(rows, bins)`` and ``(row height, bin width)`` (mm).
    spacing_mm
        Isotropic voxel size (mm); default (row height, bin width, bin width), so that voxels line
        up with the detector pixels.
    transverse_size
        Voxels along y and x; default enough to cover the detector's width.

    Returns
    -------
    ImageGrid
        Z voxels covering the detector's height, Y = X voxels covering its width (or
        ``transverse_size``), offset 0.
    """
    rows, bins = (int(n) for n in detector_shape)
    row_mm, bin_mm = (float(p) for p in pixel_size_mm)
    if spacing_mm is not None and not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm must be a positive length (mm), got {spacing_mm!r}")
    dz, dxy = (spacing_mm, spacing_mm) if spacing_mm is not None else (row_mm, bin_mm)
    if transverse_size is not None and transverse_size < 1:
        raise ValueError(f"transverse_size must be >= 1, got {transverse_size}")
    nz = _count(rows * row_mm, dz)
    nxy = transverse_size if transverse_size is not None else _count(bins * bin_mm, dxy)
    return ImageGrid((nz, nxy, nxy), (dz, dxy, dxy))


def ct_on_grid(
    ct_source: PathLike | Sequence[PathLike],
    grid: ImageGrid,
    energy_keV: float,
    *,
    axis_position_mm: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """μ (1/mm) at ``energy_keV`` and the CT (HU) on ``grid``, from a DICOM CT series.

    Parameters
    ----------
    ct_source
        A folder of CT slices (or a list of slice files): `recon.importers.read_ct_series`.
    grid
        The SPECT grid.
    energy_keV
        Photon energy of μ (keV).
    axis_position_mm
        ``(z, y, x)`` LPS position (mm), in the CT's frame, of the grid's origin (the rotation
        axis at the detector's centre row). Default: the centre of the CT volume, i.e. the CT is
        centred in the SPECT field of view (the NM importers read no table or detector position).

    Returns
    -------
    mu, hu, facts
        ``grid.shape`` float32 μ (CT averaged per SPECT voxel, 0 outside the CT) and HU (−1000
        outside), and provenance entries.
    """
    from recon.importers.dicom import ct_to_mu_on_grid, read_ct_series, resample_to_grid

    hu, geometry = read_ct_series(ct_source)
    given = geometry.to_image_grid().offset_mm if axis_position_mm is None else axis_position_mm
    how = "the CT volume's centre" if axis_position_mm is None else "given"
    values = tuple(float(v) for v in given)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"axis position must be three finite numbers (mm), got {values}")
    position = (values[0], values[1], values[2])
    mu = ct_to_mu_on_grid(hu, geometry, grid, energy_keV, axis_position_lps_mm=position)
    hu_grid = resample_to_grid(hu, geometry, grid, fill=-1000.0, axis_position_lps_mm=position)
    source = ct_source if isinstance(ct_source, (str, os.PathLike)) else geometry.source
    facts = {
        "ct_source": str(source),
        "ct_shape_zyx": "×".join(str(n) for n in geometry.shape),
        "ct_spacing_mm_zyx": "×".join(f"{d:g}" for d in geometry.spacing_mm),
        "ct_alignment": (
            "grid origin (rotation axis, detector centre row) at LPS (z, y, x) = "
            f"({', '.join(f'{v:.6g}' for v in position)}) mm of the CT: {how}"
        ),
    }
    return mu, hu_grid, facts


def dicom_planar_study(
    sources: PathLike | Sequence[PathLike],
    *,
    ct: PathLike | None = None,
    grid_size: int | None = None,
    spacing_mm: float | None = None,
    energy_keV: float | None = None,
    duration_s: float | None = None,
    sensitivity_cps_per_mbq: float | None = None,
    axis_position_mm: Sequence[float] | None = None,
    scatter: str = "auto",
    scatter_smoothing_mm: float = 0.0,
    dew_k: float | None = None,
    reference_time: str | None = "acquisition",
    half_life_s: float | None = None,
    dead_time_s: float | None = None,
    dead_time_model: str = "paralyzable",
    count_rate_cps: float | None = None,
) -> Study:
    """An AP/PA study from DICOM NM planar images (+ a CT series for μ), with every energy
    window, a scatter background from them, and the decay and dead-time corrections.

    Parameters
    ----------
    sources
        One multi-frame file, two files, or a folder (`recon.importers.read_nm_planar`).
    ct
        CT series folder; μ and HU on the grid come from it (`ct_on_grid`).
    grid_size, spacing_mm
        `detector_grid`'s ``transverse_size`` and ``spacing_mm``.
    energy_keV
        Overrides the photon energy found in the files (isotope photopeak / window centre).
    duration_s, sensitivity_cps_per_mbq
        Time per view (s; default the files' static frame duration) and planar sensitivity
        (cps/MBq); with both, `Acquisition.count_scale` is physical.
    axis_position_mm
        Where the grid sits in the CT (`ct_on_grid`).
    scatter
        ``"auto"`` (TEW when the file has scatter windows on both sides of the photopeak
        window, else none), ``"tew"``, ``"tew-lower"`` (TEW with the lower window only, a
        triangle), ``"dew"`` (needs ``dew_k``) or ``"none"``: `recon.corrections.scatter`.
    scatter_smoothing_mm
        Gaussian FWHM (mm) smoothing the scatter estimate; 0 for none.
    dew_k
        The DEW factor k.
    reference_time
        Activities are decay-corrected to it: ``"acquisition"`` (default; the acquisition start,
        so only the decay during the frame is corrected), ``"injection"``, an ISO 8601 date-time
        or ``None``/``"none"`` (no decay correction): `recon.corrections.timing.reference_time_of`.
        Without a half-life or an acquisition time in the file, ``"acquisition"`` silently means
        none (nothing to correct with); the others raise.
    half_life_s
        Overrides the half-life of the file (RadionuclideHalfLife) or the nuclide table.
    dead_time_s, dead_time_model, count_rate_cps
        Dead time τ (s) of the camera (``None``: no correction), ``"paralyzable"`` or
        ``"non-paralyzable"``, and the observed count rate (cps); default rate: the counts of
        every window of the file per view, over the duration (mean of the views), a lower bound
        of the camera's whole-spectrum rate.

    Returns
    -------
    Study
        β = 0 (anterior), 180 (posterior), μ and HU if a CT is given, the other windows, the
        scatter background and its source.
    """
    from recon.corrections.scatter import estimate_scatter, find_scatter_windows
    from recon.corrections.timing import reference_time_of
    from recon.importers.dicom import nm_planar_study, read_nm_planar

    if scatter not in ("auto", "tew", "tew-lower", "dew", "none"):
        raise ValueError(f"scatter must be one of auto, tew, tew-lower, dew, none; got {scatter!r}")

    source: PathLike | Sequence[PathLike] = sources
    if not isinstance(sources, (str, os.PathLike)) and len(sources) == 1:
        source = sources[0]  # one file or one folder
    images = read_nm_planar(source, energy_keV=energy_keV)
    grid = detector_grid(
        images.images.shape[1:],
        images.pixel_size_mm,
        spacing_mm=spacing_mm,
        transverse_size=grid_size,
    )
    energy = energy_keV if energy_keV is not None else images.energy_keV
    mu = hu = None
    facts: dict[str, str] = {"grid": "covers the detector, centred on the rotation axis"}
    if ct is not None:
        if energy is None:
            raise ValueError(
                f"{images.sources[0]}: the photon energy is unknown (no isotope or energy window "
                "in the file); give --energy-kev"
            )
        mu, hu, more = ct_on_grid(ct, grid, energy, axis_position_mm=axis_position_mm)
        facts.update(more)
    study = nm_planar_study(
        images,
        grid,
        mu,
        ct_hu=hu,
        energy_keV=energy_keV,
        duration_s=duration_s,
        sensitivity_cps_per_mbq=sensitivity_cps_per_mbq,
        provenance=facts,
        half_life_s=half_life_s,
    )
    acq = study.acquisition
    changes: dict[str, Any] = {}
    choice = "none" if reference_time is None else str(reference_time)
    if choice == "acquisition" and (acq.half_life_s is None or acq.acquisition_start is None):
        choice = "none"
    reference = reference_time_of(
        choice, acquisition_start=acq.acquisition_start, injection_time=images.injection_time
    )
    if reference is not None:
        if acq.half_life_s is None:
            raise ValueError(
                f"a decay correction to {reference} needs the half-life: the file has none and "
                f"the isotope {acq.isotope!r} is not in the table; give --half-life-h"
            )
        if acq.acquisition_start is None:
            raise ValueError(
                f"a decay correction to {reference} needs the acquisition time: "
                f"{images.sources[0]} has no AcquisitionDate/AcquisitionTime"
            )
        changes["reference_time"] = reference
    if dead_time_s is not None:
        rate = count_rate_cps
        if rate is None:
            if acq.duration_s is None:
                raise ValueError(
                    "the dead-time correction needs the count rate: give --count-rate-cps or "
                    "the duration (--duration-s)"
                )
            per_view = np.asarray(images.images, dtype=np.float64).sum(axis=(1, 2))
            for w in images.windows:
                per_view = per_view + np.asarray(w.counts, dtype=np.float64).sum(axis=(1, 2))
            rate = float(per_view.mean()) / acq.duration_s
        changes.update(
            dead_time_s=dead_time_s, dead_time_model=dead_time_model, observed_rate_cps=rate
        )
    if changes:
        study = dataclasses.replace(study, acquisition=dataclasses.replace(acq, **changes))
    if scatter != "none":
        window = acq.energy_window_keV
        lower, upper = find_scatter_windows(window, study.windows) if window else (None, None)
        if scatter == "auto":
            scatter = "tew" if lower is not None and upper is not None else "none"
        if scatter != "none":
            study = estimate_scatter(
                study,
                "dew" if scatter == "dew" else "tew",
                k=dew_k,
                smoothing_fwhm_mm=scatter_smoothing_mm,
                use_upper=scatter != "tew-lower",
            )
    return study


def dicom_tomo_study(
    path: PathLike,
    *,
    ct: PathLike | None = None,
    grid_size: int | None = None,
    spacing_mm: float | None = None,
    energy_keV: float | None = None,
    duration_s: float | None = None,
    sensitivity_cps_per_mbq: float | None = None,
    axis_position_mm: Sequence[float] | None = None,
) -> Study:
    """A tomographic study from a DICOM NM TOMO file (+ a CT series for μ).

    Parameters are those of `dicom_planar_study`; the projections, angles, radius, energy and
    frame duration come from `recon.importers.read_nm_tomo_details`.
    """
    from recon.importers.dicom import read_nm_tomo_details

    tomo = read_nm_tomo_details(path, energy_keV=energy_keV)
    acquisition = tomo.acquisition
    changes: dict[str, Any] = {}
    if duration_s is not None:
        changes["duration_s"] = duration_s
    if sensitivity_cps_per_mbq is not None:
        changes["sensitivity_cps_per_mbq"] = sensitivity_cps_per_mbq
    acquisition = dataclasses.replace(acquisition, **changes)
    grid = detector_grid(
        acquisition.detector_shape,
        acquisition.pixel_size_mm,
        spacing_mm=spacing_mm,
        transverse_size=grid_size,
    )
    facts = {
        "source": "DICOM NM tomographic",
        "file": tomo.source,
        "detectors": json.dumps(sorted({int(d) for d in tomo.detectors})),
        "grid": "covers the detector, centred on the rotation axis",
    }
    mu = hu = None
    if ct is not None:
        mu, hu, more = ct_on_grid(
            ct, grid, acquisition.energy_keV, axis_position_mm=axis_position_mm
        )
        facts.update(more)
    return Study(
        projections=np.ascontiguousarray(tomo.projections, dtype=np.float32),
        acquisition=acquisition,
        grid=grid,
        mu_per_mm=mu,
        ct_hu=hu,
        provenance=facts,
    )


# -- NIfTI --------------------------------------------------------------------------------------
def file_kind(path: PathLike) -> Literal["study", "result"] | None:
    """``"study"`` or ``"result"`` from an HDF5 file's root ``format`` attribute, else ``None``
    (not HDF5, unreadable, or neither kind)."""
    import h5py

    from recon.io.hdf5 import RESULT_FORMAT, STUDY_FORMAT

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("format")
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    kinds: dict[str, Literal["study", "result"]] = {STUDY_FORMAT: "study", RESULT_FORMAT: "result"}
    return kinds.get(str(value))


def nifti_volume(path: PathLike, dataset: str = "activity") -> tuple[np.ndarray, ImageGrid, str]:
    """A volume of a study or result file, for `recon.importers.write_nifti`.

    Parameters
    ----------
    path
        Study or result file.
    dataset
        One of `NIFTI_DATASETS`: ``activity`` (a result's activity, a study's truth activity),
        ``truth``, ``mu``, ``ct`` or ``labels`` (study files only).

    Returns
    -------
    volume, grid, description
        ``[Z, Y, X]`` array, its grid, and a few words saying what it is (with its unit).

    Raises
    ------
    ValueError
        Unknown dataset, a dataset the file does not hold, or an invalid file.
    """
    from recon.io import read_result, read_study

    if dataset not in NIFTI_DATASETS:
        raise ValueError(
            f"unknown dataset {dataset!r}; expected one of {', '.join(NIFTI_DATASETS)}"
        )
    if file_kind(path) == "result":
        if dataset != "activity":
            raise ValueError(
                f"{path}: a result file holds only the activity; --dataset {dataset} needs a "
                "study file"
            )
        result = read_result(path)
        return result.activity, result.grid, f"{result.method} activity ({result.activity_unit})"
    study = read_study(path)  # also reports files that are neither kind
    choices: dict[str, tuple[np.ndarray | None, str, str]] = {
        "activity": (study.truth_activity, "/truth/activity", f"truth ({study.activity_unit})"),
        "truth": (study.truth_activity, "/truth/activity", f"truth ({study.activity_unit})"),
        "mu": (
            study.mu_per_mm,
            "/attenuation/mu",
            f"μ at {study.acquisition.energy_keV:g} keV (1/mm)",
        ),
        "ct": (study.ct_hu, "/attenuation/ct_hu", "CT (HU)"),
        "labels": (study.labels, "/truth/labels", "labels"),
    }
    volume, where, what = choices[dataset]
    if volume is None:
        raise ValueError(f"{path}: the study has no {where} (--dataset {dataset})")
    return volume, study.grid, what


def tidy_nifti_grid(grid: ImageGrid) -> ImageGrid:
    """Undo the float32 rounding of a NIfTI affine: each spacing becomes the shortest decimal of
    its float32 value (3.9063000679 → 3.9063) and each offset is rounded to 0.001 mm."""
    spacing = tuple(float(str(np.float32(s))) for s in grid.spacing_mm)
    offset = tuple(round(float(o), 3) + 0.0 for o in grid.offset_mm)
    return ImageGrid(grid.shape, spacing, offset)  # type: ignore[arg-type]  # three axes in, three out


def snap_grid(grid: ImageGrid, reference: ImageGrid, *, atol_mm: float = 0.01) -> ImageGrid:
    """``reference`` when ``grid`` is the same grid up to ``atol_mm`` (NIfTI stores float32).

    Raises
    ------
    ValueError
        The shapes differ, or a spacing or offset differs by more than ``atol_mm``.
    """

    def text(g: ImageGrid) -> str:
        shape = "×".join(str(n) for n in g.shape)
        spacing = "×".join(f"{d:.6g}" for d in g.spacing_mm)
        offset = ", ".join(f"{o:.6g}" for o in g.offset_mm)
        return f"{shape} voxels of {spacing} mm, offset ({offset}) mm"

    same = tuple(grid.shape) == tuple(reference.shape) and all(
        abs(a - b) <= atol_mm
        for a, b in zip(
            (*grid.spacing_mm, *grid.offset_mm),
            (*reference.spacing_mm, *reference.offset_mm),
            strict=True,
        )
    )
    if not same:
        raise ValueError(f"the volume's grid ({text(grid)}) is not the study's ({text(reference)})")
    return reference


def nifti_result(
    path: PathLike,
    *,
    method: str = "external",
    activity_unit: str | None = None,
    study_file: PathLike | None = None,
    clip_negative: bool = False,
) -> Result:
    """A NIfTI volume (another tool's reconstruction) as a `Result`.

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz`` (`recon.importers.read_nifti`: any axis-aligned affine).
    method
        Name recorded as the result's method.
    activity_unit
        Unit of the values; default the study's (with ``study_file``), else ``"Bq/mL"``.
    study_file
        A study on whose grid the volume should be: the grid is checked (`snap_grid`) and
        replaced by the study's exact grid, and the study is recorded.
    clip_negative
        Set negative values (e.g. from FBP) to 0 instead of refusing them.

    Raises
    ------
    ValueError
        Not 3D, oblique, NaN/Inf or negative values (without ``clip_negative``), a grid that is
        not the study's.
    """
    from recon.importers.nifti import read_nifti
    from recon.io import read_study

    volume, grid = read_nifti(path)
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(
        volume.dtype, np.complexfloating
    ):
        raise ValueError(f"{path}: values of type {volume.dtype} are not real numbers")
    activity = np.ascontiguousarray(volume, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(activity)))
    if bad:
        raise ValueError(f"{path}: {bad} NaN/Inf value(s)")
    negative = int(np.count_nonzero(activity < 0))
    if negative and not clip_negative:
        raise ValueError(
            f"{path}: {negative} negative value(s) (min {float(activity.min()):.6g}); an activity "
            "is >= 0: use --clip-negative to set them to 0"
        )
    activity = np.maximum(activity, np.float32(0.0))
    grid = tidy_nifti_grid(grid)
    unit = activity_unit
    if study_file is not None:
        study = read_study(study_file)
        grid = snap_grid(grid, study.grid)
        unit = unit or study.activity_unit
    parameters: dict[str, object] = {
        "source_file": os.fspath(path),
        "converted_by": "spect convert nifti-to-result",
        "negative_values_clipped": negative if clip_negative else 0,
    }
    return Result(
        activity=activity,
        grid=grid,
        method=method,
        parameters=parameters,
        activity_unit=unit or "Bq/mL",
        study_file=None if study_file is None else os.fspath(study_file),
    )

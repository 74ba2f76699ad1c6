"""The pieNeRF prototype's input: a CSV manifest of ``.npy`` AP/PA images and CT volumes.

Manifest columns: ``patient_id, ap_path, pa_path, ct_path[, act_path]``, paths relative to the
CSV's folder. ``ap.npy`` and ``pa.npy`` are 2D count images, ``ct.npy`` (and ``act.npy``) 3D
arrays in the prototype's own axis order. The mapping to our frame (``docs/importers.md``):

- ``ct_orientation`` names, per CT array axis in array order, the patient direction in which the
  index increases. Default ``"PIL"``: axis 0 is the anterior–posterior (depth) axis with index 0
  anterior, the side from which the prototype's data generator attenuates ``ap.npy`` (the
  prototype's own AP camera, at +z of its cube, attenuates from the other end); axis 1 runs
  head → feet (image rows, head at the top); axis 2 runs patient right → left (an anterior view
  as seen facing the patient).
- The images are the volume summed along its depth axis with the two other axes kept in array
  order, so a point at CT index ``(a0, a1, a2)`` appears in pixel ``(a1, a2)`` of ``ap.npy``.
- ``pa.npy`` is mirror-corrected (``pa_mirrored=True``): stored in the same orientation as
  ``ap.npy``. The importer un-mirrors it into our PA bin order (r = −x).

`read_pienerf_entries` reads a manifest line by line (a bad row is an entry with its error),
`read_pienerf_manifest` refuses any bad row, `pienerf_row_to_study` builds one row's `Study`, and
`convert_pienerf_manifest` writes every row as ``OUT/<patient_id>.h5`` (``spect convert pienerf``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from recon.io._common import canonical_isotope
from recon.io.interfile import reorient_spacing, reorient_to_zyx, spacing_to_array_order
from recon.io.limits import check_array_size
from recon.io.study import Acquisition, Study
from recon.io.text import read_text
from spectproj import ImageGrid, ParallelGeometry, hu_to_mu_per_mm

__all__ = [
    "PIENERF_COLUMNS",
    "PieNeRFEntry",
    "PieNeRFRow",
    "PienerfOutcome",
    "convert_pienerf_manifest",
    "pienerf_row_to_study",
    "pienerf_study_file_name",
    "read_pienerf_entries",
    "read_pienerf_manifest",
]

PathLike = str | os.PathLike[str]

#: Required manifest columns (``act_path`` is optional).
PIENERF_COLUMNS = ("patient_id", "ap_path", "pa_path", "ct_path")


@dataclass(frozen=True)
class PieNeRFRow:
    """One case of a pieNeRF manifest, paths resolved against the CSV's folder.

    Attributes
    ----------
    patient_id
        The case identifier.
    ap_path, pa_path
        2D anterior and posterior count images (``.npy``).
    ct_path
        3D CT (``.npy``), HU unless told otherwise.
    act_path
        3D ground-truth activity (``.npy``) on the CT's grid, or ``None``.
    manifest
        The CSV the row came from.
    """

    patient_id: str
    ap_path: Path
    pa_path: Path
    ct_path: Path
    act_path: Path | None
    manifest: Path


@dataclass(frozen=True)
class PieNeRFEntry:
    """One data line of a pieNeRF manifest: its row, or why it cannot be read.

    Attributes
    ----------
    line
        Line number in the CSV (the header is line 1).
    patient_id
        The id as written (may be empty when the row is broken).
    row
        The row with its paths resolved, or ``None`` when ``error`` says why not.
    error
        Why the row cannot be converted (a `ValueError`, or a `FileNotFoundError` for a listed
        file that does not exist; one line naming the CSV and the line), or ``None``.
    """

    line: int
    patient_id: str
    row: PieNeRFRow | None
    error: ValueError | FileNotFoundError | None = None

    @property
    def label(self) -> str:
        """The patient id, or ``"line N"`` for a row without one."""
        return self.patient_id or f"line {self.line}"


def read_pienerf_entries(csv_path: PathLike) -> list[PieNeRFEntry]:
    """Read a pieNeRF manifest, keeping going past bad rows.

    Parameters
    ----------
    csv_path
        CSV with a header line holding at least ``patient_id, ap_path, pa_path, ct_path``
        (``act_path`` optional; an empty cell means none). Paths are relative to the CSV's
        folder unless absolute; blank lines are skipped.

    Returns
    -------
    list of PieNeRFEntry
        One per data line, in file order. A row with an empty required cell, a repeated patient
        id or a missing file is an entry with an ``error`` instead of a ``row``.

    Raises
    ------
    ValueError
        A required column is absent.
    OSError
        The CSV cannot be read.
    """
    path = Path(csv_path)
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in PIENERF_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; expected "
                f"{', '.join(PIENERF_COLUMNS)}[, act_path], got {columns}"
            )
        entries: list[PieNeRFEntry] = []
        seen: set[str] = set()
        for line, record in enumerate(reader, start=2):
            cells = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k}
            if not any(cells.values()):
                continue
            pid = cells.get("patient_id", "")
            entries.append(_entry(path, line, cells, seen))
            seen.add(pid)
    return entries


def _entry(path: Path, line: int, cells: Mapping[str, str], seen: set[str]) -> PieNeRFEntry:
    pid = cells.get("patient_id", "")
    for column in PIENERF_COLUMNS:
        if not cells.get(column):
            return PieNeRFEntry(line, pid, None, ValueError(f"{path}: line {line}: empty {column}"))
    if pid in seen:
        error = ValueError(f"{path}: line {line}: patient_id {pid!r} repeats")
        return PieNeRFEntry(line, pid, None, error)
    files: dict[str, Path] = {}
    for column in (*PIENERF_COLUMNS[1:], "act_path"):
        if not cells.get(column):
            continue
        file = Path(cells[column])
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            missing = FileNotFoundError(f"{path}: line {line}: {column} {file} not found")
            return PieNeRFEntry(line, pid, None, missing)
        files[column] = file
    row = PieNeRFRow(
        pid, files["ap_path"], files["pa_path"], files["ct_path"], files.get("act_path"), path
    )
    return PieNeRFEntry(line, pid, row)


def read_pienerf_manifest(csv_path: PathLike) -> list[PieNeRFRow]:
    """Read a pieNeRF CSV manifest, refusing any bad row (`read_pienerf_entries`' rules).

    Returns
    -------
    list of PieNeRFRow
        One per data line, in file order, with paths resolved against the CSV's folder.

    Raises
    ------
    ValueError
        A required column is absent, a required cell is empty, or a patient id repeats.
    FileNotFoundError
        A listed file does not exist.
    """
    rows: list[PieNeRFRow] = []
    for entry in read_pienerf_entries(csv_path):
        if entry.error is not None:
            raise entry.error
        assert entry.row is not None  # a row or an error, never neither
        rows.append(entry.row)
    return rows


def _load(path: Path, ndim: int, what: str) -> np.ndarray:
    """A numeric ``.npy`` array, its header checked (`recon.io.limits`) before it is read."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as fh:
            try:
                version = npy.read_magic(fh)
            except ValueError:
                raise ValueError(
                    f"{path}: {what}: not a NumPy .npy file (no \\x93NUMPY signature; "
                    "a text or other file?)"
                ) from None
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            try:
                shape, _, dtype = read(fh)
            except ValueError as error:
                raise ValueError(f"{path}: {what}: damaged .npy header ({error})") from None
            offset = fh.tell()
    except OSError as error:
        raise OSError(f"{path}: cannot read ({error.strerror or error})") from None
    if dtype.hasobject:
        raise ValueError(
            f"{path}: {what}: holds Python objects (pickled data), which spect never loads; "
            "save a numeric array"
        )
    check_array_size(path, what, shape, dtype.itemsize, file_bytes=path.stat().st_size - offset)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: {what}: cannot be read ({error})") from None
    if array.ndim != ndim:
        raise ValueError(f"{path}: {what} must be {ndim}D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: {what} must hold finite numbers")
    return array


def _image_to_ours(image: np.ndarray, codes: str) -> np.ndarray:
    """Image ``[a, b]`` with axes increasing toward ``codes`` → ``[rows to S, bins to L]``."""
    if codes[0] in "LR":
        image, codes = image.T, codes[::-1]
    flips = tuple(a for a, c in enumerate(codes) if c in "IR")
    return np.flip(image, axis=flips) if flips else image


def pienerf_row_to_study(
    row: PieNeRFRow,
    *,
    spacing_mm: float | Sequence[float],
    energy_keV: float,
    ct_orientation: str = "PIL",
    pa_mirrored: bool = True,
    ct_is_mu: bool = False,
    ct_mu_unit: Literal["1/mm", "1/cm"] = "1/mm",
    isotope: str | None = None,
    activity_unit: str = "a.u.",
) -> Study:
    """Turn one manifest row into a :class:`~recon.io.study.Study` in our conventions.

    Parameters
    ----------
    row
        From :func:`read_pienerf_manifest`.
    spacing_mm
        CT voxel size in mm: one number (isotropic) or three **in the CT array's axis order**.
        The images' pixels are the CT voxels across the depth axis.
    energy_keV
        Photon energy (keV) of the images; μ is computed at it from HU.
    ct_orientation
        Per CT array axis (array order), the patient direction in which its index increases:
        one each of A/P, S/I, R/L. Default ``"PIL"`` (see the module docstring). For a CT stored
        as our ``[Z, Y, X]`` use ``"SPL"``.
    pa_mirrored
        ``pa.npy`` is stored mirrored so that it shares ``ap.npy``'s orientation (the
        prototype's "mirror-corrected PA"); ``False`` if it is the raw posterior view.
    ct_is_mu, ct_mu_unit
        The CT holds μ in ``ct_mu_unit`` (1/mm or 1/cm) instead of HU.
    isotope, activity_unit
        Recorded in the study (the manifest does not say).

    Returns
    -------
    Study
        ``projections [2, rows, bins]`` = (AP at β = 0, PA at β = 180) in counts, μ (and the CT in
        HU unless ``ct_is_mu``), the truth activity if the row has one, on the CT's grid.

    Raises
    ------
    ValueError
        Bad options, arrays of the wrong dimension, sizes that do not match, negative counts.
    """
    code = str(ct_orientation).strip().upper()
    if ct_mu_unit not in ("1/mm", "1/cm"):
        raise ValueError(f"ct_mu_unit must be '1/mm' or '1/cm', got {ct_mu_unit!r}")
    spacing = (float(spacing_mm),) * 3 if np.ndim(spacing_mm) == 0 else tuple(spacing_mm)  # type: ignore[arg-type]  # length checked on the next line
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be 1 or 3 positive lengths (mm), got {spacing_mm!r}")
    spacing_zyx = reorient_spacing(spacing, code)  # also validates ct_orientation
    ct = _load(row.ct_path, 3, "CT").astype(np.float32)
    ap_file = _load(row.ap_path, 2, "AP image")
    pa_file = _load(row.pa_path, 2, "PA image")
    depth_axis = next(a for a, c in enumerate(code) if c in "AP")
    image_codes = code[:depth_axis] + code[depth_axis + 1 :]
    image_shape = tuple(n for a, n in enumerate(ct.shape) if a != depth_axis)
    for path, image in ((row.ap_path, ap_file), (row.pa_path, pa_file)):
        if image.shape != image_shape:
            raise ValueError(
                f"{path}: image shape {image.shape} does not match the CT {ct.shape} without its "
                f"depth axis {depth_axis} ({image_shape}) under ct_orientation={code!r}"
            )
        if np.any(image < 0):
            raise ValueError(f"{path}: counts must be >= 0")
    ap = _image_to_ours(ap_file, image_codes)
    pa = _image_to_ours(pa_file, image_codes)
    pa = pa[:, ::-1] if pa_mirrored else pa  # our PA bins run toward the patient's right
    ct_zyx = np.ascontiguousarray(reorient_to_zyx(ct, code))
    grid = ImageGrid(ct_zyx.shape, spacing_zyx)
    if ct_is_mu:
        mu = ct_zyx / np.float32(10.0) if ct_mu_unit == "1/cm" else ct_zyx
        if np.any(mu < 0):
            raise ValueError(f"{row.ct_path}: μ must be >= 0")
        ct_hu = None
    else:
        mu = hu_to_mu_per_mm(ct_zyx, energy_keV).astype(np.float32)
        ct_hu = ct_zyx
    truth = None
    if row.act_path is not None:
        act = _load(row.act_path, 3, "activity")
        if act.shape != ct.shape:
            raise ValueError(f"{row.act_path}: shape {act.shape} differs from the CT {ct.shape}")
        truth = np.ascontiguousarray(reorient_to_zyx(act.astype(np.float32), code))
    geometry = ParallelGeometry.ap_pa(grid)
    acquisition = Acquisition(
        angles_deg=geometry.angles_deg,
        detector_shape=geometry.detector_shape,
        pixel_size_mm=geometry.pixel_size_mm,
        energy_keV=energy_keV,
        isotope=isotope,
    )
    mapping = {"ct_orientation": code, "pa_mirrored": pa_mirrored, "ct_is_mu": ct_is_mu}
    provenance = {
        "source": f"pieNeRF manifest {row.manifest}",
        "patient_id": row.patient_id,
        "files": json.dumps(
            {k: str(getattr(row, k)) for k in ("ap_path", "pa_path", "ct_path", "act_path")}
        ),
        "orientation_mapping": json.dumps(mapping, sort_keys=True),
    }
    return Study(
        projections=np.ascontiguousarray(np.stack([ap, pa]), dtype=np.float32),
        acquisition=acquisition,
        grid=grid,
        mu_per_mm=np.ascontiguousarray(mu, dtype=np.float32),
        ct_hu=ct_hu,
        truth_activity=truth,
        activity_unit=activity_unit,
        provenance=provenance,
    )


# -- whole manifests into study files -----------------------------------------------------------


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
    act.npy (truth) become a study (`pienerf_row_to_study`) written atomically.
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
        As `pienerf_row_to_study` (docs/importers.md).
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
    from recon.io.hdf5 import write_study

    array_spacing = spacing_to_array_order(spacing_mm, ct_orientation)  # checks the orientation
    entries = read_pienerf_entries(manifest)
    if not entries:
        raise ValueError(f"{manifest}: the manifest has no data rows")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    name = canonical_isotope(isotope)
    outcomes: list[PienerfOutcome] = []
    for entry in entries:
        try:
            if entry.error is not None:
                raise entry.error
            assert entry.row is not None  # a row or an error, never neither
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

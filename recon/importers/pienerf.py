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
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from recon.importers.interfile import reorient_spacing, reorient_to_zyx
from recon.io.limits import check_array_size
from recon.io.study import Acquisition, Study
from recon.io.text import read_text
from spectproj import ImageGrid, ParallelGeometry, hu_to_mu_per_mm

__all__ = ["PIENERF_COLUMNS", "PieNeRFRow", "pienerf_row_to_study", "read_pienerf_manifest"]

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


def read_pienerf_manifest(csv_path: PathLike) -> list[PieNeRFRow]:
    """Read a pieNeRF CSV manifest.

    Parameters
    ----------
    csv_path
        CSV with a header line holding at least ``patient_id, ap_path, pa_path, ct_path``
        (``act_path`` optional; an empty cell means none).

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
        rows: list[PieNeRFRow] = []
        seen: set[str] = set()
        for line, record in enumerate(reader, start=2):
            cells = {(k or "").strip(): (v or "").strip() for k, v in record.items()}
            if not any(cells.values()):
                continue
            for column in PIENERF_COLUMNS:
                if not cells.get(column):
                    raise ValueError(f"{path}: line {line}: empty {column}")
            pid = cells["patient_id"]
            if pid in seen:
                raise ValueError(f"{path}: line {line}: patient_id {pid!r} repeats")
            seen.add(pid)
            files = {
                column: _resolve(path, line, column, cells[column])
                for column in (*PIENERF_COLUMNS[1:], "act_path")
                if cells.get(column)
            }
            rows.append(
                PieNeRFRow(
                    pid,
                    files["ap_path"],
                    files["pa_path"],
                    files["ct_path"],
                    files.get("act_path"),
                    path,
                )
            )
    return rows


def _resolve(csv_path: Path, line: int, column: str, value: str) -> Path:
    file = Path(value)
    if not file.is_absolute():
        file = csv_path.parent / file
    if not file.is_file():
        raise FileNotFoundError(f"{csv_path}: line {line}: {column} {file} not found")
    return file


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

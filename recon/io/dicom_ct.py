"""CT series (one file per slice) → HU volume → μ map on a SPECT image grid.

Volumes are ``[Z, Y, X]`` in the DICOM patient frame (LPS: +x patient left, +y posterior, +z
head) with every axis increasing along its index, as in ``docs/conventions.md``. Resampling onto
the SPECT grid averages the CT over each SPECT voxel (separable, exact partial-volume weights);
``docs/dicom.md`` explains the choice. `ct_on_grid` puts a series on a SPECT study's grid (μ, HU and
the provenance of the alignment) for `recon.io.dicom_nm`'s study builders.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import scipy.sparse
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from recon.io._dicom_common import (
    PathLike,
    as_floats,
    attribute_error,
    frames,
    list_files,
    pixel_spacing,
    require,
    source_name,
)
from spectproj import ImageGrid, hu_to_mu_per_mm

__all__ = ["CtGeometry", "ct_on_grid", "ct_to_mu_on_grid", "read_ct_series", "resample_to_grid"]

_AXIS_TOLERANCE = 1e-3  # direction cosines within this of 0/±1 count as axis-aligned
_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass(frozen=True)
class CtGeometry:
    """Where the voxels of a CT volume ``[Z, Y, X]`` are in the patient frame (LPS, mm).

    Parameters
    ----------
    shape:
        ``(Z, Y, X)`` voxels.
    spacing_mm:
        ``(dz, dy, dx)`` voxel size in mm (all positive: each axis increases with its index).
    origin_mm:
        ``(z, y, x)`` LPS position in mm of the centre of voxel ``[0, 0, 0]`` (the most inferior,
        anterior, right voxel).
    frame_of_reference_uid, series_instance_uid:
        From the files, if present (a SPECT/CT's NM and CT share the frame of reference).
    source:
        Folder or first file the series was read from.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    frame_of_reference_uid: str | None = None
    series_instance_uid: str | None = None
    source: str = ""

    def centres_mm(self, axis: int | str) -> np.ndarray:
        """LPS coordinates (mm) of the voxel centres along ``axis`` (0/'z', 1/'y', 2/'x'): [N]."""
        a = ("z", "y", "x").index(axis) if isinstance(axis, str) else int(axis)
        return self.origin_mm[a] + self.spacing_mm[a] * np.arange(self.shape[a], dtype=np.float64)

    def to_image_grid(self) -> ImageGrid:
        """The CT's voxels as an :class:`~spectproj.ImageGrid` whose coordinates are LPS (mm)."""
        centre = tuple(
            o + 0.5 * (n - 1) * d
            for o, d, n in zip(self.origin_mm, self.spacing_mm, self.shape, strict=True)
        )
        return ImageGrid(self.shape, self.spacing_mm, centre)  # type: ignore[arg-type]  # ImageGrid checks the length


def _axis_of(ds: Dataset, cosines: Sequence[float] | np.ndarray, which: str) -> tuple[int, int]:
    """``(LPS axis 0=x/1=y/2=z, sign)`` of an axis-aligned direction cosine vector."""
    c = np.asarray(cosines, dtype=np.float64)
    big = np.abs(c) >= 1.0 - _AXIS_TOLERANCE
    small = np.abs(c) <= _AXIS_TOLERANCE
    if big.sum() != 1 or small.sum() != 2:
        raise attribute_error(
            ds,
            "ImageOrientationPatient",
            f"{which} direction {c.tolist()} is oblique; only axis-aligned CT is supported",
        )
    axis = int(np.argmax(big))
    return axis, 1 if c[axis] > 0 else -1


def _headers(
    source: PathLike | Sequence[PathLike], series_uid: str | None
) -> tuple[list[Dataset], str]:
    """Headers (no pixels) of the CT slices of one series."""
    from_folder = isinstance(source, str | os.PathLike) and Path(source).is_dir()
    files = list_files(source)
    headers: list[Dataset] = []
    for f in files:
        try:
            ds: Dataset = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError as err:
            if from_folder:
                continue
            raise ValueError(f"{f}: not a DICOM file ({err})") from None
        modality = str(ds.get("Modality", "")).upper()
        if modality != "CT":
            if from_folder:
                continue
            raise attribute_error(ds, "Modality", f"= {modality!r}; expected CT")
        if str(ds.get("SOPClassUID", "")) == _ENHANCED_CT or int(ds.get("NumberOfFrames") or 1) > 1:
            raise attribute_error(
                ds, "SOPClassUID", "is an enhanced multi-frame CT; only one slice per file works"
            )
        headers.append(ds)
    where = str(source) if isinstance(source, str | os.PathLike) else str(files[0])
    if not headers:
        raise ValueError(f"{where}: no CT slices (Modality CT) found")
    series: dict[str, list[Dataset]] = {}
    for ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if series_uid is not None:
        if series_uid not in series:
            raise ValueError(f"{where}: no CT series with SeriesInstanceUID {series_uid}")
        return series[series_uid], where
    if len(series) > 1:
        listed = ", ".join(f"{uid or '<none>'} ({len(s)} slices)" for uid, s in series.items())
        raise ValueError(f"{where}: several CT series ({listed}); pass series_uid")
    return next(iter(series.values())), where


def read_ct_series(
    source: PathLike | Sequence[PathLike], *, series_uid: str | None = None
) -> tuple[np.ndarray, CtGeometry]:
    """Read a CT series into Hounsfield units ``[Z, Y, X]`` in the LPS frame.

    Slices are sorted along the slice normal (row × column direction) by ImagePositionPatient,
    pixel values are converted with each slice's RescaleSlope/RescaleIntercept, and the axes are
    permuted/flipped so that index increases toward +z (head), +y (posterior) and +x (patient
    left): index 0 along z is the most inferior slice.

    Parameters
    ----------
    source:
        A folder (non-CT and non-DICOM files in it are skipped) or a list of slice files.
    series_uid:
        SeriesInstanceUID to read when the folder holds several CT series.

    Returns
    -------
    hu:
        ``[Z, Y, X]`` float32 CT numbers (HU).
    geometry:
        Voxel positions in mm (:class:`CtGeometry`).

    Raises
    ------
    ValueError
        One line naming the file and the attribute: missing ImagePositionPatient,
        ImageOrientationPatient, PixelSpacing or rescale attributes, oblique orientation,
        slices that differ in orientation/size, duplicate or unevenly spaced slices.
    """
    headers, where = _headers(source, series_uid)
    first = headers[0]
    iop = np.asarray(
        as_floats(require(first, "ImageOrientationPatient", "to place the slices")), np.float64
    )
    if iop.size != 6:
        raise attribute_error(first, "ImageOrientationPatient", f"= {iop.tolist()} needs 6 values")
    row_spacing, col_spacing = pixel_spacing(first, "to place the voxels")
    shape_2d = (
        int(require(first, "Rows", "for the slice size")),
        int(require(first, "Columns", "for the slice size")),
    )
    positions = []
    for ds in headers:
        ds_iop = np.asarray(
            as_floats(require(ds, "ImageOrientationPatient", "to place the slices")), np.float64
        )
        if ds_iop.size != 6 or not np.allclose(ds_iop, iop, atol=1e-4):
            raise attribute_error(
                ds, "ImageOrientationPatient", f"{ds_iop.tolist()} differs from {iop.tolist()}"
            )
        if not np.allclose(pixel_spacing(ds, "to place the voxels"), (row_spacing, col_spacing)):
            raise attribute_error(ds, "PixelSpacing", "differs between slices of the series")
        size = (
            int(require(ds, "Rows", "for the slice size")),
            int(require(ds, "Columns", "for the slice size")),
        )
        if size != shape_2d:
            raise attribute_error(ds, "Rows", "/Columns differ between slices of the series")
        ipp = as_floats(require(ds, "ImagePositionPatient", "to place the slice"))
        if len(ipp) != 3:
            raise attribute_error(ds, "ImagePositionPatient", f"= {ipp} needs 3 values")
        positions.append(ipp)
    pos = np.asarray(positions, dtype=np.float64)  # [S, 3] (x, y, z)

    col_axis, col_sign = _axis_of(first, iop[:3], "row")  # columns increase along iop[:3]
    row_axis, row_sign = _axis_of(first, iop[3:], "column")  # rows increase along iop[3:]
    if col_axis == row_axis:
        raise attribute_error(
            first, "ImageOrientationPatient", f"{iop.tolist()} has parallel row/column directions"
        )
    row_dir = np.zeros(3)
    row_dir[col_axis] = col_sign
    col_dir = np.zeros(3)
    col_dir[row_axis] = row_sign
    normal = np.cross(row_dir, col_dir)
    normal_axis = int(np.argmax(np.abs(normal)))  # slices are sorted along +normal
    normal_sign = 1 if normal[normal_axis] > 0 else -1

    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    in_plane = pos[order][:, [col_axis, row_axis]]
    tol_plane = 0.05 * min(row_spacing, col_spacing)
    if np.any(np.abs(in_plane - in_plane[0]) > tol_plane):
        bad = headers[int(order[np.argmax(np.abs(in_plane - in_plane[0]).max(axis=1))])]
        raise attribute_error(
            bad, "ImagePositionPatient", "is shifted in-plane from the first slice (gantry tilt?)"
        )
    if len(along) > 1:
        gaps = np.diff(along)
        if np.any(gaps <= 1e-3):
            k = int(np.argmax(gaps <= 1e-3))
            raise attribute_error(
                headers[int(order[k + 1])],
                "ImagePositionPatient",
                f"repeats the position of {source_name(headers[int(order[k])])}",
            )
        slice_spacing = float(np.median(gaps))
        if np.any(np.abs(gaps - slice_spacing) > max(0.01, 0.01 * slice_spacing)):
            k = int(np.argmax(np.abs(gaps - slice_spacing)))
            raise attribute_error(
                headers[int(order[k + 1])],
                "ImagePositionPatient",
                f"is {gaps[k]:.3f} mm from the previous slice, not {slice_spacing:.3f} mm "
                "(missing slices?)",
            )
    else:
        slice_spacing = float(require(first, "SliceThickness", "for a single-slice series"))

    slices = []
    for k in order:
        ds = pydicom.dcmread(headers[int(k)].filename)
        require(ds, "RescaleSlope", "to convert to HU")
        require(ds, "RescaleIntercept", "to convert to HU")
        slices.append(frames(ds)[0].astype(np.float32))
    volume = np.stack(slices)  # [S, R, C]: S along +normal, R along col_dir, C along row_dir

    # LPS axis (x=0, y=1, z=2) and sign of each stored axis; our axis j holds LPS axis 2 − j.
    stored = [(normal_axis, normal_sign), (row_axis, row_sign), (col_axis, col_sign)]
    stored_spacing = [slice_spacing, row_spacing, col_spacing]
    perm = [next(s for s in range(3) if stored[s][0] == 2 - j) for j in range(3)]
    volume = np.transpose(volume, perm)
    flips = tuple(j for j in range(3) if stored[perm[j]][1] < 0)
    if flips:
        volume = np.flip(volume, axis=flips)
    spacing = tuple(float(stored_spacing[perm[j]]) for j in range(3))
    n_out = volume.shape
    origin = []
    for j in range(3):
        lps = 2 - j
        sign = stored[perm[j]][1]
        start = float(pos[order[0]][lps])
        origin.append(start if sign > 0 else start - (n_out[j] - 1) * spacing[j])
    frame_uid = first.get("FrameOfReferenceUID")
    series = first.get("SeriesInstanceUID")
    geometry = CtGeometry(
        shape=tuple(int(n) for n in n_out),  # type: ignore[arg-type]  # 3 axes, one per LPS axis
        spacing_mm=spacing,  # type: ignore[arg-type]  # 3 axes, one per LPS axis
        origin_mm=tuple(origin),  # type: ignore[arg-type]  # 3 axes, one per LPS axis
        frame_of_reference_uid=str(frame_uid) if frame_uid else None,
        series_instance_uid=str(series) if series else None,
        source=where,
    )
    return np.ascontiguousarray(volume, dtype=np.float32), geometry


def _axis_weights(
    n_src: int, src_origin: float, src_spacing: float, dst_centres: np.ndarray, dst_size: float
) -> scipy.sparse.csr_matrix:
    """``[n_dst, n_src]`` resampling weights along one axis.

    Destination voxel o receives the mean of the piecewise-constant source over a window of width
    ``w = max(dst_size, src_spacing)`` centred on it: the overlap of the window with source voxel i
    (``[src_origin + (i − ½)·src_spacing, … + src_spacing]``) divided by ``w``. For destination
    voxels at least as large as the source's this is the exact partial-volume average (and
    ``∑ value·size`` is conserved); for smaller ones it is linear interpolation between source
    voxel centres. Outside the source the value is 0.
    """
    width = max(float(dst_size), float(src_spacing))
    lo = dst_centres[:, None] - 0.5 * width
    hi = dst_centres[:, None] + 0.5 * width
    src_lo = src_origin + (np.arange(n_src, dtype=np.float64)[None, :] - 0.5) * src_spacing
    overlap = np.minimum(hi, src_lo + src_spacing) - np.maximum(lo, src_lo)
    w = np.clip(overlap, 0.0, None) / width
    w[w < 1e-12] = 0.0
    return scipy.sparse.csr_matrix(w.astype(np.float32))


def _apply_axis(volume: np.ndarray, weights: scipy.sparse.csr_matrix, axis: int) -> np.ndarray:
    moved = np.moveaxis(volume, axis, 0)
    rest = moved.shape[1:]
    out = weights @ np.ascontiguousarray(moved).reshape(moved.shape[0], -1)
    return np.moveaxis(np.asarray(out).reshape((weights.shape[0], *rest)), 0, axis)


def resample_to_grid(
    volume: np.ndarray,
    geometry: CtGeometry,
    grid: ImageGrid,
    *,
    fill: float = 0.0,
    axis_position_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Resample a CT-space volume onto ``grid`` by separable partial-volume averaging.

    Along each axis an output voxel receives the mean of the CT over a window of its own size
    centred on it (the CT taken as constant over each CT voxel), or of the CT voxel size when the
    output voxels are smaller, which is then linear interpolation between CT voxel centres. So
    SPECT voxels larger than CT voxels get the exact mean of the CT voxels they overlap (weighted
    by the overlap), and the result is trilinear interpolation where the SPECT grid is finer.

    Parameters
    ----------
    volume:
        ``[Z, Y, X]`` on ``geometry``.
    geometry:
        Where ``volume``'s voxels are (LPS, mm).
    grid:
        Output grid. Its coordinates plus ``axis_position_lps_mm`` are LPS positions.
    fill:
        Value outside the CT (e.g. −1000 for HU, 0 for μ).
    axis_position_lps_mm:
        ``(z, y, x)`` LPS position (mm) of the grid's coordinate origin (the point on the rotation
        axis at the detector's centre row). Default: the grid's coordinates are LPS coordinates.

    Returns
    -------
    np.ndarray
        ``grid.shape`` float32.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.shape != tuple(geometry.shape):
        raise ValueError(f"volume has shape {vol.shape}, expected CT geometry {geometry.shape}")
    weights = []
    for axis in range(3):
        centres = grid.centres_mm(axis).numpy() + float(axis_position_lps_mm[axis])
        weights.append(
            _axis_weights(
                geometry.shape[axis],
                geometry.origin_mm[axis],
                geometry.spacing_mm[axis],
                centres,
                grid.spacing_mm[axis],
            )
        )
    out = vol - np.float32(fill) if fill else vol
    # reduce the axis that shrinks most first (least work for the next two)
    for axis in sorted(range(3), key=lambda a: weights[a].shape[0] / weights[a].shape[1]):
        out = _apply_axis(out, weights[axis], axis)
    if fill:
        out = out + np.float32(fill)
    return np.ascontiguousarray(out, dtype=np.float32)


def ct_to_mu_on_grid(
    hu: np.ndarray,
    ct_geometry: CtGeometry,
    grid: ImageGrid,
    energy_keV: float,
    ct_effective_keV: float = 70.0,
    *,
    axis_position_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Attenuation map (1/mm) at ``energy_keV`` on a SPECT ``grid`` from a CT in HU.

    HU are converted to μ at the CT's own resolution with :func:`spectproj.hu_to_mu_per_mm`
    (bilinear water–air / water–bone model, ``ct_effective_keV`` ≈ 70 keV for 120 kVp), then μ is
    averaged over each SPECT voxel with :func:`resample_to_grid` (μ = 0, air, outside the CT).
    Converting before averaging gives each SPECT voxel the mean μ of the tissue in it; averaging
    HU first would bend mixtures of air and bone through the model's kink at 0 HU.

    Parameters
    ----------
    hu:
        ``[Z, Y, X]`` CT numbers on ``ct_geometry`` (from :func:`read_ct_series`).
    ct_geometry:
        Voxel positions of ``hu`` (LPS, mm).
    grid:
        The SPECT image grid; its coordinates plus ``axis_position_lps_mm`` are LPS positions.
    energy_keV:
        Photon energy of the SPECT acquisition (keV).
    ct_effective_keV:
        Effective energy of the CT beam (keV).
    axis_position_lps_mm:
        ``(z, y, x)`` LPS position (mm) of the grid's coordinate origin; see
        :func:`resample_to_grid`.

    Returns
    -------
    np.ndarray
        ``grid.shape`` float32 μ in 1/mm, ≥ 0.
    """
    h = np.asarray(hu, dtype=np.float32)
    if h.shape != tuple(ct_geometry.shape):
        raise ValueError(f"hu has shape {h.shape}, expected CT geometry {ct_geometry.shape}")
    mu_ct = np.empty(h.shape, dtype=np.float32)
    for k in range(0, h.shape[0], 16):  # in slabs: the conversion works in float64
        mu_ct[k : k + 16] = hu_to_mu_per_mm(h[k : k + 16], energy_keV, ct_effective_keV)
    mu = resample_to_grid(
        mu_ct, ct_geometry, grid, fill=0.0, axis_position_lps_mm=axis_position_lps_mm
    )
    return np.maximum(mu, 0.0, out=mu)


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
        A folder of CT slices (or a list of slice files): `read_ct_series`.
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

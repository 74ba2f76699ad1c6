"""DICOM segmentations onto a study's grid: DICOM SEG and RTSTRUCT (pydicom only).

* **DICOM SEG** (Segmentation Storage): each frame is one segment's mask on one plane, placed by
  its ImagePositionPatient, the ImageOrientationPatient and PixelSpacing of the functional
  groups; frames lie on a regular lattice of planes (SpacingBetweenSlices, else the CT's slice
  spacing when ``ct_dir`` is given, else the smallest gap between frame positions). Oblique
  orientations work. FRACTIONAL segmentations are thresholded at half their maximum.
* **RTSTRUCT**: each ROI is a set of closed planar contours (LPS mm). They are rasterised on the
  slices of the CT series they were drawn on (``ct_dir``, read with
  `recon.io.dicom_ct.read_ct_series`): a CT voxel is inside when its centre is inside an
  odd number of the ROI's contours on that slice (so nested contours are holes). Only axial
  contours (constant z) are supported.

Both are then resampled to the study grid by nearest neighbour (`nearest_on_grid`); overlapping
segments go to the smaller one with a warning (`combine_masks`). A segment named like a body
(``body``, ``external``, or an RTSTRUCT ROI of type EXTERNAL) becomes the body outline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.path import Path as Polygon
from pydicom.dataset import Dataset

from recon.io._dicom_common import (
    PathLike,
    as_floats,
    attribute_error,
    check_pixel_size,
    pixel_spacing,
    read_dataset,
    require,
)
from recon.io.dicom_ct import read_ct_series
from recon.io.segmentation import (
    BODY_CLASS_NAMES,
    TOTALSEGMENTATOR_TO_SPECT,
    _check_coverage,
    combine_masks,
    nearest_on_grid,
)
from recon.io.study import Anatomy, Study

__all__ = ["anatomy_from_dicom", "anatomy_from_dicom_seg", "anatomy_from_rtstruct"]

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_BODY_NAMES = BODY_CLASS_NAMES | {"external", "outline", "skin"}


def anatomy_from_dicom(
    study: Study, path: PathLike, *, ct_dir: PathLike | None = None, rename: bool = True
) -> Anatomy:
    """A DICOM SEG or RTSTRUCT file (by its Modality) on the study grid."""
    ds = read_dataset(path, stop_before_pixels=True)
    modality = str(ds.get("Modality", "")).upper()
    if modality == "SEG" or str(ds.get("SOPClassUID", "")) == SEG_STORAGE:
        return anatomy_from_dicom_seg(study, path, ct_dir=ct_dir, rename=rename)
    if modality == "RTSTRUCT":
        if ct_dir is None:
            raise ValueError(f"{path}: an RTSTRUCT needs the CT series it refers to (ct_dir)")
        return anatomy_from_rtstruct(study, path, ct_dir, rename=rename)
    raise attribute_error(ds, "Modality", f"= {modality!r}; expected SEG or RTSTRUCT")


def _name(text: str, rename: bool) -> str:
    name = " ".join(str(text).split())
    return TOTALSEGMENTATOR_TO_SPECT.get(name, name) if rename else name


def _is_body(name: str) -> bool:
    return name.lower() in _BODY_NAMES


def _frame_item(ds: Dataset, k: int, keyword: str) -> Dataset | None:
    """Item 0 of functional group ``keyword`` for frame ``k`` (per-frame, else shared)."""
    for seq_name, index in (
        ("PerFrameFunctionalGroupsSequence", k),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(seq_name)
        if seq is not None and len(seq) > index:
            group = seq[index].get(keyword)
            if group is not None and len(group) > 0:
                return group[0]
    return None


def _unit(v: np.ndarray, ds: Dataset, what: str) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or abs(n - 1.0) > 1e-3:
        raise attribute_error(
            ds, "ImageOrientationPatient", f"{what} direction {v.tolist()} is not a unit vector"
        )
    return v / n


def anatomy_from_dicom_seg(
    study: Study, path: PathLike, *, ct_dir: PathLike | None = None, rename: bool = True
) -> Anatomy:
    """A DICOM SEG file on the study grid (segments named by their SegmentLabel).

    Raises
    ------
    ValueError
        One line naming the file and the attribute: not a SEG, missing or inconsistent geometry
        (orientation, spacing, positions off the lattice of planes), no overlap with the grid.
    """
    p = Path(path)
    ds = read_dataset(p)
    if str(ds.get("Modality", "")).upper() != "SEG":
        raise attribute_error(ds, "Modality", f"= {ds.get('Modality')!r}; expected SEG")
    seg_type = str(require(ds, "SegmentationType", "to read the masks")).upper()
    segments = {
        int(require(item, "SegmentNumber", "to name segments", owner=ds)): _name(
            require(item, "SegmentLabel", "to name segments", owner=ds), rename
        )
        for item in require(ds, "SegmentSequence", "to name the segments")
    }
    check_pixel_size(ds)
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as err:  # pydicom raises several types
        raise attribute_error(ds, "PixelData", f"cannot be decoded ({err})") from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape[0] != n_frames:
        raise attribute_error(ds, "NumberOfFrames", f"= {n_frames}, pixel data {pixels.shape}")
    if seg_type == "FRACTIONAL":
        top = float(ds.get("MaximumFractionalValue", 255) or 255)
        masks_2d = pixels >= 0.5 * top
    else:
        masks_2d = pixels > 0

    orientation = _frame_item(ds, 0, "PlaneOrientationSequence")
    measures = _frame_item(ds, 0, "PixelMeasuresSequence")
    if orientation is None or measures is None:
        raise attribute_error(
            ds, "SharedFunctionalGroupsSequence", "lacks PlaneOrientation/PixelMeasures"
        )
    iop = np.asarray(
        as_floats(require(orientation, "ImageOrientationPatient", "to place frames", owner=ds))
    )
    if iop.size != 6:
        raise attribute_error(ds, "ImageOrientationPatient", f"= {iop.tolist()} needs 6 values")
    row_dir = _unit(iop[:3], ds, "row")  # column index increases along it
    col_dir = _unit(iop[3:], ds, "column")  # row index increases along it
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise attribute_error(
            ds, "ImageOrientationPatient", f"{iop.tolist()}: row and column are not orthogonal"
        )
    normal = np.cross(row_dir, col_dir)
    row_spacing, col_spacing = pixel_spacing(measures, "to place the pixels")

    positions = []
    frame_segment = []
    for k in range(n_frames):
        plane = _frame_item(ds, k, "PlanePositionSequence")
        ident = _frame_item(ds, k, "SegmentIdentificationSequence")
        if plane is None or ident is None:
            raise attribute_error(
                ds,
                "PerFrameFunctionalGroupsSequence",
                f"[{k}] lacks PlanePosition or SegmentIdentification",
            )
        ipp = as_floats(require(plane, "ImagePositionPatient", "to place frames", owner=ds))
        positions.append(ipp)
        number = int(require(ident, "ReferencedSegmentNumber", "to assign frames", owner=ds))
        if number not in segments:
            raise attribute_error(
                ds, "ReferencedSegmentNumber", f"= {number} is not in SegmentSequence"
            )
        frame_segment.append(number)
    pos = np.asarray(positions, dtype=np.float64)
    along = pos @ normal
    in_plane = (pos - pos[0]) - np.outer(along - along[0], normal)
    if np.abs(in_plane).max(initial=0.0) > 0.05 * min(row_spacing, col_spacing):
        raise attribute_error(ds, "ImagePositionPatient", "frames are shifted in-plane")

    spacing = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness")
    distinct = np.unique(np.round(along, 3))
    if spacing is None and ct_dir is not None:
        _, geometry = read_ct_series(ct_dir)
        spacing = geometry.spacing_mm[0]
    if spacing is None and distinct.size > 1:
        spacing = float(np.diff(distinct).min())
    if spacing is None:
        raise attribute_error(
            measures, "SpacingBetweenSlices", "is missing and one plane gives no spacing"
        )
    spacing = float(spacing)
    lattice = (along - along.min()) / spacing
    slot = np.round(lattice).astype(np.int64)
    if np.abs(lattice - slot).max() > 0.1:
        raise attribute_error(
            ds, "ImagePositionPatient", f"frames are not on a lattice of {spacing:g} mm planes"
        )
    origin = pos[0] + (along.min() - along[0]) * normal
    # LPS (x, y, z) -> (plane, row, column) indices.
    m = np.zeros((4, 4))
    for a, (direction, step) in enumerate(
        ((normal, spacing), (col_dir, row_spacing), (row_dir, col_spacing))
    ):
        m[a, :3] = direction / step
        m[a, 3] = -(origin @ direction) / step
    m[3, 3] = 1.0

    rows, cols = masks_2d.shape[1:]
    masks: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    body = None
    any_covered = None
    for number, name in segments.items():
        stack = np.zeros((int(slot.max()) + 1, rows, cols), dtype=bool)
        chosen = [k for k in range(n_frames) if frame_segment[k] == number]
        for k in chosen:
            stack[slot[k]] |= masks_2d[k]
        values, covered = nearest_on_grid(stack, m, study.grid)
        any_covered = covered if any_covered is None else any_covered | covered
        if _is_body(name):
            body = values if body is None else body | values
            continue
        masks[name] = values | masks[name] if name in masks else values
        sources.setdefault(name, []).append(f"segment {number} ({name})")
    if any_covered is None:
        raise attribute_error(ds, "SegmentSequence", "holds no segments")
    # A SEG leaves out empty frames, so its planes need not span the body: no partial warning.
    _check_coverage(str(p), any_covered, warn_partial=False)
    return combine_masks(study, masks, sources, source=f"DICOM SEG {p}", body=body)


def _external_rois(ds: Dataset) -> set[int]:
    out = set()
    for item in ds.get("RTROIObservationsSequence") or []:
        if str(item.get("RTROIInterpretedType", "")).upper() == "EXTERNAL":
            out.add(int(item.get("ReferencedROINumber", -1)))
    return out


def anatomy_from_rtstruct(
    study: Study, path: PathLike, ct_dir: PathLike, *, rename: bool = True
) -> Anatomy:
    """An RTSTRUCT's ROIs on the study grid, rasterised on the slices of its CT series.

    Raises
    ------
    ValueError
        One line naming the file and the attribute: not an RTSTRUCT, contours that are not
        axial or not on a CT slice, no overlap with the study grid; CT errors as
        `read_ct_series`.
    """
    p = Path(path)
    ds = read_dataset(p)
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        raise attribute_error(ds, "Modality", f"= {ds.get('Modality')!r}; expected RTSTRUCT")
    _, ct = read_ct_series(ct_dir)
    nz, ny, nx = ct.shape
    dz, dy, dx = ct.spacing_mm
    oz, oy, ox = ct.origin_mm
    names = {
        int(require(item, "ROINumber", "to name ROIs", owner=ds)): _name(
            require(item, "ROIName", "to name ROIs", owner=ds), rename
        )
        for item in require(ds, "StructureSetROISequence", "to name the ROIs")
    }
    external = _external_rois(ds)
    xs = ox + dx * np.arange(nx)
    ys = oy + dy * np.arange(ny)
    masks: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    body = None
    for index, roi in enumerate(require(ds, "ROIContourSequence", "for the contours")):
        number = int(require(roi, "ReferencedROINumber", "to match ROIs", owner=ds))
        if number not in names:
            raise attribute_error(
                ds, "ReferencedROINumber", f"= {number} is not in StructureSetROISequence"
            )
        volume = np.zeros(ct.shape, dtype=bool)
        for c, contour in enumerate(roi.get("ContourSequence") or []):
            where = f"ROIContourSequence[{index}] > ContourSequence[{c}] > "
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            if kind != "CLOSED_PLANAR":
                continue  # points and open lines enclose nothing
            data = np.asarray(as_floats(require(contour, "ContourData", "", where, owner=ds)))
            if data.size < 9 or data.size % 3:
                raise attribute_error(
                    ds, "ContourData", f"has {data.size} values, not 3 per point (>= 3)", where
                )
            points = data.reshape(-1, 3)
            z = points[:, 2]
            if np.ptp(z) > 0.01 * dz:
                raise attribute_error(
                    ds, "ContourData", "is not axial (z varies); only axial contours work", where
                )
            k_float = (float(z.mean()) - oz) / dz
            k = round(k_float)
            if abs(k_float - k) > 0.1 or not 0 <= k < nz:
                raise attribute_error(
                    ds, "ContourData", f"z = {z.mean():g} mm is not on a CT slice", where
                )
            polygon = Polygon(points[:, :2])
            x0, y0 = points[:, :2].min(axis=0)
            x1, y1 = points[:, :2].max(axis=0)
            i = np.nonzero((xs >= x0) & (xs <= x1))[0]
            j = np.nonzero((ys >= y0) & (ys <= y1))[0]
            if i.size == 0 or j.size == 0:
                continue
            gx, gy = np.meshgrid(xs[i], ys[j])
            inside = polygon.contains_points(np.column_stack([gx.ravel(), gy.ravel()]))
            volume[k, j[0] : j[-1] + 1, i[0] : i[-1] + 1] ^= inside.reshape(gy.shape)
        m = np.array(
            [
                [0.0, 0.0, 1.0 / dz, -oz / dz],
                [0.0, 1.0 / dy, 0.0, -oy / dy],
                [1.0 / dx, 0.0, 0.0, -ox / dx],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        values, covered = nearest_on_grid(volume, m, study.grid)
        if index == 0:
            _check_coverage(str(p), covered)
        name = names[number]
        if number in external or _is_body(name):
            body = values if body is None else body | values
            continue
        masks[name] = values | masks[name] if name in masks else values
        sources.setdefault(name, []).append(f"ROI {number} ({name})")
    return combine_masks(study, masks, sources, source=f"RTSTRUCT {p} on CT {ct_dir}", body=body)

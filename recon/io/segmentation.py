"""Segmentations (label maps, per-structure masks) onto a study's grid as its `Anatomy`.

A segmentation is an *input* (``Study.anatomy``, ``/anatomy`` in a study file), not the truth.
Every importer returns an `recon.io.Anatomy` on the study's grid and never prints: problems that
can be repaired (a named label with no voxel, segments outside the body outline, overlapping
per-structure masks, a segmentation that covers only part of the grid) give a
``warnings.warn`` that names the file; problems that cannot (no overlap with the grid, an unknown
or singular orientation, label values without a name, non-integer labels) raise a one-line
``ValueError`` naming the file, and nothing is returned.

Resampling is nearest neighbour: each study voxel takes the label of the source voxel that holds
its centre, found through the source's affine (NIfTI: RAS+, converted from our LPS as
``RAS = (−x, −y, z)``, see `recon.io.nifti`; DICOM: LPS directly).

The body outline comes from the segmentation when it has a body class (a segment named ``body``,
``body_trunc`` or ``body_extremities``: these become the outline, together with every labelled
voxel, and are not kept as segments), else from the study's CT or μ by threshold
(`recon.io.segmentation_threshold`), else it is unknown (``None``).

TotalSegmentator's names are renamed to the phantom's where the match is obvious
(`TOTALSEGMENTATOR_TO_SPECT`: ``urinary_bladder`` → ``bladder``, the five lung lobes → ``lungs``,
the vertebrae → ``spine``); structures that get the same name are merged into one segment.
"""

from __future__ import annotations

import json
import os
import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import nibabel as nib
import numpy as np

from recon.io.study import Anatomy, Study
from recon.io.text import read_text
from spectproj import ImageGrid

__all__ = [
    "BODY_CLASS_NAMES",
    "TOTALSEGMENTATOR_TOTAL",
    "TOTALSEGMENTATOR_TO_SPECT",
    "anatomy_from_labels",
    "anatomy_from_nifti",
    "anatomy_from_nifti_folder",
    "combine_masks",
    "import_anatomy",
    "load_anatomy",
    "nearest_on_grid",
    "read_names",
]

PathLike = str | os.PathLike[str]

#: Segment names taken as the body outline rather than as segments.
BODY_CLASS_NAMES = frozenset({"body", "body_trunc", "body_extremities"})


def _totalsegmentator_total() -> dict[int, str]:
    """TotalSegmentator (v2) ``total`` task: label value → class name (117 classes)."""
    names: dict[int, str] = {}
    first = (
        "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right "
        "adrenal_gland_left lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right "
        "lung_middle_lobe_right lung_lower_lobe_right esophagus trachea thyroid_gland small_bowel "
        "duodenum colon urinary_bladder prostate kidney_cyst_left kidney_cyst_right sacrum "
        "vertebrae_S1"
    ).split()
    names.update(enumerate(first, start=1))  # 1..26
    spine = [f"vertebrae_L{k}" for k in range(5, 0, -1)]
    spine += [f"vertebrae_T{k}" for k in range(12, 0, -1)]
    spine += [f"vertebrae_C{k}" for k in range(7, 0, -1)]
    names.update(enumerate(spine, start=27))  # 27..50
    middle = (
        "heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right "
        "subclavian_artery_left common_carotid_artery_right common_carotid_artery_left "
        "brachiocephalic_vein_left brachiocephalic_vein_right atrial_appendage_left "
        "superior_vena_cava inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left "
        "iliac_artery_right iliac_vena_left iliac_vena_right humerus_left humerus_right "
        "scapula_left scapula_right clavicula_left clavicula_right femur_left femur_right "
        "hip_left hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right "
        "gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right "
        "autochthon_left autochthon_right iliopsoas_left iliopsoas_right brain skull"
    ).split()
    names.update(enumerate(middle, start=51))  # 51..91
    ribs = [f"rib_{side}_{k}" for side in ("left", "right") for k in range(1, 13)]
    names.update(enumerate(ribs, start=92))  # 92..115
    names[116] = "sternum"
    names[117] = "costal_cartilages"
    return names


#: TotalSegmentator's ``total`` class map (label value → name), the default for a multi-label
#: NIfTI given without names.
TOTALSEGMENTATOR_TOTAL: Mapping[int, str] = MappingProxyType(_totalsegmentator_total())

#: TotalSegmentator name → the phantom's name (`recon.data.phantoms.LABELS`) where the match is
#: obvious.
TOTALSEGMENTATOR_TO_SPECT: Mapping[str, str] = MappingProxyType(
    {
        "urinary_bladder": "bladder",
        **{n: "lungs" for n in TOTALSEGMENTATOR_TOTAL.values() if n.startswith("lung_")},
        **{n: "spine" for n in TOTALSEGMENTATOR_TOTAL.values() if n.startswith("vertebrae_")},
        "lung_left": "lungs",  # total_mr
        "lung_right": "lungs",
        "vertebrae": "spine",
    }
)


# ----------------------------------------------------------------------------------------------
# Names


def read_names(path: PathLike) -> dict[int, str]:
    """Label value → segment name from a file.

    Formats (by suffix): ``.json`` — an object ``{"1": "liver", ...}``; ``.toml`` — a table
    ``1 = "liver"`` (keys are strings: quote them or write them bare); anything else — text, one
    ``value: name`` (or ``value name``, ``value=name``) per line, ``#`` comments and blank lines
    ignored.

    Raises
    ------
    ValueError
        One line naming the file and the line or key that is not a label value and a name.
    FileNotFoundError
        No such file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such names file")
    text = read_text(p)
    suffix = p.suffix.lower()
    if suffix in (".json", ".toml"):
        try:
            raw = json.loads(text) if suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
            message = " ".join(str(error).split())
            raise ValueError(f"{p}: not valid {suffix[1:].upper()} ({message})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: expected an object of label value → name")
        pairs = [(str(k), v, f"key {k!r}") for k, v in raw.items()]
    else:
        pairs = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            for sep in (":", "=", None):
                parts = line.split(sep, 1)
                if len(parts) == 2:
                    break
            if len(parts) != 2:
                raise ValueError(f"{p}: line {number}: expected 'value: name', got {line!r}")
            pairs.append((parts[0].strip(), parts[1].strip(), f"line {number}"))
    names: dict[int, str] = {}
    for key, value, where in pairs:
        try:
            label = int(key)
        except ValueError:
            raise ValueError(f"{p}: {where}: label value {key!r} is not an integer") from None
        if label <= 0:
            raise ValueError(f"{p}: {where}: label value {label} must be > 0 (0 = no segment)")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{p}: {where}: name of label {label} must be a non-empty string")
        if label in names:
            raise ValueError(f"{p}: {where}: label value {label} is named twice")
        names[label] = value.strip()
    if not names:
        raise ValueError(f"{p}: no label names in the file")
    return names


# ----------------------------------------------------------------------------------------------
# Resampling


def _grid_lps(grid: ImageGrid, axis: int) -> np.ndarray:
    n, d, o = grid.shape[axis], grid.spacing_mm[axis], grid.offset_mm[axis]
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2) * d + o


def nearest_on_grid(
    data: np.ndarray, index_of_lps: np.ndarray, grid: ImageGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour sample of a 3D array at the voxel centres of ``grid``.

    Parameters
    ----------
    data
        Source array of any 3D shape ``[A, B, C]`` (labels or a mask).
    index_of_lps
        ``[4, 4]`` affine from LPS ``(x, y, z, 1)`` in mm to fractional indices ``(a, b, c, 1)``
        of ``data``.
    grid
        Target grid; voxel ``(k, j, i)`` is at LPS ``(x, y, z)`` (``docs/conventions.md``).

    Returns
    -------
    values : numpy.ndarray
        ``[Z, Y, X]`` with ``data``'s dtype; 0 where the centre falls outside ``data``.
    covered : numpy.ndarray
        ``[Z, Y, X]`` bool: the centre falls inside ``data``.
    """
    m = np.asarray(index_of_lps, dtype=np.float64)
    xs, ys, zs = _grid_lps(grid, 2), _grid_lps(grid, 1), _grid_lps(grid, 0)
    values = np.zeros(grid.shape, dtype=data.dtype)
    covered = np.zeros(grid.shape, dtype=bool)
    shape = np.asarray(data.shape)
    for k, z in enumerate(zs):
        idx = []
        for row in range(3):
            f = m[row, 0] * xs[None, :] + m[row, 1] * ys[:, None] + m[row, 2] * z + m[row, 3]
            idx.append(np.floor(f + 0.5 + 1e-9).astype(np.int64))
        inside = np.ones(idx[0].shape, dtype=bool)
        for a in range(3):
            inside &= (idx[a] >= 0) & (idx[a] < shape[a])
        covered[k] = inside
        if inside.any():
            values[k][inside] = data[idx[0][inside], idx[1][inside], idx[2][inside]]
    return values, covered


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _nifti_index_of_lps(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    header = image.header
    codes = (int(header["sform_code"]), int(header["qform_code"]))
    if codes == (0, 0):
        raise ValueError(
            f"{path}: orientation unknown: neither sform nor qform is set (both codes 0)"
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    linear = affine[:3, :3]
    if not np.isfinite(affine).all():
        raise ValueError(f"{path}: orientation unknown: the affine holds NaN/Inf")
    scale = float(np.abs(linear).max())
    if scale == 0 or abs(np.linalg.det(linear)) <= 1e-9 * scale**3:
        raise ValueError(f"{path}: orientation unknown: the affine is singular {linear.tolist()}")
    return np.linalg.inv(affine) @ _LPS_TO_RAS


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data [i, j, k], index_of_lps [4, 4])`` of a 3D NIfTI label map or mask."""
    from recon.io.nifti import load_nifti

    data, image = load_nifti(path)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D label map, got shape {data.shape}")
    return _as_labels(path, data), _nifti_index_of_lps(path, image)


def _as_labels(path: Path | str, data: np.ndarray) -> np.ndarray:
    """Integer labels from a label array; non-integers or negatives are a ``ValueError``."""
    if data.dtype.kind == "b":
        return data.astype(np.int32)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise ValueError(f"{path}: label map holds NaN/Inf")
        if not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: not a label map: values are not integers")
    elif data.dtype.kind not in "iu":
        raise ValueError(f"{path}: not a label map: dtype {data.dtype}")
    if data.size and data.min() < 0:
        raise ValueError(f"{path}: label map holds negative values (minimum {data.min():g})")
    if data.size and data.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path}: label values exceed int32")
    if data.dtype.kind in "iu" and data.dtype.itemsize <= 2:
        return data  # small integers as they are: a CT-sized uint8 mask stays small
    return data.astype(np.int32)


def _check_coverage(source: str, covered: np.ndarray, *, warn_partial: bool = True) -> None:
    """No overlap with the grid is an error; partial coverage a warning (``warn_partial``)."""
    n = int(np.count_nonzero(covered))
    if n == 0:
        raise ValueError(f"{source}: the segmentation does not overlap the study grid")
    if warn_partial and n < covered.size:
        warnings.warn(
            f"{source}: the segmentation covers {n} of {covered.size} study voxels "
            f"({100.0 * n / covered.size:.1f}%); the rest is unlabelled",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------
# From labels on the study grid to an Anatomy


def anatomy_from_labels(
    study: Study,
    labels: np.ndarray,
    names: Mapping[int, str],
    *,
    source: str,
    body: np.ndarray | None = None,
    rename: bool = True,
) -> Anatomy:
    """The `Anatomy` of labels already on the study grid, after every repair importers make.

    Steps: rename TotalSegmentator names (``rename``) and merge segments that share a name;
    take body classes (`BODY_CLASS_NAMES`) out as the body outline (their voxels and every
    labelled voxel), else use ``body``, else the study's CT/μ threshold; drop labelled voxels
    outside the outline (warning with the count); drop named segments with no voxel (warning);
    number the segments 1..N in the order of their first label value.

    Parameters
    ----------
    study
        Gives the grid (and the CT or μ for the body outline).
    labels
        ``[Z, Y, X]`` integer labels on ``study.grid`` (0 = none).
    names
        Label value → name; a label value present in ``labels`` without a name is an error.
    source
        The file (or a description) for messages and ``Anatomy.source``.
    body
        ``[Z, Y, X]`` bool body outline, if known from elsewhere.
    rename
        Apply `TOTALSEGMENTATOR_TO_SPECT`.

    Raises
    ------
    ValueError
        Shape not the grid's, label values without a name, empty names.
    """
    labels = np.asarray(labels)
    if labels.shape != study.grid.shape:
        raise ValueError(
            f"{source}: labels have shape {labels.shape}, the study grid {study.grid.shape}"
        )
    labels = _as_labels(source, labels)
    names = {int(k): str(v).strip() for k, v in names.items()}
    if any(not n for n in names.values()):
        raise ValueError(f"{source}: segment names must be non-empty")
    values, counts = np.unique(labels, return_counts=True)
    found = {int(v): int(n) for v, n in zip(values, counts, strict=True) if v != 0}
    unnamed = sorted(set(found) - set(names))
    if unnamed:
        raise ValueError(f"{source}: label values {unnamed} have no name")
    final = {v: TOTALSEGMENTATOR_TO_SPECT.get(n, n) if rename else n for v, n in names.items()}

    body_values = [v for v, n in final.items() if n in BODY_CLASS_NAMES]
    if body_values:
        body = labels > 0
    elif body is None:
        from recon.io.segmentation_threshold import body_from_threshold

        body = body_from_threshold(study)
    if body is not None:
        body = np.asarray(body, dtype=bool)
        if body.shape != labels.shape:
            raise ValueError(f"{source}: body outline has shape {body.shape}, not {labels.shape}")
    if body_values:
        labels = np.where(np.isin(labels, body_values), 0, labels).astype(np.int32)

    if body is not None:
        outside = (labels > 0) & ~body
        n_out = int(np.count_nonzero(outside))
        if n_out:
            warnings.warn(
                f"{source}: {n_out} labelled voxel(s) lie outside the body outline; dropped",
                stacklevel=2,
            )
            labels = np.where(outside, 0, labels).astype(np.int32)

    order: dict[str, list[int]] = {}
    for value in sorted(final):
        if final[value] not in BODY_CLASS_NAMES:
            order.setdefault(final[value], []).append(value)
    out_names: dict[int, str] = {}
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    empty = []
    for name, olds in order.items():
        olds_here = [v for v in olds if v < lut.size]
        if not olds_here or not np.isin(labels, olds_here).any():
            empty.append(name)
            continue
        new = len(out_names) + 1
        lut[olds_here] = new
        out_names[new] = name
    if empty:
        warnings.warn(
            f"{source}: segment(s) {empty} have no voxel on the study grid; dropped", stacklevel=2
        )
    out = lut[labels]
    return Anatomy(labels=out, names=out_names, body=body, source=source)


# ----------------------------------------------------------------------------------------------
# NIfTI


def _names_argument(names: Mapping[int, str] | PathLike | None) -> tuple[dict[int, str], str]:
    if names is None or (isinstance(names, str) and names.lower() == "totalsegmentator"):
        return dict(TOTALSEGMENTATOR_TOTAL), "TotalSegmentator total class map"
    if isinstance(names, str | os.PathLike):
        return read_names(names), f"names from {names}"
    return {int(k): str(v) for k, v in names.items()}, "names given"


def anatomy_from_nifti(
    study: Study,
    path: PathLike,
    names: Mapping[int, str] | PathLike | None = None,
    *,
    rename: bool = True,
) -> Anatomy:
    """A multi-label NIfTI label map (e.g. TotalSegmentator's ``--ml`` output) on the study grid.

    Parameters
    ----------
    study
        The study whose grid the anatomy is put on (its CT or μ gives the body outline when the
        map has no body class).
    path
        ``.nii`` / ``.nii.gz`` integer label map, any orientation the affine describes (sform,
        else qform); oblique affines work (nearest neighbour through the affine).
    names
        Label value → name: a mapping, a names file (`read_names`), or ``None`` /
        ``"totalsegmentator"`` for TotalSegmentator's ``total`` class map
        (`TOTALSEGMENTATOR_TOTAL`).
    rename
        Rename TotalSegmentator names to the phantom's (`TOTALSEGMENTATOR_TO_SPECT`).

    Raises
    ------
    ValueError
        One line naming the file: not a NIfTI label map, unknown or singular orientation, no
        overlap with the study grid, label values without a name.
    FileNotFoundError
        No such file.

    Warns
    -----
    UserWarning
        Partial coverage of the grid, named labels with no voxel (dropped), labelled voxels
        outside the body outline (dropped).
    """
    p = Path(path)
    table, how = _names_argument(names)
    data, index_of_lps = _load_nifti(p)
    values, covered = nearest_on_grid(data, index_of_lps, study.grid)
    _check_coverage(str(p), covered)
    present = {int(v) for v in np.unique(data)} - {0}
    unnamed = sorted(present - set(table))
    if unnamed:
        raise ValueError(f"{p}: label values {unnamed} have no name ({how})")
    # Only labels the file holds: the rest of a class map is not "empty", just absent.
    table = {v: n for v, n in table.items() if v in present or names is not None}
    return anatomy_from_labels(
        study, values, table, source=f"NIfTI label map {p} ({how})", rename=rename
    )


def _mask_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def anatomy_from_nifti_folder(study: Study, folder: PathLike, *, rename: bool = True) -> Anatomy:
    """A folder of per-structure NIfTI masks (``liver.nii.gz``, ...; name = file stem).

    This is TotalSegmentator's default output. Every non-zero voxel of a mask belongs to the
    structure; masks may have different affines. ``body*.nii.gz`` masks give the body outline.
    Where two structures overlap, the voxel goes to the smaller one (by voxels on the study grid,
    then by name) and a warning names both files and the count: a lesion inside an organ stays
    the lesion.

    Raises
    ------
    ValueError
        One line naming the file: no masks in the folder, a mask that is not a NIfTI mask, an
        unknown or singular orientation, no mask overlapping the study grid.

    Warns
    -----
    UserWarning
        Overlaps, empty masks (dropped), partial coverage, voxels outside the body outline.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    files = sorted(
        f
        for f in root.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.name.endswith((".nii", ".nii.gz"))
    )
    if not files:
        raise ValueError(f"{root}: the folder holds no NIfTI masks (*.nii, *.nii.gz)")
    grid = study.grid
    masks: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    body = None
    any_covered = np.zeros(grid.shape, dtype=bool)
    for f in files:
        data, index_of_lps = _load_nifti(f)
        values, covered = nearest_on_grid(data > 0, index_of_lps, grid)
        any_covered |= covered
        name = _mask_stem(f)
        name = TOTALSEGMENTATOR_TO_SPECT.get(name, name) if rename else name
        if name in BODY_CLASS_NAMES:
            body = values if body is None else body | values
            continue
        masks[name] = values if name not in masks else masks[name] | values
        sources.setdefault(name, []).append(f.name)
    _check_coverage(str(root), any_covered)

    return combine_masks(study, masks, sources, source=f"NIfTI masks {root}", body=body)


def combine_masks(
    study: Study,
    masks: Mapping[str, np.ndarray],
    sources: Mapping[str, list[str]],
    *,
    source: str,
    body: np.ndarray | None = None,
) -> Anatomy:
    """Per-structure bool masks ``[Z, Y, X]`` on the study grid → one `Anatomy`.

    Where structures overlap the voxel goes to the smaller one (by voxels, then by name) and a
    warning names both (by ``sources[name]``, e.g. their files) and the count. ``body``, if
    given, is widened to hold every labelled voxel. Then as `anatomy_from_labels`.
    """
    if not masks:
        raise ValueError(f"{source}: holds no segments (only a body outline, or nothing)")
    grid = study.grid
    sizes = {name: int(np.count_nonzero(m)) for name, m in masks.items()}
    labels = np.zeros(grid.shape, dtype=np.int32)
    names: dict[int, str] = {}
    # Largest first, so smaller structures overwrite larger ones where they overlap.
    ordered = sorted(masks, key=lambda n: (-sizes[n], n))
    for value, name in enumerate(ordered, start=1):
        names[value] = name
        mask = np.asarray(masks[name], dtype=bool)
        taken = labels[mask]
        for other in np.unique(taken[taken > 0]):
            n = int(np.count_nonzero(taken == other))
            big = names[int(other)]
            warnings.warn(
                f"{source}: {'+'.join(sources.get(big, [big]))} and "
                f"{'+'.join(sources.get(name, [name]))} overlap in {n} voxel(s) on the study "
                f"grid; given to {name} (the smaller)",
                stacklevel=3,
            )
        labels[mask] = value
    if body is not None:
        body = np.asarray(body, dtype=bool) | (labels > 0)
    return anatomy_from_labels(study, labels, names, source=source, body=body, rename=False)


# ----------------------------------------------------------------------------------------------
# Any source


def import_anatomy(
    study: Study,
    source: PathLike | None,
    *,
    names: Mapping[int, str] | PathLike | None = None,
    ct_dir: PathLike | None = None,
    threshold: bool = False,
    rename: bool = True,
) -> Anatomy:
    """The anatomy of ``study`` from whatever ``source`` is (what ``spect convert anatomy`` does).

    Parameters
    ----------
    source
        A NIfTI label map (`anatomy_from_nifti`), a folder of NIfTI masks
        (`anatomy_from_nifti_folder`), a DICOM SEG (`recon.io.segmentation_dicom`) or RTSTRUCT
        file (needs ``ct_dir``), or ``None`` with ``threshold`` for a CT/μ threshold
        segmentation (`recon.io.segmentation_threshold.anatomy_from_threshold`).
    names
        For a NIfTI label map: a mapping or names file (default: TotalSegmentator's map).
    ct_dir
        The CT series an RTSTRUCT (or a DICOM SEG) refers to.
    threshold
        Segment the study's CT or μ by thresholds; ``source`` must then be ``None``.
    rename
        Rename TotalSegmentator names to the phantom's.
    """
    if threshold:
        if source is not None:
            raise ValueError(f"{source}: give a segmentation or threshold=True, not both")
        from recon.io.segmentation_threshold import anatomy_from_threshold

        return anatomy_from_threshold(study)
    if source is None:
        raise ValueError("source: no segmentation given (and threshold=False)")
    p = Path(source)
    if p.is_dir():
        return anatomy_from_nifti_folder(study, p, rename=rename)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.name.endswith((".nii", ".nii.gz")):
        return anatomy_from_nifti(study, p, names, rename=rename)
    from recon.io.segmentation_dicom import anatomy_from_dicom

    return anatomy_from_dicom(study, p, ct_dir=ct_dir, rename=rename)


def load_anatomy(study: Study, path: PathLike) -> Anatomy:
    """An anatomy for ``study`` from ``path``: a study file's anatomy (same grid), or any source
    `import_anatomy` reads (NIfTI label map with TotalSegmentator names, folder of masks, DICOM
    SEG). For the ``--anatomy`` options of the anatomy-guided commands.

    Raises
    ------
    ValueError
        One line naming the file: a study file without an anatomy or on another grid; the
        errors of `import_anatomy`.
    """
    import h5py

    from recon.io.hdf5 import read_study

    p = Path(path)
    if p.is_file() and h5py.is_hdf5(p):
        other = read_study(p)
        if other.anatomy is None:
            raise ValueError(f"{p}: the study file holds no anatomy (spect convert anatomy)")
        if other.grid != study.grid:
            raise ValueError(
                f"{p}: its anatomy is on grid {other.grid.shape} × {other.grid.spacing_mm} mm "
                f"offset {other.grid.offset_mm}, not the study's {study.grid.shape} × "
                f"{study.grid.spacing_mm} mm offset {study.grid.offset_mm}"
            )
        return other.anatomy
    return import_anatomy(study, p)

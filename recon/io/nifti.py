"""NIfTI-1 volumes with an affine that viewers (3D Slicer, ITK-SNAP, FSLeyes) display correctly.

NIfTI world coordinates are RAS+ (+x toward the patient's right, +y anterior, +z superior); ours
are DICOM LPS (+x left, +y posterior, +z head), so RAS = (−x, −y, z). Data are stored in
nibabel's index order ``(i, j, k) = (x, y, z)``, i.e. our ``[Z, Y, X]`` transposed, and the
affine maps voxel indices to RAS mm with the grid's offset included::

    affine = [[-dx,   0,  0,  dx·(X−1)/2 − ox],
              [  0, -dy,  0,  dy·(Y−1)/2 − oy],
              [  0,   0, dz, −dz·(Z−1)/2 + oz],
              [  0,   0,  0,  1]]

nibabel's ``aff2axcodes`` reads it as ``("L", "P", "S")``: index i increases toward the left.

`volume_to_nifti` writes a volume of a study or result file (``spect convert to-nifti``);
`nifti_result` wraps another tool's NIfTI volume as a `Result` (``spect convert nifti-to-result``).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.spatialimages import SpatialImage

from recon.io.atomic import write_bytes
from recon.io.limits import MAX_DEFLATE_RATIO, check_array_size
from recon.io.study import Result
from spectproj import ImageGrid

__all__ = [
    "NIFTI_DATASETS",
    "checked_affine",
    "grid_affine_ras",
    "load_nifti",
    "nifti_result",
    "nifti_volume",
    "read_nifti",
    "snap_grid",
    "tidy_nifti_grid",
    "volume_to_nifti",
    "write_nifti",
]

PathLike = str | os.PathLike[str]

#: Largest off-diagonal part of a direction (relative) accepted as axis-aligned.
_OBLIQUE_TOLERANCE = 1e-4


def load_nifti(path: PathLike) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The data array and the image of a NIfTI file, with one-line errors for a bad file.

    The header is read first and its declared shape checked against the file's size and the
    memory budget (`recon.io.limits`) before the data are read.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        ``"<file>: <problem>"``: empty, not NIfTI (random bytes, another format), a header
        declaring more data than the file holds or than the memory budget, truncated or damaged
        data (also a truncated ``.nii.gz``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{p}: empty file (0 bytes), not a NIfTI image")
    try:
        image = nib.load(p)
    except Exception as error:  # nibabel raises many types for bad files (and gzip/zlib its own)
        raise ValueError(f"{p}: not a readable NIfTI file ({_short(error)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{p}: not a NIfTI image ({type(image).__name__})")
    header = image.header
    shape = tuple(int(n) for n in header.get_data_shape())
    itemsize = int(header.get_data_dtype().itemsize)
    if p.name.lower().endswith(".gz"):
        check_array_size(p, "image data", shape, itemsize,
                         file_bytes=size, compression=MAX_DEFLATE_RATIO)  # fmt: skip
    else:
        offset = int(header.get("vox_offset", 0) or 0)
        check_array_size(p, "image data", shape, itemsize, file_bytes=max(size - offset, 0))
    try:
        data = np.asanyarray(image.dataobj)
    except (EOFError, OSError, ValueError, zlib.error) as error:
        raise ValueError(
            f"{p}: image data cannot be read; the file is truncated or damaged ({_short(error)})"
        ) from None
    return data, image


def checked_affine(path: PathLike, image: SpatialImage) -> np.ndarray:
    """The ``[4, 4]`` voxel-to-RAS affine of ``image``; ``ValueError`` if it has NaN/Inf or is
    singular (no orientation can be read from it)."""
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{os.fspath(path)}: orientation unknown: the affine holds NaN/Inf")
    linear = affine[:3, :3]
    scale = float(np.abs(linear).max())
    if scale == 0 or abs(np.linalg.det(linear)) <= 1e-9 * scale**3:
        raise ValueError(
            f"{os.fspath(path)}: orientation unknown: the affine is singular "
            f"(a zero voxel size or repeated axes) {linear.tolist()}"
        )
    return affine


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def grid_affine_ras(grid: ImageGrid) -> np.ndarray:
    """The 4 × 4 affine from NIfTI voxel indices ``(i, j, k) = (x, y, z)`` to RAS+ mm.

    Parameters
    ----------
    grid
        Our grid; voxel ``(k, j, i)`` lies at LPS ``(x, y, z)`` as in ``docs/conventions.md``.

    Returns
    -------
    numpy.ndarray
        ``[4, 4]`` float64; RAS of voxel ``(i, j, k)`` is ``(−x, −y, z)`` of its LPS position.
    """
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing_mm
    oz, oy, ox = grid.offset_mm
    affine = np.diag([-dx, -dy, dz, 1.0])
    affine[:3, 3] = (dx * (nx - 1) / 2 - ox, dy * (ny - 1) / 2 - oy, -dz * (nz - 1) / 2 + oz)
    return affine


def write_nifti(
    path: PathLike, volume_zyx: np.ndarray, grid: ImageGrid, *, overwrite: bool = False
) -> Path:
    """Write a ``[Z, Y, X]`` volume as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    Parameters
    ----------
    path
        Output file; ``.nii.gz`` is gzip-compressed.
    volume_zyx
        ``[Z, Y, X]`` array on ``grid`` (any unit; bool is stored as uint8).
    grid
        Its image grid (shape must match).
    overwrite
        Replace an existing file; otherwise raise ``FileExistsError``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    volume = np.asarray(volume_zyx)
    if volume.shape != grid.shape:
        raise ValueError(f"volume shape {volume.shape} does not match grid shape {grid.shape}")
    if volume.dtype == np.bool_:
        volume = volume.astype(np.uint8)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name ends with .nii or .nii.gz")
    affine = grid_affine_ras(grid)
    image = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
    image.set_qform(affine, code="scanner")
    image.set_sform(affine, code="scanner")
    image.header.set_xyzt_units(xyz="mm")
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    write_bytes(path, payload, overwrite=overwrite)
    return path


def read_nifti(path: PathLike) -> tuple[np.ndarray, ImageGrid]:
    """Read a NIfTI volume into our ``[Z, Y, X]`` LPS order and its grid.

    Any axis-aligned affine is accepted: the axes are permuted and flipped to LPS. The grid's
    offset is the LPS position of the volume centre.

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz``.

    Returns
    -------
    volume_zyx : numpy.ndarray
        ``[Z, Y, X]`` in the file's dtype (scaled to float if the file has a scale slope).
    grid : ImageGrid
        Its grid (spacing and offset in mm).

    Raises
    ------
    ValueError
        Not 3D (after dropping trailing length-1 axes), or an oblique affine.
    """
    path = Path(path)
    data, image = load_nifti(path)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    affine = checked_affine(path, image)
    current = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(("L", "P", "S")))
    data = orientations.apply_orientation(data, transform)
    affine = affine @ orientations.inv_ornt_aff(transform, image.shape[:3])
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    off_diagonal = np.abs(columns - np.diag(np.diag(columns)))
    if np.any(off_diagonal > _OBLIQUE_TOLERANCE * spacing[None, :]):
        raise ValueError(f"{path}: oblique affine (rotated axes) is not supported:\n{affine}")
    shape = data.shape
    centre_ras = affine @ np.array([(n - 1) / 2 for n in shape] + [1.0])
    offset_zyx = (centre_ras[2], -centre_ras[1], -centre_ras[0])
    grid = ImageGrid(
        (shape[2], shape[1], shape[0]),
        (float(spacing[2]), float(spacing[1]), float(spacing[0])),
        tuple(float(o) for o in offset_zyx),  # type: ignore[arg-type]  # ImageGrid checks the length
    )
    return np.ascontiguousarray(data.transpose(2, 1, 0)), grid


# -- study and result files ↔ NIfTI (spect convert to-nifti / nifti-to-result) ------------------
#: Volumes ``spect convert to-nifti`` can write, and where they live in a study or result file.
NIFTI_DATASETS: Mapping[str, str] = {
    "activity": "result /activity, or a study's /truth/activity",
    "truth": "/truth/activity (study)",
    "mu": "/attenuation/mu (study)",
    "ct": "/attenuation/ct_hu (study)",
    "labels": "/truth/labels (study)",
}


def nifti_volume(path: PathLike, dataset: str = "activity") -> tuple[np.ndarray, ImageGrid, str]:
    """A volume of a study or result file, for `write_nifti`.

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
    from recon.io.hdf5 import file_kind, read_result, read_study

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


def volume_to_nifti(
    path: PathLike, output: PathLike, dataset: str = "activity", *, overwrite: bool = False
) -> tuple[np.ndarray, ImageGrid, str]:
    """Write a volume of a study or result file as NIfTI (``spect convert to-nifti``).

    Parameters
    ----------
    path
        Study or result file.
    output
        ``.nii`` or ``.nii.gz`` file, written atomically (`write_nifti`).
    dataset
        Which volume (`nifti_volume`).
    overwrite
        Replace an existing ``output``.

    Returns
    -------
    volume, grid, description
        What was written, as `nifti_volume` returns it.

    Raises
    ------
    ValueError
        ``output`` does not end with ``.nii`` or ``.nii.gz``; the errors of `nifti_volume`.
    FileExistsError
        ``output`` exists and ``overwrite`` is false.
    """
    if not Path(output).name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{output}: a NIfTI file name ends with .nii or .nii.gz")
    volume, grid, what = nifti_volume(path, dataset)
    write_nifti(output, volume, grid, overwrite=overwrite)
    return volume, grid, what


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
        ``.nii`` or ``.nii.gz`` (`read_nifti`: any axis-aligned affine).
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
    from recon.io.hdf5 import read_study

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

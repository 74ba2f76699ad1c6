"""Shared helpers of the DICOM importers: reading files, required attributes, pixel data.

Every error is a one-line ``ValueError`` that names the file and the attribute (keyword and tag).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from recon.io.limits import check_array_size

PathLike = str | os.PathLike[str]
Source = PathLike | Dataset


def tag_text(keyword: str) -> str:
    """``"Keyword (gggg,eeee)"`` for an attribute keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - only our own keywords are passed
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def source_name(ds: Dataset) -> str:
    """The file a dataset was read from, or ``"<dataset>"`` for one built in memory."""
    name = getattr(ds, "filename", None)
    return str(name) if isinstance(name, str | os.PathLike) and str(name) else "<dataset>"


def attribute_error(ds: Dataset, keyword: str, problem: str, where: str = "") -> ValueError:
    """A one-line ``ValueError``: ``"<file>: <where>Keyword (gggg,eeee) <problem>"``."""
    return ValueError(f"{source_name(ds)}: {where}{tag_text(keyword)} {problem}")


def require(
    ds: Dataset, keyword: str, why: str, where: str = "", *, owner: Dataset | None = None
) -> Any:
    """``ds.<keyword>``, or a ``ValueError`` naming the file and the attribute if it is absent.

    ``why`` says what the attribute is needed for. For a sequence item ``ds``, ``where`` locates it
    (e.g. ``"RotationInformationSequence[1] > "``) and ``owner`` is the file's dataset.
    """
    value = ds.get(keyword)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise attribute_error(owner or ds, keyword, f"is missing; it is needed {why}", where)
    return value


def as_floats(value: Any) -> list[float]:
    """A DICOM value (single or multi-valued) as a list of floats."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [float(value)]
    return [float(v) for v in value]


def as_ints(value: Any) -> list[int]:
    """A DICOM value (single or multi-valued) as a list of ints."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [int(value)]
    return [int(v) for v in value]


def read_dataset(path: Source, *, stop_before_pixels: bool = False) -> Dataset:
    """Read one DICOM file (or pass a ``Dataset`` through); a non-DICOM file is a ``ValueError``."""
    if isinstance(path, Dataset):
        return path
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        return pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise ValueError(f"{p}: not a DICOM file ({err})") from None
    except Exception as err:  # a damaged or truncated file: pydicom raises many types
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(f"{p}: not a readable DICOM file; truncated or damaged ({text})") from None


def check_pixel_size(ds: Dataset) -> None:
    """Refuse pixel data whose declared size (Rows × Columns × NumberOfFrames × samples ×
    bits) is above the memory budget (`recon.io.limits`) before decoding it."""
    try:
        shape = (
            int(ds.get("NumberOfFrames", 1) or 1),
            int(ds.get("Rows", 0) or 0),
            int(ds.get("Columns", 0) or 0),
            int(ds.get("SamplesPerPixel", 1) or 1),
        )
        itemsize = max(int(ds.get("BitsAllocated", 16) or 16) // 8, 1)
    except (TypeError, ValueError) as err:
        raise attribute_error(ds, "Rows", f"size attributes are not integers ({err})") from None
    # float64 in memory after the rescale
    check_array_size(getattr(ds, "filename", None) or "DICOM", "PixelData", shape, max(itemsize, 8))


def list_files(source: PathLike | Sequence[PathLike]) -> list[Path]:
    """The files named by ``source``: a file, a folder (its non-hidden files) or a list of files."""
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise ValueError(f"{p}: the folder holds no files")
            return files
        return [p]
    files = [Path(f) for f in source]
    if not files:
        raise ValueError("no DICOM files were given")
    return files


def frames(ds: Dataset) -> np.ndarray:
    """Pixel data ``[frames, rows, columns]`` as float64, Rescale Slope/Intercept applied."""
    check_pixel_size(ds)
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as err:  # pydicom raises several types for absent/undecodable pixel data
        raise attribute_error(ds, "PixelData", f"cannot be decoded ({err})") from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3 or pixels.shape[0] != n_frames:
        raise attribute_error(
            ds, "NumberOfFrames", f"= {n_frames} does not match the pixel data {pixels.shape}"
        )
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope is not None:
        pixels = pixels * float(slope)
    if intercept is not None:
        pixels = pixels + float(intercept)
    return pixels


def pixel_spacing(ds: Dataset, why: str) -> tuple[float, float]:
    """``PixelSpacing`` as ``(row spacing, column spacing)`` in mm: the height of a row (distance
    between adjacent rows) and the width of a column."""
    value = as_floats(require(ds, "PixelSpacing", why))
    if len(value) != 2 or not all(np.isfinite(v) and v > 0 for v in value):
        raise attribute_error(ds, "PixelSpacing", f"= {value} is not two positive lengths (mm)")
    return value[0], value[1]

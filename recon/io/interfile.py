"""Interfile 3.3 volumes and projections, as written by GATE, SIMIND and STIR.

A header (``.h33``, ``.hv``, ``.hs``) of ``key := value`` lines describes a raw data file.
:func:`read_interfile` returns the data in the axis orders of ``docs/conventions.md``;
:func:`write_interfile` is its inverse. The orientation choices are explained in
``docs/importers.md``:

- volumes: the file's pixel stream is ``[slice, row, column]`` (matrix size [3], [2], [1]);
  ``orientation`` names the patient direction in which column, row and slice indices increase
  (default ``"LAI"``: GATE/SIMIND voxelised phantoms, and the shared patient phantom; STIR writes
  ``"LPI"`` for a head-first supine patient). The result is ``[Z, Y, X]`` in LPS.
- projections: the stream is ``[projection, row, bin]``; the file's row 0 is the head end of the
  image (rows are flipped so that our row index increases toward the head), bins are kept.
- angles: the Interfile camera angle of projection k is ``start + s·k·extent/N`` (s = +1 for CCW,
  −1 for CW), and β = (that angle + ``angle_offset_deg``) mod 360 with offset 0 by default
  (SIMIND's angle 0 is the anterior position, as in PyTomography's SIMIND reader).

:func:`interfile_study` makes a `Study` of projections and a μ or CT volume
(``spect convert interfile``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from recon.io._common import canonical_isotope, detector_grid
from recon.io.atomic import atomic_output
from recon.io.limits import check_array_size
from recon.io.study import Acquisition, Study
from spectproj import ImageGrid, hu_to_mu_per_mm

__all__ = [
    "InterfileError",
    "InterfileImage",
    "interfile_study",
    "parse_interfile_header",
    "read_interfile",
    "reorient_from_zyx",
    "reorient_spacing",
    "reorient_to_zyx",
    "spacing_to_array_order",
    "write_interfile",
]

PathLike = str | os.PathLike[str]

#: Size in bytes of one block for ``data starting block`` (Interfile 3.3).
INTERFILE_BLOCK_BYTES = 2048

# Patient direction letter -> (our axis: 0 = z, 1 = y, 2 = x; reversed relative to ours?).
_DIRECTIONS: dict[str, tuple[int, bool]] = {
    "S": (0, False),
    "I": (0, True),
    "P": (1, False),
    "A": (1, True),
    "L": (2, False),
    "R": (2, True),
}

_DATA_SUFFIX = {".h33": ".i33", ".hv": ".v", ".hs": ".s", ".hdr": ".img"}


class InterfileError(ValueError):
    """An Interfile header or its data file is not what it should be.

    The message is one line, ``"<header>: <key>: <problem>"``, for example
    ``"phantom.h33: matrix size [1]: missing"``.

    Parameters
    ----------
    header
        Path of the header file.
    key
        The (normalised) header key concerned, or ``"data file"``.
    problem
        What is wrong, in a few words.
    """

    def __init__(self, header: PathLike, key: str, problem: str) -> None:
        self.header = os.fspath(header)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.header}: {key}: {problem}")

    def __reduce__(self) -> tuple[type[InterfileError], tuple[str, str, str]]:
        return (type(self), (self.header, self.key, self.problem))


@dataclass(frozen=True, eq=False)
class InterfileImage:
    """An Interfile volume or projection set, in the axis orders of ``docs/conventions.md``.

    Attributes
    ----------
    data
        ``kind == "volume"``: ``[Z, Y, X]`` in the LPS patient frame (+x left, +y posterior,
        +z head). ``kind == "projections"``: ``[V, rows, bins]``, row index increasing toward the
        head, bins along r = x cos β − y sin β. The dtype is the file's (native byte order).
    spacing_mm
        Volume: ``(dz, dy, dx)`` in mm. Projections: ``(row height, bin width)`` in mm.
    kind
        ``"volume"`` or ``"projections"``.
    header
        Every ``key := value`` of the header, keys normalised (lower case, no ``!``, single
        spaces, ``"matrix size [1]"``), values as written.
    header_path, data_path
        The two files.
    n_projections
        Number of projections V (projections only).
    start_angle_deg, extent_of_rotation_deg, direction_of_rotation
        The header's ``start angle``, ``extent of rotation`` (degrees) and ``direction of
        rotation`` (``"CW"`` or ``"CCW"``) (projections only).
    angles_deg
        Detector angle β (degrees, ``docs/conventions.md``) of each projection (projections only).
    radius_mm
        ``Radius`` converted to mm, if the header has it.
    """

    data: np.ndarray
    spacing_mm: tuple[float, ...]
    kind: Literal["volume", "projections"]
    header: Mapping[str, str] = field(repr=False)
    header_path: Path
    data_path: Path
    n_projections: int | None = None
    start_angle_deg: float | None = None
    extent_of_rotation_deg: float | None = None
    direction_of_rotation: Literal["CW", "CCW"] | None = None
    angles_deg: tuple[float, ...] | None = None
    radius_mm: float | None = None

    def grid(self, offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> ImageGrid:
        """The :class:`spectproj.ImageGrid` of a volume (centred on the axis by default)."""
        if self.kind != "volume":
            raise ValueError(f"{self.header_path}: holds projections, not a volume: no grid")
        return ImageGrid(self.data.shape, self.spacing_mm, offset_mm)  # type: ignore[arg-type]  # ImageGrid checks the length


# -- orientation --------------------------------------------------------------------------------
def _parse_orientation(code: str) -> list[tuple[int, bool]]:
    letters = str(code).strip().upper()
    parts = [_DIRECTIONS.get(c) for c in letters]
    if len(letters) != 3 or None in parts or sorted(p[0] for p in parts) != [0, 1, 2]:  # type: ignore[index]  # None excluded just before
        raise ValueError(
            f"orientation must be three letters, one of R/L, A/P, S/I each (e.g. 'LAI'), "
            f"got {code!r}"
        )
    return parts  # type: ignore[return-value]  # None excluded by the check above


def reorient_to_zyx(array: np.ndarray, orientation: str) -> np.ndarray:
    """Reorder a 3D array whose axes are described by ``orientation`` into our ``[Z, Y, X]``.

    Parameters
    ----------
    array
        A 3D array ``[a0, a1, a2]``.
    orientation
        Three letters, one per array axis **in array order** (a0, a1, a2): the patient direction
        in which that index increases (R/L, A/P, S/I). Our own order ``[Z, Y, X]`` is ``"SPL"``.

    Returns
    -------
    numpy.ndarray
        A view ``[Z, Y, X]`` with +z toward the head, +y posterior, +x toward the patient's left.
    """
    parts = _parse_orientation(orientation)
    if np.ndim(array) != 3:
        raise ValueError(f"expected a 3D array, got shape {np.shape(array)}")
    flips = tuple(a for a, (_, rev) in enumerate(parts) if rev)
    flipped = np.flip(array, axis=flips) if flips else array
    perm = [next(a for a, (ours, _) in enumerate(parts) if ours == m) for m in range(3)]
    return np.transpose(flipped, perm)


def reorient_from_zyx(volume_zyx: np.ndarray, orientation: str) -> np.ndarray:
    """Inverse of :func:`reorient_to_zyx`: ``[Z, Y, X]`` to the axes named by ``orientation``."""
    parts = _parse_orientation(orientation)
    if np.ndim(volume_zyx) != 3:
        raise ValueError(f"expected a 3D array [Z, Y, X], got shape {np.shape(volume_zyx)}")
    out = np.transpose(volume_zyx, [ours for ours, _ in parts])
    flips = tuple(a for a, (_, rev) in enumerate(parts) if rev)
    return np.flip(out, axis=flips) if flips else out


def _array_orientation(orientation: str) -> str:
    """An Interfile orientation (column, row, slice) as a code in array order (slice, row, col)."""
    _parse_orientation(orientation)
    return str(orientation).strip().upper()[::-1]


def reorient_spacing(spacing: Sequence[float], orientation: str) -> tuple[float, float, float]:
    """Voxel sizes given per array axis (array order of ``orientation``) as ``(dz, dy, dx)``."""
    parts = _parse_orientation(orientation)
    return tuple(spacing[next(a for a, (o, _) in enumerate(parts) if o == m)] for m in range(3))  # type: ignore[return-value]  # one per axis m = 0..2


def spacing_to_array_order(
    spacing_zyx: Sequence[float], orientation: str
) -> tuple[float, float, float]:
    """Inverse of :func:`reorient_spacing`: voxel sizes ``(dz, dy, dx)`` along the patient axes,
    reordered as the array's axes.

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
    parts = _parse_orientation(orientation)
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive lengths (mm), got {tuple(spacing_zyx)}")
    return (spacing[parts[0][0]], spacing[parts[1][0]], spacing[parts[2][0]])


# -- header parsing ----------------------------------------------------------------------------
#: Largest header file read (bytes): headers are text of a few kB.
MAX_HEADER_BYTES = 1 << 20


def _normalise_key(key: str) -> str:
    key = key.strip().lstrip("!").strip().lower()
    key = re.sub(r"\s+", " ", key)
    return re.sub(r"\s*\[\s*(\d+)\s*\]", r" [\1]", key)


def parse_interfile_header(header_path: PathLike) -> dict[str, str]:
    """Read an Interfile header into ``{normalised key: value}``.

    Keys are lower-cased, stripped of a leading ``!`` and of repeated spaces, and indices are
    written ``"matrix size [1]"``. Text after ``;`` is a comment. Parsing stops at
    ``END OF INTERFILE``. The first occurrence of a key wins.

    Raises
    ------
    InterfileError
        The file holds no ``key := value`` line.
    """
    path = Path(header_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_HEADER_BYTES:
        raise InterfileError(
            path, "header", f"{size} bytes: not an Interfile header (a text file of a few kB)"
        )
    text = path.read_bytes().decode("latin-1")
    header: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split(";", 1)[0]
        if ":=" not in line:
            continue
        key, value = line.split(":=", 1)
        key = _normalise_key(key)
        if key == "end of interfile":
            break
        if key:
            header.setdefault(key, value.strip())
    if not header:
        raise InterfileError(path, "header", "no 'key := value' lines: not an Interfile header")
    return header


class _Header:
    """Typed access to header values with errors naming the header and the key."""

    def __init__(self, path: Path, values: Mapping[str, str]) -> None:
        self.path = path
        self.values = values

    def has(self, key: str) -> bool:
        return bool(self.values.get(key, "").strip())

    def text(self, key: str, default: str | None = None) -> str:
        value = self.values.get(key, "").strip()
        if value:
            return value
        if default is None:
            raise InterfileError(self.path, key, "missing")
        return default

    def number(self, key: str, default: float | None = None) -> float:
        if not self.has(key):
            if default is None:
                raise InterfileError(self.path, key, "missing")
            return default
        raw = self.text(key)
        try:
            value = float(raw)
        except ValueError:
            raise InterfileError(self.path, key, f"not a number: {raw!r}") from None
        if not math.isfinite(value):
            raise InterfileError(self.path, key, f"not a finite number: {raw!r}")
        return value

    def positive(self, key: str, default: float | None = None) -> float:
        value = self.number(key, default)
        if value <= 0:
            raise InterfileError(self.path, key, f"must be positive, got {self.text(key)!r}")
        return value

    def count(self, key: str, default: int | None = None) -> int:
        value = self.number(key, None if default is None else float(default))
        if value != int(value) or value < 1:
            raise InterfileError(self.path, key, f"must be a positive integer, got {value:g}")
        return int(value)

    def first_count(self, keys: Sequence[str]) -> int:
        for key in keys:
            if self.has(key):
                return self.count(key)
        raise InterfileError(self.path, " / ".join(keys), "missing")


def _dtype(h: _Header) -> np.dtype:
    fmt = re.sub(r"\s+", " ", h.text("number format", "unsigned integer").lower())
    if fmt in ("short float", "float", "long float"):
        default = 8 if fmt == "long float" else 4
        nbytes = h.count("number of bytes per pixel", default)
        expected = {"short float": (4,), "long float": (8,), "float": (4, 8)}[fmt]
        if nbytes not in expected:
            raise InterfileError(
                h.path, "number of bytes per pixel", f"{nbytes} does not fit '{fmt}'"
            )
        kind = "f"
    elif fmt in ("unsigned integer", "signed integer"):
        nbytes = h.count("number of bytes per pixel")
        if nbytes not in (1, 2, 4, 8):
            raise InterfileError(
                h.path, "number of bytes per pixel", f"{nbytes} is not 1, 2, 4 or 8"
            )
        kind = "u" if fmt.startswith("unsigned") else "i"
    else:
        raise InterfileError(
            h.path,
            "number format",
            f"unsupported {fmt!r} (expected unsigned integer, signed integer, float, "
            "short float or long float)",
        )
    order = h.text("imagedata byte order", "BIGENDIAN").upper().replace(" ", "")
    if order not in ("LITTLEENDIAN", "BIGENDIAN"):
        raise InterfileError(
            h.path, "imagedata byte order", f"expected LITTLEENDIAN or BIGENDIAN, got {order!r}"
        )
    return np.dtype(f"{'<' if order == 'LITTLEENDIAN' else '>'}{kind}{nbytes}")


def _kind(h: _Header) -> Literal["volume", "projections"]:
    status = h.text("process status", "").lower()
    if status.startswith("reconstructed"):
        return "volume"
    if status.startswith("acquired"):
        return "projections"
    if h.has("matrix size [3]") or h.has("number of slices"):
        return "volume"
    return "projections" if h.has("number of projections") else "volume"


def _slice_thickness_mm(h: _Header, dx: float) -> float:
    """z voxel size: ``scaling factor [3]``, else ``slice thickness (pixels)``, else dx.

    ``slice thickness (pixels)`` is in pixels by the standard, but GATE reads and writes it in
    mm. Without ``scaling factor [3]`` the value is taken in pixels (× dx) when it is within
    0.001 of 1, and in mm otherwise.
    """
    if h.has("scaling factor (mm/pixel) [3]"):
        return h.positive("scaling factor (mm/pixel) [3]")
    if h.has("slice thickness (pixels)"):
        value = h.positive("slice thickness (pixels)")
        return value * dx if abs(value - 1.0) <= 1e-3 else value
    return dx


def _data_path(h: _Header, allow_outside: bool = False) -> Path:
    name = h.text("name of data file")
    path = Path(name)
    if not path.is_absolute():
        path = h.path.parent / path
    folder = h.path.parent.resolve()
    if not allow_outside and not path.resolve().is_relative_to(folder):
        raise InterfileError(
            h.path,
            "name of data file",
            f"{name!r} is outside the header's folder {folder} (allow it with "
            "allow_outside_data=True, on the command line --allow-outside-data)",
        )
    if not path.is_file():
        raise InterfileError(h.path, "name of data file", f"data file {path} not found")
    return path


def _offset_bytes(h: _Header) -> int:
    if h.has("data offset in bytes"):
        value = h.number("data offset in bytes")
        scale = 1
        key = "data offset in bytes"
    else:
        value = h.number("data starting block", 0.0)
        scale = INTERFILE_BLOCK_BYTES
        key = "data starting block"
    if value < 0 or value != int(value):
        raise InterfileError(h.path, key, f"must be a non-negative integer, got {value:g}")
    return int(value) * scale


def _direction(h: _Header) -> Literal["CW", "CCW"]:
    raw = h.text("direction of rotation", "CCW").upper().replace(" ", "")
    if raw in ("CW", "CLOCKWISE"):
        return "CW"
    if raw in ("CCW", "CC", "COUNTERCLOCKWISE", "ANTICLOCKWISE"):
        return "CCW"
    raise InterfileError(h.path, "direction of rotation", f"expected CW or CCW, got {raw!r}")


def read_interfile(
    header_path: PathLike,
    *,
    orientation: str = "LAI",
    flip_rows: bool = True,
    flip_bins: bool = False,
    angle_offset_deg: float = 0.0,
    radius_unit: Literal["mm", "cm"] = "mm",
    kind: Literal["volume", "projections"] | None = None,
    allow_outside_data: bool = False,
) -> InterfileImage:
    """Read an Interfile 3.3 header and its data file.

    Parameters
    ----------
    header_path
        The header (``.h33``, ``.hv``, ``.hs``, ...). ``name of data file`` is relative to its
        folder unless absolute.
    orientation
        Volumes: the patient directions in which the file's column, row and slice indices
        increase (matrix size [1], [2], [3] order), one letter each of R/L, A/P, S/I. Default
        ``"LAI"`` (GATE/SIMIND voxelised phantoms and the shared patient phantom); STIR images
        of a head-first supine patient are ``"LPI"``; ``"LPS"`` keeps the file's axes.
    flip_rows, flip_bins
        Projections: reverse the file's rows (default: the file's row 0 is the head end) or bins
        (default: kept; bin index increases along r = x cos β − y sin β).
    angle_offset_deg
        Added to the Interfile camera angle to give β (degrees). Default 0 (SIMIND: angle 0 is
        the anterior camera position; PyTomography's SIMIND reader does the same). PyTomography's
        DICOM reader would correspond to 180.
    radius_unit
        Unit of the header's ``Radius`` (Interfile: mm; some SIMIND headers use cm).
    kind
        Force ``"volume"`` or ``"projections"``; by default decided from ``process status``
        (reconstructed/acquired), then from ``matrix size [3]``/``number of slices`` (volume) or
        ``number of projections``.
    allow_outside_data
        Read a data file outside the header's folder (``../x``, an absolute path elsewhere).
        By default it must sit in or under the header's folder, so that a header cannot make
        spect read an unrelated file.

    Returns
    -------
    InterfileImage
        Data in our axis orders (see :class:`InterfileImage`).

    Raises
    ------
    InterfileError
        (a ``ValueError``) naming the header and the key: a missing or invalid key, an
        unsupported number format, a missing data file, one outside the header's folder, one
        whose size does not match, a declared size above the memory budget
        (`recon.io.limits`), NaN/Inf values.
    """
    array_code = _array_orientation(orientation)
    if radius_unit not in ("mm", "cm"):
        raise ValueError(f"radius_unit must be 'mm' or 'cm', got {radius_unit!r}")
    if kind not in (None, "volume", "projections"):
        raise ValueError(f"kind must be 'volume', 'projections' or None, got {kind!r}")
    path = Path(header_path)
    h = _Header(path, parse_interfile_header(path))
    kind = kind or _kind(h)
    dtype = _dtype(h)
    n1 = h.count("matrix size [1]")
    n2 = h.count("matrix size [2]")
    d1 = h.positive("scaling factor (mm/pixel) [1]")
    d2 = h.positive("scaling factor (mm/pixel) [2]")
    if kind == "volume":
        n3 = h.first_count(
            [
                "matrix size [3]",
                "number of slices",
                "total number of images",
                "number of images",
                "number of images/energy window",
                "number of projections",
            ]
        )
    else:
        n3 = h.first_count(
            ["number of projections", "total number of images", "number of images/energy window"]
        )
    data_path = _data_path(h, allow_outside_data)
    offset = _offset_bytes(h)
    check_array_size(path, "matrix size", (n3, n2, n1), dtype.itemsize)
    expected = n1 * n2 * n3 * dtype.itemsize
    size = data_path.stat().st_size
    if size != offset + expected:
        raise InterfileError(
            path,
            "data file",
            f"{data_path.name} has {size} bytes, the header describes {offset} + {n3}×{n2}×{n1}"
            f"×{dtype.itemsize} = {offset + expected} (matrix size, number format, bytes per "
            "pixel, offset)",
        )
    raw = np.fromfile(data_path, dtype=dtype, count=n1 * n2 * n3, offset=offset)
    raw = raw.astype(dtype.newbyteorder("="), copy=False).reshape(n3, n2, n1)
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        raise InterfileError(path, "data file", f"{data_path.name} holds {bad} NaN/Inf values")
    radius = None
    if h.has("radius"):
        radius = h.positive("radius") * (10.0 if radius_unit == "cm" else 1.0)
    if kind == "volume":
        return InterfileImage(
            data=np.ascontiguousarray(reorient_to_zyx(raw, array_code)),
            spacing_mm=reorient_spacing((_slice_thickness_mm(h, d1), d2, d1), array_code),
            kind="volume",
            header=h.values,
            header_path=path,
            data_path=data_path,
            radius_mm=radius,
        )
    axes = (1,) * flip_rows + (2,) * flip_bins
    data = np.flip(raw, axis=axes) if axes else raw
    start = h.number("start angle", 0.0)
    extent = h.number("extent of rotation", 360.0)
    direction = _direction(h)
    sign = 1.0 if direction == "CCW" else -1.0
    angles = tuple(
        float((start + sign * k * extent / n3 + angle_offset_deg) % 360.0) for k in range(n3)
    )
    return InterfileImage(
        data=np.ascontiguousarray(data),
        spacing_mm=(d2, d1),
        kind="projections",
        header=h.values,
        header_path=path,
        data_path=data_path,
        n_projections=n3,
        start_angle_deg=start,
        extent_of_rotation_deg=extent,
        direction_of_rotation=direction,
        angles_deg=angles,
        radius_mm=radius,
    )


# -- writing -----------------------------------------------------------------------------------
_FORMATS = {"u": "unsigned integer", "i": "signed integer", "f": "float"}


def _file_dtype(data: np.ndarray) -> np.dtype:
    dt = np.dtype("u1") if data.dtype == np.bool_ else data.dtype
    if dt.kind not in _FORMATS or dt.itemsize not in ((4, 8) if dt.kind == "f" else (1, 2, 4, 8)):
        raise ValueError(
            f"data dtype {data.dtype} cannot be written as Interfile (use unsigned/signed "
            "integers of 1, 2, 4 or 8 bytes, float32 or float64)"
        )
    return dt.newbyteorder("<")


def _fmt(value: float) -> str:
    return repr(float(value))


def _angles_to_interfile(
    angles_deg: Sequence[float], offset_deg: float
) -> tuple[float, float, Literal["CW", "CCW"]]:
    angles = [(float(a) - offset_deg) % 360.0 for a in angles_deg]
    n = len(angles)
    if n == 0:
        raise ValueError("angles_deg must hold one angle per projection, got none")
    if n == 1:
        return angles[0], 360.0, "CCW"
    step = (angles[1] - angles[0]) % 360.0
    direction: Literal["CW", "CCW"] = "CCW" if step <= 180.0 else "CW"
    step = step if direction == "CCW" else 360.0 - step
    sign = 1.0 if direction == "CCW" else -1.0
    for k, a in enumerate(angles):
        err = ((a - angles[0] - sign * k * step + 180.0) % 360.0) - 180.0
        if abs(err) > 1e-6 or step == 0.0:
            raise ValueError(
                "Interfile describes equally spaced angles only (start angle, extent of rotation, "
                f"direction); angles_deg {tuple(angles_deg)!r} are not"
            )
    return angles[0], step * n, direction


def write_interfile(
    header_path: PathLike,
    data: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    angles_deg: Sequence[float] | None = None,
    radius_mm: float | None = None,
    orientation: str = "LAI",
    flip_rows: bool = True,
    flip_bins: bool = False,
    angle_offset_deg: float = 0.0,
    extra_keys: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a volume or projection set as an Interfile 3.3 header plus raw data file.

    The inverse of :func:`read_interfile` with the same orientation options. Both files are
    written to temporary names in the header's folder and then renamed (data first), so neither
    appears half-written.

    Parameters
    ----------
    header_path
        Header path; the data file gets the same stem with ``.i33`` (for ``.h33``), ``.v``
        (``.hv``), ``.s`` (``.hs``) or ``.img`` (otherwise).
    data
        Volume ``[Z, Y, X]`` (LPS) when ``angles_deg`` is None, else projections
        ``[V, rows, bins]``. Written little-endian in its own dtype (bool as 1-byte unsigned).
    spacing_mm
        Volume: ``(dz, dy, dx)``; projections: ``(row height, bin width)``, in mm.
    angles_deg
        β of each projection (degrees); must be equally spaced. Its presence makes the file a
        projection set.
    radius_mm
        Rotation radius (mm), written as ``Radius``.
    orientation, flip_rows, flip_bins, angle_offset_deg
        As in :func:`read_interfile`.
    extra_keys
        More ``key := value`` lines for the header (e.g. ``{"patient name": "phantom"}``).
    overwrite
        Replace existing files; otherwise an existing header or data file raises
        ``FileExistsError``.

    Returns
    -------
    pathlib.Path
        The header path.
    """
    header_path = Path(header_path)
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"data must be 3D ([Z, Y, X] or [V, rows, bins]), got shape {arr.shape}")
    dtype = _file_dtype(arr)
    spacing = tuple(float(s) for s in spacing_mm)
    ndim_spacing = 3 if angles_deg is None else 2
    if len(spacing) != ndim_spacing or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing_mm must be {ndim_spacing} positive lengths (mm), got {tuple(spacing_mm)!r}"
        )
    if radius_mm is not None and not (math.isfinite(radius_mm) and radius_mm > 0):
        raise ValueError(f"radius_mm must be a positive length (mm) or None, got {radius_mm!r}")
    data_path = header_path.with_suffix(_DATA_SUFFIX.get(header_path.suffix.lower(), ".img"))
    if data_path == header_path:
        raise ValueError(f"{header_path}: the header needs a suffix such as .h33, .hv or .hs")
    if angles_deg is None:
        array_code = _array_orientation(orientation)
        raw = reorient_from_zyx(arr, array_code)
        d3, d2, d1 = (spacing[ours] for ours, _ in _parse_orientation(array_code))
        lines = _common_keys(data_path, raw.shape, dtype)
        lines += [
            "!SPECT STUDY (General) :=",
            "!process status := reconstructed",
            "number of dimensions := 3",
            f"!matrix size [1] := {raw.shape[2]}",
            f"!matrix size [2] := {raw.shape[1]}",
            f"!matrix size [3] := {raw.shape[0]}",
            f"scaling factor (mm/pixel) [1] := {_fmt(d1)}",
            f"scaling factor (mm/pixel) [2] := {_fmt(d2)}",
            f"scaling factor (mm/pixel) [3] := {_fmt(d3)}",
            "!SPECT STUDY (reconstructed data) :=",
            f"!number of slices := {raw.shape[0]}",
            "; GATE reads this key in mm (scaling factor [3] takes precedence here)",
            f"slice thickness (pixels) := {_fmt(d3)}",
            f"; spect orientation of column, row, slice := {orientation.upper()}",
        ]
    else:
        if len(angles_deg) != arr.shape[0]:
            raise ValueError(
                f"angles_deg has {len(angles_deg)} angles for {arr.shape[0]} projections"
            )
        start, extent, direction = _angles_to_interfile(angles_deg, angle_offset_deg)
        axes = (1,) * flip_rows + (2,) * flip_bins
        raw = np.flip(arr, axis=axes) if axes else arr
        lines = _common_keys(data_path, raw.shape, dtype)
        lines += [
            "!SPECT STUDY (General) :=",
            f"!matrix size [1] := {raw.shape[2]}",
            f"!matrix size [2] := {raw.shape[1]}",
            f"scaling factor (mm/pixel) [1] := {_fmt(spacing[1])}",
            f"scaling factor (mm/pixel) [2] := {_fmt(spacing[0])}",
            f"!number of projections := {raw.shape[0]}",
            f"!extent of rotation := {_fmt(extent)}",
            "!process status := acquired",
            "!SPECT STUDY (acquired data) :=",
            f"!direction of rotation := {direction}",
            f"start angle := {_fmt(start)}",
        ]
        if radius_mm is not None:
            lines += ["orbit := circular", f"Radius := {_fmt(radius_mm)}"]
    for key, value in (extra_keys or {}).items():
        if "\n" in f"{key}{value}" or ":=" in str(key):
            raise ValueError(f"extra_keys entry {key!r}: {value!r} is not a one-line key/value")
        lines.append(f"{key} := {value}")
    lines.append("!END OF INTERFILE :=")
    payload = np.ascontiguousarray(raw, dtype=dtype).tobytes()
    with (
        atomic_output(header_path, overwrite=overwrite) as tmp_header,
        atomic_output(data_path, overwrite=overwrite) as tmp_data,
    ):
        tmp_data.write_bytes(payload)
        tmp_header.write_text("\n".join(lines) + "\n", encoding="ascii", errors="replace")
    return header_path


def _common_keys(data_path: Path, shape: tuple[int, ...], dtype: np.dtype) -> list[str]:
    return [
        "!INTERFILE :=",
        "!imaging modality := nucmed",
        "!version of keys := 3.3",
        "!GENERAL DATA :=",
        "!data offset in bytes := 0",
        f"!name of data file := {data_path.name}",
        "!GENERAL IMAGE DATA :=",
        "!type of data := Tomographic",
        f"!total number of images := {shape[0]}",
        "imagedata byte order := LITTLEENDIAN",
        f"!number format := {_FORMATS[dtype.kind]}",
        f"!number of bytes per pixel := {dtype.itemsize}",
    ]


# -- projections + an attenuation volume → study ----------------------------------------------
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
    allow_outside_data: bool = False,
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
    allow_outside_data
        Let the headers name data files outside their folders (`read_interfile`).

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
    if mu_header is not None and ct_header is not None:
        raise ValueError("give either a μ volume (--mu) or a CT (--ct), not both")
    if mu_unit not in ("1/mm", "1/cm"):
        raise ValueError(f"mu_unit must be '1/mm' or '1/cm', got {mu_unit!r}")
    projections = read_interfile(
        projections_header, orientation=orientation, allow_outside_data=allow_outside_data
    )
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
        volume = read_interfile(
            volume_header, orientation=orientation, allow_outside_data=allow_outside_data
        )
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

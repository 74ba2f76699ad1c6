"""Nuclear-medicine DICOM (NM Image IOD): planar AP/PA images and tomographic projections.

Everything returned follows ``docs/conventions.md``: projections ``[V, rows, bins]`` with rows
increasing toward the head and bins along r = x·cos β − y·sin β (x toward the patient's left,
y toward posterior), β the detector position (0 anterior, 90 patient right, 180 posterior,
270 patient left). ``docs/dicom.md`` explains every orientation and angle decision.
`dicom_planar_study` and `dicom_tomo_study` make a `Study` of the files and, optionally, a CT
series (`recon.io.dicom_ct.ct_on_grid`): ``spect convert dicom-planar`` and ``dicom-tomo``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, overload

import numpy as np
from pydicom.dataset import Dataset

from recon.io._common import detector_grid
from recon.io._dicom_common import (
    PathLike,
    as_floats,
    as_ints,
    attribute_error,
    frames,
    list_files,
    pixel_spacing,
    read_dataset,
    require,
    source_name,
    tag_text,
)
from recon.io.dicom_ct import ct_on_grid
from recon.io.study import Acquisition, EnergyWindow, Study
from spectproj import CollimatorSpec, ImageGrid
from spectproj.collimator_table import collimator_spec, match_dicom_collimator

__all__ = [
    "PHOTOPEAKS_KEV",
    "NmTomo",
    "PlanarImages",
    "dicom_angle_to_beta",
    "dicom_collimator",
    "dicom_datetime",
    "dicom_planar_study",
    "dicom_tomo_study",
    "nm_planar_study",
    "parse_isotope",
    "photopeak_window_index",
    "read_nm_planar",
    "read_nm_tomo",
    "read_nm_tomo_details",
]

#: Photopeaks (keV) of common SPECT isotopes, the preferred (most used) peak first.
PHOTOPEAKS_KEV: Mapping[str, tuple[float, ...]] = {
    "Tc-99m": (140.5,),
    "Lu-177": (208.4, 112.9),
    "I-131": (364.5,),
    "In-111": (171.3, 245.4),
    "I-123": (159.0,),
    "Ga-67": (93.3, 184.6, 300.2),
}

_ELEMENTS = {
    "technetium": "Tc", "tc": "Tc", "lutetium": "Lu", "lu": "Lu", "iodine": "I", "i": "I",
    "indium": "In", "in": "In", "gallium": "Ga", "ga": "Ga", "thallium": "Tl", "tl": "Tl",
    "yttrium": "Y", "y": "Y", "holmium": "Ho", "ho": "Ho", "rhenium": "Re", "re": "Re",
    "samarium": "Sm", "sm": "Sm", "radium": "Ra", "ra": "Ra", "xenon": "Xe", "xe": "Xe",
}  # fmt: skip
_STANDARD_DISPLAY = "standard display assumed (head at the top, seen from the detector)"
_AXIS_TOLERANCE = 0.99  # |direction cosine| above this = along that patient axis (≈ 8°)


# -- angles, isotopes, energies -----------------------------------------------------------------
@overload
def dicom_angle_to_beta(dicom_angle_deg: np.ndarray) -> np.ndarray: ...
@overload
def dicom_angle_to_beta(dicom_angle_deg: float) -> float: ...
def dicom_angle_to_beta(dicom_angle_deg: float | np.ndarray) -> float | np.ndarray:
    """Detector angle β (docs/conventions.md) of a DICOM NM detector angle, in degrees.

    DICOM measures the detector position from the patient's back (posterior), increasing
    counter-clockwise seen from the feet (back → left → front → right); β measures it from the
    front, increasing the same way (front → right → back → left). So β = (angle + 180) mod 360,
    which is what PyTomography does.
    """
    if isinstance(dicom_angle_deg, np.ndarray):
        return (dicom_angle_deg.astype(np.float64) + 180.0) % 360.0
    return (float(dicom_angle_deg) + 180.0) % 360.0


def parse_isotope(text: str | None) -> str | None:
    """Canonical isotope name (e.g. ``"Tc-99m"``) from a DICOM code meaning or free text.

    Understands ``"^99m^Technetium"``, ``"Technetium Tc-99m"``, ``"Tc99m"``, ``"Lutetium-177"``,
    ``"Iodine^131^"``, ``"177Lu"``... Returns the stripped text unchanged when no element and mass
    number can be found, and ``None`` for empty text.
    """
    if text is None or not str(text).strip():
        return None
    raw = str(text).strip()
    mass = re.search(r"(?<!\d)(\d{1,3})(?!\d)([mM])?", raw)  # "99m": metastable
    symbol = None
    for word in re.findall(r"[A-Za-z]+", raw):
        w = word.lower()
        if w in _ELEMENTS:
            symbol = _ELEMENTS[w]
            break
        # "99mTc" splits as "mTc"; "Tc99m" as "Tc", "m"
        if w.startswith("m") and w[1:] in _ELEMENTS and len(w) > 1:
            symbol = _ELEMENTS[w[1:]]
            break
    if mass is None or symbol is None:
        return raw
    metastable = "m" if mass.group(2) else ""
    return f"{symbol}-{int(mass.group(1))}{metastable}"


def _choose_energy(
    isotope: str | None, ranges: Sequence[tuple[float, float]]
) -> tuple[float | None, str]:
    """The photon energy for μ: the isotope's photopeak inside the window, else the window centre.

    Returns ``(energy or None, how it was chosen)``.
    """
    peaks = PHOTOPEAKS_KEV.get(isotope or "", ())
    for peak in peaks:
        if not ranges or any(lo <= peak <= hi for lo, hi in ranges):
            return peak, f"{isotope} photopeak"
    if ranges:
        lo, hi = ranges[0]
        return 0.5 * (lo + hi), "energy window centre"
    return None, "unknown"


def _energy_ranges(ds: Dataset, index: int) -> list[tuple[float, float]]:
    """``[(low, high), ...]`` keV of energy window ``index`` (0-based); [] if none are recorded."""
    windows = ds.get("EnergyWindowInformationSequence")
    if not windows:
        return []
    if not 0 <= index < len(windows):
        raise attribute_error(
            ds,
            "EnergyWindowInformationSequence",
            f"has {len(windows)} window(s); energy_window={index} does not exist",
        )
    ranges = []
    for item in windows[index].get("EnergyWindowRangeSequence") or []:
        lo, hi = item.get("EnergyWindowLowerLimit"), item.get("EnergyWindowUpperLimit")
        if lo is not None and hi is not None:
            ranges.append((float(lo), float(hi)))
    return ranges


def _isotope(ds: Dataset) -> str | None:
    """Isotope from RadiopharmaceuticalInformationSequence (code meaning, else drug name)."""
    for item in ds.get("RadiopharmaceuticalInformationSequence") or []:
        for code in item.get("RadionuclideCodeSequence") or []:
            name = parse_isotope(code.get("CodeMeaning"))
            if name:
                return name
        name = parse_isotope(item.get("Radiopharmaceutical"))
        if name:
            return name
    return None


def photopeak_window_index(ds: Dataset) -> int:
    """0-based index of the window holding the isotope's main photopeak (the first of
    `PHOTOPEAKS_KEV` that a window holds; the narrowest such window), else 0."""
    windows = ds.get("EnergyWindowInformationSequence") or []
    peaks = PHOTOPEAKS_KEV.get(_isotope(ds) or "", ())
    for peak in peaks:
        holding = []
        for k in range(len(windows)):
            ranges = _energy_ranges(ds, k)
            if ranges and any(lo <= peak <= hi for lo, hi in ranges):
                width = max(r[1] for r in ranges) - min(r[0] for r in ranges)
                holding.append((width, k))
        if holding:
            return min(holding)[1]
    return 0


def dicom_datetime(date: object, time: object) -> str | None:
    """ISO 8601 ``"YYYY-MM-DDTHH:MM:SS[.ffffff]"`` from a DICOM DA (``"20240502"``) and TM
    (``"103000.25"``, ``"1030"``), or from a DT in ``date`` with ``time = None``
    (``"20240502103000.25+0100"``); ``None`` when missing or unreadable."""
    text = "" if date is None else str(date).strip()
    if time is not None:
        if not text or not str(time).strip():
            return None
        text += str(time).strip()
    match = re.fullmatch(r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?", text)
    if match is None:
        return None
    day, hh, mm, ss, frac, zone = match.groups()
    try:
        value = datetime.strptime(day + (hh or "00") + (mm or "00") + (ss or "00"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    iso = value.isoformat()
    if frac:
        iso += frac.ljust(7, "0")
    if zone:
        iso += f"{zone[:3]}:{zone[3:]}"
    return iso


def _acquisition_start(ds: Dataset) -> str | None:
    """AcquisitionDateTime, else AcquisitionDate + AcquisitionTime (else the series' or
    study's date and time)."""
    found = dicom_datetime(ds.get("AcquisitionDateTime"), None)
    if found:
        return found
    for date, time in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("StudyDate", "StudyTime"),
    ):
        found = dicom_datetime(ds.get(date), ds.get(time))
        if found:
            return found
    return None


def _radiopharmaceutical(ds: Dataset) -> tuple[str | None, float | None, float | None]:
    """``(injection time ISO 8601, half-life s, injected MBq)`` from the
    RadiopharmaceuticalInformationSequence, each ``None`` when absent."""
    for item in ds.get("RadiopharmaceuticalInformationSequence") or []:
        when = dicom_datetime(item.get("RadiopharmaceuticalStartDateTime"), None)
        if when is None and item.get("RadiopharmaceuticalStartTime") is not None:
            date = ds.get("AcquisitionDate") or ds.get("SeriesDate") or ds.get("StudyDate")
            when = dicom_datetime(date, item.get("RadiopharmaceuticalStartTime"))
        half = item.get("RadionuclideHalfLife")
        dose = item.get("RadionuclideTotalDose")
        return (
            when,
            float(half) if half is not None and float(half) > 0 else None,
            float(dose) if dose is not None and float(dose) > 0 else None,
        )
    return None, None, None


def _window_and_energy(
    ds: Dataset, energy_window: int, energy_keV: float | None
) -> tuple[tuple[float, float] | None, str | None, float | None]:
    ranges = _energy_ranges(ds, energy_window)
    window = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
    isotope = _isotope(ds)
    if energy_keV is not None:
        return window, isotope, float(energy_keV)
    energy, _ = _choose_energy(isotope, ranges)
    return window, isotope, energy


def _vector(ds: Dataset, keyword: str, n_frames: int) -> list[int]:
    """A per-frame NM vector (DetectorVector, EnergyWindowVector...), default all ones."""
    value = ds.get(keyword)
    if value is None:
        return [1] * n_frames
    values = as_ints(value)
    if len(values) != n_frames:
        raise attribute_error(
            ds, keyword, f"has {len(values)} values but the file has {n_frames} frame(s)"
        )
    return values


def _detector_item(ds: Dataset, detector: int) -> Dataset | None:
    seq = ds.get("DetectorInformationSequence")
    if seq and 1 <= detector <= len(seq):
        return seq[detector - 1]
    return None


def _collimator(
    datasets: Sequence[Dataset], items: Sequence[Dataset | None]
) -> tuple[str | None, str | None]:
    """``(CollimatorGridName, CollimatorType)`` (0018,1180)/(0018,1181): the first recorded in
    the detectors' DetectorInformationSequence items, else at the top level of the files."""
    found: dict[str, str | None] = {"CollimatorGridName": None, "CollimatorType": None}
    for keyword in found:
        for holder in (*items, *datasets):
            value = None if holder is None else holder.get(keyword)
            if value is not None and str(value).strip():
                found[keyword] = str(value).strip()
                break
    return found["CollimatorGridName"], found["CollimatorType"]


def _optional_float(item: Dataset | None, keyword: str) -> float | None:
    if item is None or item.get(keyword) is None:
        return None
    values = as_floats(item.get(keyword))
    return float(np.mean(values)) if values else None


# -- planar -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanarImages:
    """An anterior and a posterior planar image on the conventions of ``docs/conventions.md``.

    Parameters
    ----------
    images:
        ``[2, rows, bins]`` float32 counts: index 0 the anterior view (β = 0, bins increase toward
        the patient's left), index 1 the posterior view (β = 180, bins increase toward the
        patient's right). Rows increase toward the head in both.
    pixel_size_mm:
        ``(row height, bin width)`` in mm.
    energy_keV:
        Photon energy (keV) for μ: the isotope's photopeak inside the window, else the window
        centre; ``None`` if neither is recorded.
    energy_window_keV:
        ``(low, high)`` keV of the selected energy window, if recorded.
    isotope:
        e.g. ``"Tc-99m"`` (from RadionuclideCodeSequence), if recorded.
    duration_s:
        ``(anterior, posterior)`` ActualFrameDuration in s. For a whole-body scan this is the
        recorded frame time of the whole sweep, not the time each point is seen.
    radius_mm:
        ``(anterior, posterior)`` RadialPosition (mm) of the detectors, if recorded.
    whole_body:
        ImageType says WHOLE BODY.
    scan_velocity_mm_per_s, scan_length_mm:
        ScanVelocity and ScanLength of a whole-body scan, if recorded.
    orientation:
        ``(anterior, posterior)``: how the pixel orientation was decided
        (``"ImageOrientationPatient"`` or the standard-display assumption).
    sources:
        ``(anterior, posterior)`` file names.
    collimator_name, collimator_type:
        CollimatorGridName (0018,1180) and CollimatorType (0018,1181), if recorded
        (`spectproj.collimator_table.match_dicom_collimator` maps them to the table).
    windows:
        The file's other energy windows (scatter windows, other photopeaks), each an
        `recon.io.study.EnergyWindow` of ``[2, rows, bins]`` counts oriented as ``images``.
    energy_window_index:
        0-based index of the photopeak window in EnergyWindowInformationSequence.
    acquisition_start:
        ISO 8601 start of the acquisition (AcquisitionDate/Time), if recorded.
    injection_time:
        ISO 8601 RadiopharmaceuticalStartDateTime (or StartTime), if recorded.
    half_life_s:
        RadionuclideHalfLife (s), if recorded.
    injected_mbq:
        RadionuclideTotalDose (MBq), if recorded.
    """

    images: np.ndarray
    pixel_size_mm: tuple[float, float]
    energy_keV: float | None = None
    energy_window_keV: tuple[float, float] | None = None
    isotope: str | None = None
    duration_s: tuple[float | None, float | None] = (None, None)
    radius_mm: tuple[float | None, float | None] = (None, None)
    whole_body: bool = False
    scan_velocity_mm_per_s: float | None = None
    scan_length_mm: float | None = None
    orientation: tuple[str, str] = (_STANDARD_DISPLAY, _STANDARD_DISPLAY)
    sources: tuple[str, str] = ("", "")
    collimator_name: str | None = None
    collimator_type: str | None = None
    windows: tuple[EnergyWindow, ...] = ()
    energy_window_index: int = 0
    acquisition_start: str | None = None
    injection_time: str | None = None
    half_life_s: float | None = None
    injected_mbq: float | None = None

    @property
    def anterior(self) -> np.ndarray:
        """``[rows, bins]`` anterior image (β = 0)."""
        return self.images[0]

    @property
    def posterior(self) -> np.ndarray:
        """``[rows, bins]`` posterior image (β = 180)."""
        return self.images[1]


@dataclass
class _Frame:
    ds: Dataset
    pixels: np.ndarray  # [rows, columns] as stored
    frame: int  # 0-based frame number in its file
    detector: int  # 1-based
    view: str | None = None
    item: Dataset | None = field(default=None, repr=False)


def _view_of(item: Dataset | None) -> str | None:
    """``"anterior"``/``"posterior"`` from a detector's ViewCodeSequence, else ``None``."""
    if item is None:
        return None
    codes = item.get("ViewCodeSequence") or []
    if not codes:
        return None
    meaning = str(codes[0].get("CodeMeaning", "")).lower()
    if "oblique" in meaning or "lateral" in meaning:
        return None
    ant, post = "anterior" in meaning, "posterior" in meaning
    if ant == post:  # neither, or both ("postero-anterior")
        return None
    return "anterior" if ant else "posterior"


def _normalise_view(name: str) -> str:
    key = str(name).strip().lower()
    if key in ("anterior", "ant", "a"):
        return "anterior"
    if key in ("posterior", "post", "p"):
        return "posterior"
    raise ValueError(f"views must be 'anterior' or 'posterior', got {name!r}")


def _axis_of(cosines: Sequence[float]) -> tuple[int, int] | None:
    """``(patient axis 0=x/1=y/2=z, sign)`` if a direction cosine vector lies along one axis."""
    for axis in range(3):
        if abs(cosines[axis]) >= _AXIS_TOLERANCE:
            return axis, 1 if cosines[axis] > 0 else -1
    return None


def _planar_orientation(
    frame: _Frame, view: str, use_orientation: bool
) -> tuple[bool, bool, bool, str]:
    """``(transpose, flip_rows, flip_columns, how)`` taking a stored frame to our convention.

    Our anterior image has bins toward +x and rows toward +z; our posterior image bins toward −x.
    ImageOrientationPatient gives the patient direction of increasing column (first three
    cosines) and of increasing row (last three). Without a usable (coronal) orientation the image
    is taken to be in the standard display: head at the top (row 0), seen from the detector
    (anterior: patient's right on the left; posterior: patient's left on the left).
    """
    bins_toward_x = 1 if view == "anterior" else -1
    iop = None
    if use_orientation:
        for holder in (frame.item, frame.ds):
            if holder is not None and holder.get("ImageOrientationPatient") is not None:
                iop = as_floats(holder.get("ImageOrientationPatient"))
                break
    if iop is not None and len(iop) == 6:
        along_row, along_col = _axis_of(iop[:3]), _axis_of(iop[3:])
        if along_row and along_col and {along_row[0], along_col[0]} == {0, 2}:
            if along_row[0] == 0:  # columns run along x, rows along z
                return (
                    False,
                    along_col[1] < 0,
                    along_row[1] != bins_toward_x,
                    ("ImageOrientationPatient"),
                )
            return (
                True,
                along_row[1] < 0,
                along_col[1] != bins_toward_x,
                ("ImageOrientationPatient (transposed)"),
            )
        return False, True, False, f"{_STANDARD_DISPLAY}; ImageOrientationPatient {iop} ignored"
    return False, True, False, _STANDARD_DISPLAY


def read_nm_planar(
    source: PathLike | Sequence[PathLike],
    *,
    energy_window: int | None = None,
    views: Sequence[str] | None = None,
    use_orientation: bool = True,
    energy_keV: float | None = None,
) -> PlanarImages:
    """Read an anterior and a posterior planar NM image (static or whole body), every window.

    Cameras write the frames of a planar acquisition ordered by energy window and detector, with
    EnergyWindowVector and DetectorVector saying which frame is which; every window of
    EnergyWindowInformationSequence with limits is read: the photopeak into ``images``, the others
    into ``windows`` (for scatter estimates, `recon.corrections.scatter`).

    Parameters
    ----------
    source:
        One multi-frame file holding both detectors (DetectorVector 1/2, e.g. a dual-head whole
        body scan), two single-frame files, or a folder holding them.
    energy_window:
        0-based index into EnergyWindowInformationSequence of the photopeak window (frames whose
        EnergyWindowVector is ``energy_window + 1``); default the window holding the isotope's
        main photopeak (`photopeak_window_index`), else the first.
    views:
        ``"anterior"``/``"posterior"`` for each selected frame in reading order (files in the given
        or sorted order, frames in file order). Needed only when ViewCodeSequence is absent or
        ambiguous; overrides it when given.
    use_orientation:
        Use ImageOrientationPatient (per detector, else top level) when it describes a coronal
        image. ``False`` always assumes the standard display (head at top, seen from the detector).
    energy_keV:
        Photon energy (keV) to report instead of the one derived from isotope and window.

    Returns
    -------
    PlanarImages
        ``images[0]`` anterior (β = 0), ``images[1]`` posterior (β = 180), ``[2, rows, bins]``.

    Raises
    ------
    ValueError
        One line naming the file and the attribute, for a TOMO file, missing/ambiguous views,
        mismatched pixel size or shape, or unreadable pixel data.
    """
    files = list_files(source)
    first = read_dataset(files[0])
    index = photopeak_window_index(first) if energy_window is None else int(energy_window)
    images = _read_planar_window(files, index, views, use_orientation, energy_keV)
    others: list[EnergyWindow] = []
    names: set[str] = set()
    for k in range(len(first.get("EnergyWindowInformationSequence") or [])):
        if k == index or not _energy_ranges(first, k):
            continue
        other = _read_planar_window(files, k, views, use_orientation, 1.0)
        assert other.energy_window_keV is not None
        name = _window_name(first, k, names)
        names.add(name)
        others.append(EnergyWindow(name, *other.energy_window_keV, other.images))
    injection, half_life, dose = _radiopharmaceutical(first)
    return dataclasses.replace(
        images,
        windows=tuple(others),
        energy_window_index=index,
        acquisition_start=_acquisition_start(first),
        injection_time=injection,
        half_life_s=half_life,
        injected_mbq=dose,
    )


def _window_name(ds: Dataset, index: int, taken: set[str]) -> str:
    """A unique plain name for window ``index``: its EnergyWindowName, else ``window<k>``."""
    windows = ds.get("EnergyWindowInformationSequence") or []
    raw = str(windows[index].get("EnergyWindowName") or "").strip() if index < len(windows) else ""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", raw).strip("._") or f"window{index + 1}"
    if name in taken:
        name = f"{name}_{index + 1}"
    return name


def _read_planar_window(
    files: Sequence[Path],
    energy_window: int,
    views: Sequence[str] | None,
    use_orientation: bool,
    energy_keV: float | None,
) -> PlanarImages:
    """The anterior and posterior images of one energy window (`read_nm_planar`'s rules)."""
    selected: list[_Frame] = []
    for path in files:
        ds = read_dataset(path)
        image_type = [str(v).upper() for v in ds.get("ImageType") or []]
        if any("TOMO" in v for v in image_type):
            shown = "\\".join(image_type)
            raise attribute_error(ds, "ImageType", f"= {shown} is tomographic; use read_nm_tomo")
        pixels = frames(ds)
        n = pixels.shape[0]
        detectors = _vector(ds, "DetectorVector", n)
        windows = _vector(ds, "EnergyWindowVector", n)
        if n > 1 and ds.get("DetectorVector") is None:
            raise attribute_error(
                ds, "DetectorVector", f"is missing; it is needed to tell apart the {n} frames"
            )
        chosen = [f for f in range(n) if windows[f] == energy_window + 1]
        if not chosen:
            raise attribute_error(
                ds, "EnergyWindowVector", f"has no frame of energy window {energy_window + 1}"
            )
        for f in chosen:
            item = _detector_item(ds, detectors[f])
            selected.append(_Frame(ds, pixels[f], f, detectors[f], _view_of(item), item))

    if views is not None:
        names = [_normalise_view(v) for v in views]
        if len(names) != len(selected):
            raise ValueError(
                f"views has {len(names)} entries but {len(selected)} frame(s) were read"
            )
        for frame, name in zip(selected, names, strict=True):
            frame.view = name
    for frame in selected:
        if frame.view is None:
            raise ValueError(
                f"{source_name(frame.ds)}: DetectorInformationSequence[{frame.detector}] > "
                f"{tag_text('ViewCodeSequence')} does not say anterior or posterior "
                f"(frame {frame.frame + 1}); pass views=[...]"
            )
    by_view = {v: [f for f in selected if f.view == v] for v in ("anterior", "posterior")}
    for v, found in by_view.items():
        if len(found) != 1:
            where = ", ".join(f"{source_name(f.ds)} frame {f.frame + 1}" for f in selected)
            raise ValueError(
                f"expected one {v} frame, found {len(found)} among: {where} (dynamic or "
                f"multi-pass files are not supported; pass views=[...] to choose)"
            )

    images, spacings, hows = [], [], []
    for v in ("anterior", "posterior"):
        frame = by_view[v][0]
        transpose, flip_rows, flip_cols, how = _planar_orientation(frame, v, use_orientation)
        img = frame.pixels.T if transpose else frame.pixels
        if flip_rows:
            img = img[::-1, :]
        if flip_cols:
            img = img[:, ::-1]
        row_spacing, col_spacing = pixel_spacing(frame.ds, "for the pixel size")
        spacing = (col_spacing, row_spacing) if transpose else (row_spacing, col_spacing)
        images.append(np.ascontiguousarray(img, dtype=np.float32))
        spacings.append(spacing)
        hows.append(how)
    ant, post = by_view["anterior"][0], by_view["posterior"][0]
    if images[0].shape != images[1].shape:
        raise ValueError(
            f"{source_name(post.ds)}: the posterior image {images[1].shape} and the anterior "
            f"image {images[0].shape} differ in shape (Rows/Columns)"
        )
    if not np.allclose(spacings[0], spacings[1], rtol=1e-5, atol=0):
        raise attribute_error(
            post.ds, "PixelSpacing", f"{spacings[1]} differs from the anterior {spacings[0]}"
        )

    window, isotope, energy = _window_and_energy(ant.ds, energy_window, energy_keV)
    if post.ds is not ant.ds:
        window_p = _window_and_energy(post.ds, energy_window, energy_keV)[0]
        if window is not None and window_p is not None and not np.allclose(window, window_p):
            raise attribute_error(
                post.ds,
                "EnergyWindowInformationSequence",
                f"window {window_p} keV differs from the anterior {window} keV",
            )

    def duration(ds: Dataset) -> float | None:
        ms = ds.get("ActualFrameDuration")
        return float(ms) / 1000.0 if ms is not None and float(ms) > 0 else None

    whole_body = any("WHOLE BODY" in str(v).upper() for v in ant.ds.get("ImageType") or [])
    velocity = ant.ds.get("ScanVelocity")
    length = ant.ds.get("ScanLength")
    collimator_name, collimator_type = _collimator([ant.ds, post.ds], [ant.item, post.item])
    return PlanarImages(
        images=np.stack(images),
        pixel_size_mm=(float(spacings[0][0]), float(spacings[0][1])),
        energy_keV=energy,
        energy_window_keV=window,
        isotope=isotope,
        duration_s=(duration(ant.ds), duration(post.ds)),
        radius_mm=(
            _optional_float(ant.item, "RadialPosition"),
            _optional_float(post.item, "RadialPosition"),
        ),
        whole_body=whole_body,
        scan_velocity_mm_per_s=float(velocity) if velocity is not None else None,
        scan_length_mm=float(length) if length is not None else None,
        orientation=(hows[0], hows[1]),
        sources=(source_name(ant.ds), source_name(post.ds)),
        collimator_name=collimator_name,
        collimator_type=collimator_type,
    )


def nm_planar_study(
    images: PlanarImages,
    grid: ImageGrid,
    mu: np.ndarray | None = None,
    *,
    ct_hu: np.ndarray | None = None,
    energy_keV: float | None = None,
    duration_s: float | None = None,
    radius_mm: float | None = None,
    sensitivity_cps_per_mbq: float | None = None,
    collimator: str | CollimatorSpec | None = None,
    provenance: Mapping[str, str] | None = None,
    half_life_s: float | None = None,
    reference_time: str | None = None,
    dead_time_s: float | None = None,
    dead_time_model: str | None = None,
    observed_rate_cps: float | None = None,
) -> Study:
    """A two-view study (β = 0 anterior, β = 180 posterior) from planar images.

    The images' other energy windows become the study's ``windows``; the acquisition start, and
    the half-life (given, else the file's RadionuclideHalfLife, else `recon.corrections.nuclides`)
    are recorded in the acquisition, where a ``reference_time`` turns on the decay correction.

    Parameters
    ----------
    images:
        From :func:`read_nm_planar`.
    grid:
        The image grid of μ and of the reconstruction. The detector is centred on the rotation
        axis (x = y = 0) and its centre row is at z = 0; place the patient with ``grid.offset_mm``.
    mu:
        ``[Z, Y, X]`` attenuation map (1/mm) at the photon energy, e.g. from ``ct_to_mu_on_grid``.
    ct_hu:
        ``[Z, Y, X]`` CT in HU on ``grid``, if wanted in the study.
    energy_keV:
        Overrides ``images.energy_keV``; one of the two is required.
    duration_s:
        Acquisition time per view (s). Default: the recorded ActualFrameDuration when both views
        share it and the scan is static; ``None`` (unknown) for a whole-body scan, whose dwell time
        per point is not the frame duration.
    radius_mm:
        Default: the mean recorded RadialPosition of the two detectors, if any.
    sensitivity_cps_per_mbq, provenance, reference_time, dead_time_s, dead_time_model,
    observed_rate_cps:
        Passed to the :class:`~recon.io.study.Acquisition` / :class:`~recon.io.study.Study`.
    collimator:
        A collimator name (of the table) or its parameters (`spectproj.CollimatorSpec`).
    half_life_s:
        Overrides the file's / the table's half-life (s).
    """
    from recon.corrections.nuclides import half_life_s as table_half_life

    energy = energy_keV if energy_keV is not None else images.energy_keV
    if energy is None:
        raise ValueError(
            f"{images.sources[0]}: the photon energy is unknown (no isotope or energy window in "
            "the file); pass energy_keV"
        )
    for name, volume in (("mu", mu), ("ct_hu", ct_hu)):
        if volume is not None and tuple(np.shape(volume)) != grid.shape:
            raise ValueError(f"{name} has shape {np.shape(volume)}, expected grid {grid.shape}")
    if duration_s is None and not images.whole_body:
        d_ant, d_post = images.duration_s
        if d_ant is not None and d_post is not None and not math.isclose(d_ant, d_post):
            raise ValueError(
                f"{images.sources[1]}: the posterior ActualFrameDuration {d_post} s differs from "
                f"the anterior {d_ant} s; the two views must share one count scale "
                "(pass duration_s after scaling)"
            )
        duration_s = d_ant if d_ant is not None else d_post
    if radius_mm is None:
        radii = [r for r in images.radius_mm if r is not None and r > 0]
        radius_mm = float(np.mean(radii)) if radii else None
    rows, bins = images.images.shape[1:]
    half_life_source = "given"
    if half_life_s is None and images.half_life_s is not None:
        half_life_s, half_life_source = images.half_life_s, "DICOM RadionuclideHalfLife"
    if half_life_s is None and images.isotope is not None:
        try:
            half_life_s = table_half_life(images.isotope)
            half_life_source = "recon.corrections.nuclides (NNDC NuDat 3)"
        except ValueError:
            half_life_s = None
    acquisition = Acquisition(
        angles_deg=(0.0, 180.0),
        detector_shape=(rows, bins),
        pixel_size_mm=images.pixel_size_mm,
        energy_keV=float(energy),
        radius_mm=radius_mm,
        isotope=images.isotope,
        energy_window_keV=images.energy_window_keV,
        duration_s=duration_s,
        sensitivity_cps_per_mbq=sensitivity_cps_per_mbq,
        collimator=collimator if isinstance(collimator, str) else None,
        collimator_spec=collimator if isinstance(collimator, CollimatorSpec) else None,
        half_life_s=half_life_s,
        acquisition_start=images.acquisition_start,
        reference_time=reference_time,
        dead_time_s=dead_time_s,
        dead_time_model=dead_time_model,
        observed_rate_cps=observed_rate_cps,
    )
    facts = {
        "source": "DICOM NM planar",
        "anterior_file": images.sources[0],
        "posterior_file": images.sources[1],
        "anterior_orientation": images.orientation[0],
        "posterior_orientation": images.orientation[1],
        "photopeak_window": f"window {images.energy_window_index + 1} of the file",
    }
    if half_life_s is not None:
        facts["half_life_source"] = half_life_source
    if images.injection_time is not None:
        facts["injection_time"] = images.injection_time
    if images.injected_mbq is not None:
        facts["injected_mbq"] = f"{images.injected_mbq:g}"
    facts.update(provenance or {})
    return Study(
        projections=np.ascontiguousarray(images.images, dtype=np.float32),
        acquisition=acquisition,
        grid=grid,
        mu_per_mm=None if mu is None else np.asarray(mu, dtype=np.float32),
        ct_hu=None if ct_hu is None else np.asarray(ct_hu, dtype=np.float32),
        provenance=facts,
        windows=images.windows,
    )


# -- tomographic projections --------------------------------------------------------------------
@dataclass(frozen=True)
class NmTomo:
    """Tomographic projections read from an NM TOMO file, views sorted by β.

    Parameters
    ----------
    projections:
        ``[V, rows, bins]`` float32 counts on the conventions of ``docs/conventions.md``.
    acquisition:
        Angles β (ascending), detector shape, pixel size, energy, mean radius, window, isotope,
        frame duration.
    dicom_angles_deg:
        ``[V]`` the DICOM angle of each view (same order), before the mapping to β.
    detectors:
        ``[V]`` the 1-based detector of each view.
    radii_mm:
        ``[V]`` RadialPosition of each view (mm), if recorded (non-circular orbits differ per view;
        ``acquisition.radius_mm`` is their mean).
    source:
        The file name.
    collimator_name, collimator_type:
        CollimatorGridName (0018,1180) and CollimatorType (0018,1181), if recorded.
    """

    projections: np.ndarray
    acquisition: Acquisition
    dicom_angles_deg: np.ndarray
    detectors: np.ndarray
    radii_mm: np.ndarray | None
    source: str
    collimator_name: str | None = None
    collimator_type: str | None = None


def _radii(
    ds: Dataset, det_item: Dataset | None, rotations: Sequence[Dataset], detector: int,
    n_detectors: int, views: Sequence[int], n_in_rotation: int,
) -> list[float] | None:  # fmt: skip
    """RadialPosition (mm) of each view of one detector, as PyTomography looks for it."""
    holders: list[tuple[Dataset | None, str]] = [
        (det_item, f"DetectorInformationSequence[{detector}] > ")
    ]
    if len(rotations) == n_detectors > 1:  # one rotation item per detector (e.g. Mediso)
        holders.append((rotations[detector - 1], f"RotationInformationSequence[{detector}] > "))
    holders.append((rotations[0], "RotationInformationSequence[1] > "))
    for holder, where in holders:
        if holder is None or holder.get("RadialPosition") is None:
            continue
        values = as_floats(holder.get("RadialPosition"))
        if len(values) == 1:
            return [values[0]] * len(views)
        if len(values) == n_in_rotation:
            return [values[k - 1] for k in views]
        raise attribute_error(
            ds,
            "RadialPosition",
            f"has {len(values)} values; expected 1 or NumberOfFramesInRotation = {n_in_rotation}",
            where,
        )
    return None


def read_nm_tomo_details(
    path: PathLike, *, energy_window: int = 0, energy_keV: float | None = None
) -> NmTomo:
    """Read a multi-frame NM TOMO file (one or two detectors) into sorted projections.

    Frames are grouped by DetectorVector; the k-th view of a detector (AngularViewVector if
    present, else the order of its frames) is at the DICOM angle ``StartAngle + k·AngularStep``
    for RotationDirection CC and ``StartAngle − k·AngularStep`` for CW (k from 0), with StartAngle
    taken per detector from DetectorInformationSequence (else from RotationInformationSequence for
    a single detector). β = (DICOM angle + 180) mod 360 and views are sorted by β, as PyTomography
    does. Each frame's rows are flipped (stored head at the top) and its columns kept: see
    ``docs/dicom.md``.

    Parameters
    ----------
    path:
        The NM file (ImageType ...\\TOMO).
    energy_window:
        0-based index into EnergyWindowInformationSequence.
    energy_keV:
        Photon energy (keV) instead of the isotope's photopeak in the window / the window centre.

    Raises
    ------
    ValueError
        One line naming the file and the attribute: not TOMO (gated or reconstructed data),
        several rotations, missing angles or RotationDirection, frame counts that do not match.
    """
    ds = read_dataset(path)
    image_type = [str(v).upper() for v in require(ds, "ImageType", "to check the data is TOMO")]
    kind = image_type[2] if len(image_type) > 2 else ""
    if kind != "TOMO":
        shown = "\\".join(image_type)
        raise attribute_error(
            ds,
            "ImageType",
            f"= {shown}: value 3 must be TOMO (gated, dynamic and reconstructed "
            "data are not projections of one rotation)",
        )
    rotations = require(ds, "RotationInformationSequence", "for the angles of the views")
    pixels = frames(ds)
    n = pixels.shape[0]
    detectors = _vector(ds, "DetectorVector", n)
    windows = _vector(ds, "EnergyWindowVector", n)
    rotation_of = _vector(ds, "RotationVector", n)
    if len(set(rotation_of)) > 1:
        raise attribute_error(
            ds, "RotationVector", f"has {len(set(rotation_of))} rotations; only one is supported"
        )
    if len(set(_vector(ds, "TimeSlotVector", n))) > 1:
        raise attribute_error(ds, "TimeSlotVector", "has several time slots (gated data)")
    angular_views = _vector(ds, "AngularViewVector", n) if ds.get("AngularViewVector") else None

    rotation = rotations[rotation_of[0] - 1] if 1 <= rotation_of[0] <= len(rotations) else None
    if rotation is None:
        raise attribute_error(
            ds, "RotationInformationSequence", f"has no item for rotation {rotation_of[0]}"
        )
    where = f"RotationInformationSequence[{rotation_of[0]}] > "
    n_in_rotation = int(
        require(rotation, "NumberOfFramesInRotation", "per detector", where, owner=ds)
    )
    step = float(require(rotation, "AngularStep", "for the angles", where, owner=ds))
    direction = str(
        require(rotation, "RotationDirection", "for the angles", where, owner=ds)
    ).upper()
    if direction in ("CC", "CCW"):
        sign = 1.0
    elif direction == "CW":
        sign = -1.0
    else:
        raise attribute_error(ds, "RotationDirection", f"= {direction!r} is not CW or CC", where)

    chosen = [f for f in range(n) if windows[f] == energy_window + 1]
    if not chosen:
        raise attribute_error(
            ds, "EnergyWindowVector", f"has no frame of energy window {energy_window + 1}"
        )
    unique_detectors = sorted({detectors[f] for f in chosen})
    order_frames: list[int] = []
    angles: list[float] = []
    view_detectors: list[int] = []
    radii: list[float] | None = []
    for d in unique_detectors:
        frames_d = [f for f in chosen if detectors[f] == d]
        if len(frames_d) != n_in_rotation:
            raise attribute_error(
                ds,
                "NumberOfFramesInRotation",
                f"= {n_in_rotation} but detector {d} has {len(frames_d)} frame(s)",
                where,
            )
        if angular_views:
            views = [angular_views[f] for f in frames_d]
        else:
            views = list(range(1, len(frames_d) + 1))
        if sorted(views) != list(range(1, n_in_rotation + 1)):
            raise attribute_error(
                ds, "AngularViewVector", f"of detector {d} is not 1..{n_in_rotation}"
            )
        item = _detector_item(ds, d)
        if item is not None and item.get("StartAngle") is not None:
            start = float(item.StartAngle)
        elif len(unique_detectors) == 1:
            start = float(require(rotation, "StartAngle", "for the angles", where, owner=ds))
        else:
            raise ValueError(
                f"{source_name(ds)}: DetectorInformationSequence[{d}] > "
                f"{tag_text('StartAngle')} is missing; it is needed to place detector {d} of "
                f"{len(unique_detectors)}"
            )
        order_frames += frames_d
        angles += [start + sign * (k - 1) * step for k in views]
        view_detectors += [d] * len(frames_d)
        r = _radii(ds, item, rotations, d, len(unique_detectors), views, n_in_rotation)
        if r is None or radii is None:
            radii = None
        else:
            radii += r

    dicom_angles = np.asarray(angles, dtype=np.float64)
    betas = dicom_angle_to_beta(dicom_angles)
    order = np.argsort(betas, kind="stable")
    frame_index = np.asarray(order_frames)[order]
    projections = np.ascontiguousarray(pixels[frame_index][:, ::-1, :], dtype=np.float32)
    radii_arr = None if not radii else np.asarray(radii, dtype=np.float64)[order]
    if radii_arr is not None and not np.all(radii_arr > 0):
        radii_arr = None

    row_spacing, col_spacing = pixel_spacing(ds, "for the pixel size")
    window, isotope, energy = _window_and_energy(ds, energy_window, energy_keV)
    if energy is None:
        raise ValueError(
            f"{source_name(ds)}: the photon energy is unknown: "
            f"{tag_text('EnergyWindowInformationSequence')} and "
            f"{tag_text('RadiopharmaceuticalInformationSequence')} are missing; pass energy_keV"
        )
    frame_ms = rotation.get("ActualFrameDuration") or ds.get("ActualFrameDuration")
    collimator_name, collimator_type = _collimator(
        [ds], [_detector_item(ds, d) for d in unique_detectors]
    )
    acquisition = Acquisition(
        angles_deg=tuple(float(b) for b in betas[order]),
        detector_shape=(projections.shape[1], projections.shape[2]),
        pixel_size_mm=(row_spacing, col_spacing),
        energy_keV=energy,
        radius_mm=None if radii_arr is None else float(radii_arr.mean()),
        isotope=isotope,
        energy_window_keV=window,
        duration_s=float(frame_ms) / 1000.0 if frame_ms and float(frame_ms) > 0 else None,
    )
    return NmTomo(
        projections=projections,
        acquisition=acquisition,
        dicom_angles_deg=dicom_angles[order],
        detectors=np.asarray(view_detectors, dtype=np.int64)[order],
        radii_mm=radii_arr,
        source=source_name(ds),
        collimator_name=collimator_name,
        collimator_type=collimator_type,
    )


def read_nm_tomo(
    path: PathLike, *, energy_window: int = 0, energy_keV: float | None = None
) -> tuple[np.ndarray, Acquisition]:
    """Projections ``[V, rows, bins]`` (float32 counts) and their :class:`Acquisition`.

    See :func:`read_nm_tomo_details` (which also returns the DICOM angles, detectors and per-view
    radii) for the rules and the parameters.
    """
    tomo = read_nm_tomo_details(path, energy_window=energy_window, energy_keV=energy_keV)
    return tomo.projections, tomo.acquisition


# -- files → study (spect convert dicom-planar / dicom-tomo) -------------------------------------
def dicom_collimator(
    grid_name: str | None,
    collimator_type: str | None,
    override: str | os.PathLike[str] | CollimatorSpec | None,
    source: str,
) -> tuple[CollimatorSpec | None, str]:
    """The collimator of an imported NM study and a one-line note on where it came from.

    ``override`` (``--collimator NAME|FILE.toml``) wins; else the DICOM CollimatorGridName
    (0018,1180) and CollimatorType (0018,1181) are matched to the table
    (`spectproj.collimator_table.match_dicom_collimator`: case, spaces and punctuation ignored).
    A name the table does not know (or none, or a non-parallel-hole type) is a `UserWarning`
    naming the file, and the study gets no collimator (never a silent default).
    """
    if override is not None:
        chosen = collimator_spec(override)
        given = f" (the file names {grid_name!r})" if grid_name else ""
        return chosen, f"{chosen.name} from --collimator{given}"
    spec, note = match_dicom_collimator(grid_name, collimator_type)
    if spec is None:
        warnings.warn(
            f"{source}: {note}; the study names no collimator, so no collimator blur is "
            "modelled: give --collimator NAME|FILE.toml (docs/collimators.md)",
            UserWarning,
            stacklevel=2,
        )
        return None, f"none ({note})"
    return spec, note


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
    collimator: str | os.PathLike[str] | CollimatorSpec | None = None,
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
        One multi-frame file, two files, or a folder (`read_nm_planar`).
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
    collimator
        A collimator of the table (name or alias), a TOML file of one, or a
        `spectproj.CollimatorSpec`; default: the files' CollimatorGridName matched to the table
        (`dicom_collimator`).
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

    Warns
    -----
    UserWarning
        The files name a collimator the table does not know (or none, or not a parallel-hole
        one) and ``collimator`` is not given: the study then names no collimator.
    """
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
    spec, note = dicom_collimator(
        images.collimator_name, images.collimator_type, collimator, images.sources[0]
    )
    facts["collimator"] = note
    study = nm_planar_study(
        images,
        grid,
        mu,
        ct_hu=hu,
        energy_keV=energy_keV,
        duration_s=duration_s,
        sensitivity_cps_per_mbq=sensitivity_cps_per_mbq,
        collimator=spec,
        provenance=facts,
        half_life_s=half_life_s,
    )
    return _planar_corrections(
        study, images, scatter, scatter_smoothing_mm, dew_k, reference_time, dead_time_s,
        dead_time_model, count_rate_cps,
    )  # fmt: skip


def _planar_corrections(
    study: Study,
    images: PlanarImages,
    scatter: str,
    scatter_smoothing_mm: float,
    dew_k: float | None,
    reference_time: str | None,
    dead_time_s: float | None,
    dead_time_model: str,
    count_rate_cps: float | None,
) -> Study:
    """`dicom_planar_study`'s decay, dead-time and scatter corrections of a planar study."""
    from recon.corrections.scatter import estimate_scatter, find_scatter_windows
    from recon.corrections.timing import reference_time_of

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
    collimator: str | os.PathLike[str] | CollimatorSpec | None = None,
) -> Study:
    """A tomographic study from a DICOM NM TOMO file (+ a CT series for μ).

    Parameters (and the warning) are those of `dicom_planar_study`; the projections, angles,
    radius, energy, frame duration and collimator name come from `read_nm_tomo_details`.
    """
    tomo = read_nm_tomo_details(path, energy_keV=energy_keV)
    acquisition = tomo.acquisition
    changes: dict[str, Any] = {}
    if duration_s is not None:
        changes["duration_s"] = duration_s
    if sensitivity_cps_per_mbq is not None:
        changes["sensitivity_cps_per_mbq"] = sensitivity_cps_per_mbq
    spec, collimator_note = dicom_collimator(
        tomo.collimator_name, tomo.collimator_type, collimator, tomo.source
    )
    changes["collimator"] = None if spec is None else spec.name
    changes["collimator_spec"] = spec
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
        "collimator": collimator_note,
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

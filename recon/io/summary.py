"""A readable summary of a study or result file (for ``spect info``), read leniently.

Unlike ``read_study``/``read_result`` this never refuses a file: it reports what it can read and
what is wrong, so damaged files can be inspected.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

import h5py
import numpy as np

from recon.io.hdf5 import read_result, read_study


def views_text(angles: tuple[float, ...]) -> str:
    """``"N: a°, b°, …"`` or ``"N: first°–last°, step s°"`` for a list of detector angles."""
    n = len(angles)
    if n <= 4:
        return f"{n}: " + ", ".join(f"{a:g}°" for a in angles)
    steps = {round((b - a) % 360.0, 6) for a, b in itertools.pairwise(angles)}
    step = f", step {steps.pop():g}°" if len(steps) == 1 else ""
    return f"{n}: {angles[0]:g}°–{angles[-1]:g}°{step}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape in ((), (1,)):
        return _text(value.reshape(-1)[0])
    return str(value)


def _numbers(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return [float(v) for v in a]


def _triplet(values: list[float] | None, fmt: str = "g") -> str:
    if not values:
        return "?"
    return "×".join(format(v, fmt) for v in values)


def summarize(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Key facts of a study or result file as ``(field, value)`` rows, read leniently.

    A missing or odd value shows as ``?``; the last row, ``check``, says whether the file reads
    as a valid study/result or gives the reader's one-line error. Never raises for a damaged file.
    """
    rows: list[tuple[str, str]] = []
    try:
        with h5py.File(path, "r") as f:
            _summary_rows(f, rows)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
        rows.append(("read", f"failed: {' '.join(str(error).split())}"))
    rows.append(("check", _check(path, rows)))
    return rows


def _get_attr(obj: Any, name: str) -> Any:
    try:
        return obj.attrs[name] if name in obj.attrs else None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):
        return None


def _get(f: Any, where: str) -> Any:
    try:
        return f.get(where)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):
        return None


def _summary_rows(f: Any, rows: list[tuple[str, str]]) -> None:
    kind = _text(_get_attr(f, "format"))
    label = {"spect-study": "study file", "spect-result": "result file"}.get(kind or "")
    rows.append(("kind", f"{kind} ({label})" if label else f"{kind or '?'} (not a spect file?)"))
    rows.append(("format version", _text(_get_attr(f, "format_version")) or "?"))
    rows.append(("software", _text(_get_attr(f, "software_version")) or "?"))
    rows.append(("created (UTC)", _text(_get_attr(f, "created_utc")) or "?"))
    unit = _text(_get_attr(f, "activity_unit"))
    if unit:
        rows.append(("activity unit", unit))

    g = _get(f, "/grid")
    if isinstance(g, h5py.Group):
        shape = _numbers(_get_attr(g, "shape"))
        spacing = _numbers(_get_attr(g, "spacing_mm"))
        offset = _numbers(_get_attr(g, "offset_mm"))
        text = f"{_triplet(shape)} voxels (z, y, x) of {_triplet(spacing)} mm"
        if shape and spacing and len(shape) == len(spacing):
            fov = [n * d for n, d in zip(shape, spacing, strict=True)]
            text += f"; field of view {_triplet(fov)} mm"
        if offset and any(offset):
            text += f"; offset {_triplet(offset)} mm"
        rows.append(("grid", text))

    a = _get(f, "/acquisition")
    if isinstance(a, h5py.Group):
        angles_ds = _get(f, "/acquisition/angles_deg")
        angles = None
        if isinstance(angles_ds, h5py.Dataset):
            try:
                angles = _numbers(angles_ds[()])
            except (OSError, RuntimeError, ValueError, TypeError):
                angles = None
        rows.append(("views (β)", views_text(tuple(angles)) if angles else "?"))
        det = _numbers(_get_attr(a, "detector_shape"))
        pix = _numbers(_get_attr(a, "pixel_size_mm"))
        rows.append(("detector", f"{_triplet(det)} pixels of {_triplet(pix)} mm"))
        energy = _numbers(_get_attr(a, "energy_keV"))
        isotope = _text(_get_attr(a, "isotope"))
        text = f"{energy[0]:g} keV" if energy else "? keV"
        if isotope:
            text = f"{isotope}, {text}"
        window = _numbers(_get_attr(a, "energy_window_keV"))
        if window and len(window) == 2:
            text += f", window {window[0]:g}–{window[1]:g} keV"
        rows.append(("energy", text))
        collimator = _text(_get_attr(a, "collimator"))
        radius = _numbers(_get_attr(a, "radius_mm"))
        text = collimator or "none named"
        if radius:
            text += f", radius {radius[0]:g} mm"
        rows.append(("collimator", text))
        duration = _numbers(_get_attr(a, "duration_s"))
        sensitivity = _numbers(_get_attr(a, "sensitivity_cps_per_mbq"))
        if duration:
            rows.append(("duration per view", f"{duration[0]:g} s"))
        if sensitivity:
            rows.append(("sensitivity", f"{sensitivity[0]:g} cps/MBq"))
        if duration and sensitivity and pix and len(pix) == 2:
            scale = pix[0] * pix[1] * 1e-3 * sensitivity[0] * 1e-6 * duration[0]
            rows.append(("count scale", f"{scale:.6g} counts per ({unit or 'a'})·mm per pixel"))
        counts = _get(f, "/projections/counts")
        if isinstance(counts, h5py.Dataset):
            try:
                total = float(np.asarray(counts[()], dtype=np.float64).sum())
                rows.append(("total counts", f"{total:.6g}"))
            except (OSError, RuntimeError, ValueError, TypeError):
                rows.append(("total counts", "? (unreadable)"))
        present = [
            name
            for name, where in (
                ("μ", "/attenuation/mu"),
                ("CT", "/attenuation/ct_hu"),
                ("background", "/background/counts"),
                ("truth activity", "/truth/activity"),
                ("labels", "/truth/labels"),
            )
            if isinstance(_get(f, where), h5py.Dataset)
        ]
        rows.append(("also holds", ", ".join(present) or "nothing else"))

    m = _get(f, "/method")
    if isinstance(m, h5py.Group):
        rows.append(("method", _text(_get_attr(m, "name")) or "?"))
        parameters = _text(_get_attr(m, "parameters"))
        if parameters:
            try:  # readable: μ rather than \u03bc
                parameters = json.dumps(json.loads(parameters), ensure_ascii=False)
            except ValueError:
                pass
            rows.append(("parameters", parameters))
        h = _get(f, "/history")
        if isinstance(h, h5py.Group):
            lengths = {}
            for name in h:
                ds = _get(h, name)
                if isinstance(ds, h5py.Dataset) and ds.ndim == 1:
                    lengths[name] = ds.shape[0]
            if lengths:
                rows.append(("history", ", ".join(f"{name} ({n})" for name, n in lengths.items())))
        study = _text(_get_attr(f, "study_file"))
        if study:
            rows.append(("study file", study))
        act = _get(f, "/activity")
        if isinstance(act, h5py.Dataset):
            try:
                values = np.asarray(act[()], dtype=np.float64)
                rows.append(("activity max", f"{values.max():.6g} {unit or ''}".rstrip()))
                spacing = _numbers(_get_attr(g, "spacing_mm")) if g is not None else None
                if unit == "Bq/mL" and spacing and len(spacing) == 3:
                    mbq = values.sum() * math.prod(spacing) * 1e-3 * 1e-6
                    rows.append(("total activity", f"{mbq:.6g} MBq"))
            except (OSError, RuntimeError, ValueError, TypeError):
                rows.append(("activity", "? (unreadable)"))


def _check(path: str | os.PathLike[str], rows: list[tuple[str, str]]) -> str:
    """``"ok"`` when the file reads as a valid study/result, else the reader's one-line error."""
    kind = dict(rows).get("kind", "")
    reader = read_result if kind.startswith("spect-result") else read_study
    try:
        reader(path)
    except (ValueError, OSError) as error:
        return f"FAILED: {' '.join(str(error).split())}"
    return f"ok (a valid {'result' if reader is read_result else 'study'} file)"

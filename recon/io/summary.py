"""Readable summaries of studies and results, as ``(field, value)`` rows: the one renderer.

- `summarize`: a study or result *file* (for ``spect info``), read leniently: unlike
  ``read_study``/``read_result`` it never refuses a file; it reports what it can read and what is
  wrong, so damaged files can be inspected.
- `study_rows`: a `recon.io.Study` in memory (what ``spect phantom``, ``spect simulate`` and the
  ``spect convert`` commands print).
- `result_rows`: a `recon.io.Result` in memory (total activity, against the truth of its study
  when given; the first and last log-likelihood or loss).

The rows share their field names and value formats (`views_text`, `grid_text`, `range_text`);
the CLI prints them as a two-column table.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

import h5py
import numpy as np

from recon.io.hdf5 import dataset_size_problem, read_result, read_study
from recon.io.study import Result, Study
from spectproj import CollimatorSpec

__all__ = [
    "collimator_text",
    "grid_text",
    "range_text",
    "result_rows",
    "study_rows",
    "summarize",
    "total_mbq",
    "views_text",
]

#: MBq per Bq.
_MBQ_PER_BQ = 1e-6


def views_text(angles: tuple[float, ...]) -> str:
    """``"N: a°, b°, …"`` or ``"N: first°–last°, step s°"`` for a list of detector angles."""
    n = len(angles)
    if n <= 4:
        return f"{n}: " + ", ".join(f"{a:g}°" for a in angles)
    steps = {round((b - a) % 360.0, 6) for a, b in itertools.pairwise(angles)}
    step = f", step {steps.pop():g}°" if len(steps) == 1 else ""
    return f"{n}: {angles[0]:g}°–{angles[-1]:g}°{step}"


def grid_text(grid: Any) -> str:
    """``"Z×Y×X voxels (z, y, x) of dz×dy×dx mm"`` (and the offset when not 0) of an image grid."""
    shape = "×".join(str(n) for n in grid.shape)
    spacing = "×".join(f"{d:g}" for d in grid.spacing_mm)
    text = f"{shape} voxels (z, y, x) of {spacing} mm"
    if any(grid.offset_mm):
        text += f", offset ({', '.join(f'{o:g}' for o in grid.offset_mm)}) mm"
    return text


def range_text(values: Any, unit: str) -> str:
    """``"min – max unit"`` of an array."""
    a = np.asarray(values)
    return f"{float(a.min()):.4g} – {float(a.max()):.4g} {unit}".rstrip()


def total_mbq(activity: np.ndarray, grid: Any, unit: str) -> float | None:
    """Total activity (MBq) of a concentration volume ``[Z, Y, X]`` in Bq/mL (else ``None``)."""
    if unit != "Bq/mL":
        return None
    voxel_ml = math.prod(grid.spacing_mm) * 1e-3
    return float(np.sum(activity, dtype=np.float64)) * voxel_ml * _MBQ_PER_BQ


def study_rows(study: Study) -> list[tuple[str, str]]:
    """Key facts of a study in memory as ``(field, value)`` rows.

    Views, detector, grid, isotope and energy, collimator, radius, duration, sensitivity, count
    scale, total counts (and the expected background), μ, CT, truth (range and total), labels and
    the anatomy, each when the study has it.
    """
    acq = study.acquisition
    rows: list[tuple[str, str]] = []
    n_rows, n_bins = acq.detector_shape
    rows.append(("views (β)", views_text(tuple(acq.angles_deg))))
    rows.append(
        (
            "detector",
            f"{n_rows}×{n_bins} pixels of {acq.pixel_size_mm[0]:g}×{acq.pixel_size_mm[1]:g} mm",
        )
    )
    rows.append(("grid", grid_text(study.grid)))
    energy = f"{acq.energy_keV:g} keV"
    if acq.energy_window_keV is not None:
        energy += f", window {acq.energy_window_keV[0]:g}–{acq.energy_window_keV[1]:g} keV"
    rows.append(("isotope, energy", f"{acq.isotope or '?'}, {energy}"))
    rows.append(("collimator", collimator_text(acq.collimator, acq.collimator_spec)))
    if acq.radius_mm is not None:
        rows.append(("radius", f"{acq.radius_mm:g} mm"))
    if acq.duration_s is not None:
        rows.append(("duration per view", f"{acq.duration_s:.6g} s"))
    if acq.sensitivity_cps_per_mbq is not None:
        rows.append(("sensitivity", f"{acq.sensitivity_cps_per_mbq:.6g} cps/MBq"))
    if acq.acquisition_start is not None:
        rows.append(("acquisition start", acq.acquisition_start))
    if acq.reference_time is not None:
        assert acq.half_life_s is not None
        rows.append(
            (
                "decay correction",
                f"to {acq.reference_time} (T½ {acq.half_life_s / 3600:.6g} h): "
                f"factor {acq.decay_factor:.6g}",
            )
        )
    if acq.dead_time_s is not None:
        rows.append(
            (
                "dead time",
                f"τ {acq.dead_time_s * 1e6:.6g} µs {acq.dead_time_model} at "
                f"{acq.observed_rate_cps:.6g} cps: factor {acq.dead_time_factor:.6g}",
            )
        )
    rows.append(
        ("count scale", f"{acq.count_scale:.6g} counts per ({study.activity_unit})·mm per pixel")
    )
    rows.append(("total counts", f"{float(study.projections.sum(dtype=np.float64)):.6g}"))
    if study.background is not None:
        expected = float(study.background.sum(dtype=np.float64))
        how = ""
        if study.background_source is not None:
            source = study.background_source
            how = f", {source.method}"
            smoothing = source.parameters.get("smoothing_fwhm_mm")
            if isinstance(smoothing, (int, float)) and smoothing > 0:
                how += f", smoothed {smoothing:g} mm"
        counted = float(study.projections.sum(dtype=np.float64))
        share = f" ({100.0 * expected / counted:.1f} %{how})" if counted > 0 else ""
        rows.append(("of which scatter (expected)", f"{expected:.6g}{share}"))
    for w in study.windows:
        rows.append(
            (
                f"window {w.name}",
                f"{w.low_keV:g}–{w.high_keV:g} keV, "
                f"{float(w.counts.sum(dtype=np.float64)):.6g} counts",
            )
        )
    rows.append(
        ("μ", range_text(study.mu_per_mm, "1/mm") if study.mu_per_mm is not None else "none")
    )
    if study.ct_hu is not None:
        rows.append(("CT", range_text(study.ct_hu, "HU")))
    if study.truth_activity is not None:
        text = range_text(study.truth_activity, study.activity_unit)
        total = total_mbq(study.truth_activity, study.grid, study.activity_unit)
        if total is not None:
            text += f"; {total:.6g} MBq in all"
        rows.append(("truth activity", text))
    if study.labels is not None:
        rows.append(("labels", ", ".join(f"{k} {v}" for k, v in study.label_names.items())))
    if study.anatomy is not None:
        n = len(study.anatomy.names)
        rows.append(("anatomy", f"{study.anatomy.source}; {n} segment(s)"))
    return rows


def result_rows(result: Result, study: Study | None = None) -> list[tuple[str, str]]:
    """Key facts of a result in memory as ``(field, value)`` rows.

    Method, grid, value range, total activity (MBq, Bq/mL results; with the truth of ``study``
    when it has one), the log-likelihood (EM) or the loss (NeRF) of the first and last
    iteration or step.
    """
    rows: list[tuple[str, str]] = [
        ("method", result.method),
        ("grid", grid_text(result.grid)),
        ("values", range_text(result.activity, result.activity_unit)),
    ]
    log_likelihood = result.history.get("log_likelihood")
    if log_likelihood is not None and len(log_likelihood):
        rows.append(
            (
                "log-likelihood",
                f"{log_likelihood[0]:.8g} (iteration 1) → {log_likelihood[-1]:.8g}",
            )
        )
    losses = result.extras.get("losses")
    if losses is not None and len(losses):
        rows.append(("loss", f"{losses[0]:.4g} (step 1) → {losses[-1]:.4g}"))
    total = total_mbq(result.activity, result.grid, result.activity_unit)
    if total is not None:
        text = f"{total:.6g} MBq"
        truth = None if study is None else study.truth_activity
        if study is not None and truth is not None:
            truth_total = total_mbq(truth, study.grid, study.activity_unit)
            if truth_total is not None:
                text += f" (truth {truth_total:.6g} MBq)"
        rows.append(("total activity", text))
    return rows


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape in ((), (1,)):
        return _text(value.reshape(-1)[0])
    return str(value)


def collimator_text(name: str | None, spec: CollimatorSpec | None) -> str:
    """``"SY-ME: D 2.94, L 40.64, septa 1.14 mm, hex; intrinsic 3.8 mm at 140 keV"``, the name
    alone when its parameters are unknown, ``"none"`` without one."""
    if spec is None:
        return name or "none"
    text = (
        f"{name or spec.name}: D {spec.hole_diameter_mm:g}, L {spec.hole_length_mm:g}, "
        f"septa {spec.septal_thickness_mm:g} mm, {spec.hole_shape}"
    )
    if spec.intrinsic_fwhm_mm > 0:
        text += f"; intrinsic {spec.intrinsic_fwhm_mm:g} mm at {spec.intrinsic_energy_keV:g} keV"
    if spec.penetration != "none":
        text += f"; penetration {spec.penetration}"
    return text


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


def _data(ds: h5py.Dataset) -> Any:
    """All of ``ds``, unless it is larger than the file or the memory budget (``ValueError``)."""
    problem = dataset_size_problem(ds.file.filename, ds)
    if problem is not None:
        raise ValueError(problem)
    return ds[()]


def _get_attr(obj: Any, name: str) -> Any:
    try:
        return obj.attrs[name] if name in obj.attrs else None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):
        return None


def _collimator_spec(group: Any) -> CollimatorSpec | None:
    """The ``/collimator`` group (format version 3) as a spec, or ``None`` if absent or bad."""
    if not isinstance(group, h5py.Group):
        return None
    values: dict[str, Any] = {}
    for key in list(group.attrs):
        value = _get_attr(group, key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.generic):
            value = value.item()
        values[str(key)] = value
    try:
        return CollimatorSpec.from_mapping(values)
    except (TypeError, ValueError):
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
                angles = _numbers(_data(angles_ds))
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
        spec = _collimator_spec(_get(f, "/collimator"))
        text = collimator_text(collimator, spec) if collimator or spec else "none named"
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
                total = float(np.asarray(_data(counts), dtype=np.float64).sum())
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
                ("anatomy", "/anatomy/labels"),
            )
            if isinstance(_get(f, where), h5py.Dataset)
        ]
        rows.append(("also holds", ", ".join(present) or "nothing else"))
        spacing = _numbers(_get_attr(g, "spacing_mm")) if isinstance(g, h5py.Group) else None
        _anatomy_rows(f, spacing, rows)

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
                values = np.asarray(_data(act), dtype=np.float64)
                rows.append(("activity max", f"{values.max():.6g} {unit or ''}".rstrip()))
                spacing = _numbers(_get_attr(g, "spacing_mm")) if g is not None else None
                if unit == "Bq/mL" and spacing and len(spacing) == 3:
                    mbq = values.sum() * math.prod(spacing) * 1e-3 * 1e-6
                    rows.append(("total activity", f"{mbq:.6g} MBq"))
            except (OSError, RuntimeError, ValueError, TypeError):
                rows.append(("activity", "? (unreadable)"))


def _volume_text(voxels: int, voxel_ml: float | None) -> str:
    text = f"{voxels} voxels"
    return text if voxel_ml is None else f"{text}, {voxels * voxel_ml:.4g} mL"


def _anatomy_rows(f: Any, spacing: list[float] | None, rows: list[tuple[str, str]]) -> None:
    """``anatomy`` (its source), then one ``  <segment>`` row each: voxels and volume (mL)."""
    ds = _get(f, "/anatomy/labels")
    if not isinstance(ds, h5py.Dataset):
        return
    voxel_ml = math.prod(spacing) * 1e-3 if spacing and len(spacing) == 3 else None
    source = _text(_get_attr(ds, "source")) or "source not given"
    try:
        labels = np.asarray(_data(ds))
        values, counts = np.unique(labels, return_counts=True)
    except (OSError, RuntimeError, ValueError, TypeError):
        rows.append(("anatomy", f"{source}; labels unreadable"))
        return
    found = {int(v): int(n) for v, n in zip(values.tolist(), counts.tolist(), strict=True)}
    names: dict[int, str] = {}
    keys, texts = _numbers(_get_attr(ds, "label_values")), _get_attr(ds, "label_names")
    if keys is not None and texts is not None:
        texts = [_text(t) or "?" for t in np.atleast_1d(np.asarray(texts, dtype=object))]
        if len(texts) == len(keys):
            names = {int(k): t for k, t in zip(keys, texts, strict=True)}
    segments = sorted(set(found) - {0} | set(names))
    rows.append(("anatomy", f"{source}; {len(segments)} segment(s)"))
    for value in segments:
        name = names.get(value, f"label {value} (unnamed)")
        rows.append((f"  {name}", f"label {value}: " + _volume_text(found.get(value, 0), voxel_ml)))
    body = _get(f, "/anatomy/body")
    if isinstance(body, h5py.Dataset):
        try:
            inside = int(np.count_nonzero(np.asarray(_data(body))))
            rows.append(("  body outline", _volume_text(inside, voxel_ml)))
        except (OSError, RuntimeError, ValueError, TypeError):
            rows.append(("  body outline", "? (unreadable)"))


def _check(path: str | os.PathLike[str], rows: list[tuple[str, str]]) -> str:
    """``"ok"`` when the file reads as a valid study/result, else the reader's one-line error."""
    kind = dict(rows).get("kind", "")
    reader = read_result if kind.startswith("spect-result") else read_study
    try:
        reader(path)
    except (ValueError, OSError) as error:
        return f"FAILED: {' '.join(str(error).split())}"
    return f"ok (a valid {'result' if reader is read_result else 'study'} file)"

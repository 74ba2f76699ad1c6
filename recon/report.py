"""Comparison reports: several reconstructions of one study scored against its truth.

`compare` scores every reconstruction (`recon.metrics.evaluate_volume`, the projection-domain fit
`recon.projection_metrics.projection_fit` of its expected counts) and, for an AP/PA study with μ
and labels, adds the conjugate-view organ activities (`recon.conjugate_view`), which have no
volume. `write_report` turns a `Comparison` into a folder::

    report.html        one self-contained page (CSS inline, every image embedded as a
                       data: URI, relative links to the files below; no external assets)
    comparison.png     truth and each method: coronal MIP and three slices, one colour scale
    profiles.png       line profiles through one point (left-right, front-back, head-feet)
    organs.png         organ-activity errors of every method (bar chart)
    projections.png    measured counts and each method's expected counts along one detector row
    convergence.png    log-likelihood / loss curves from the results' histories (if any)
    summary.json       every number of the report
    summary.md         the headline and organ tables in Markdown

Nothing here prints; every file is written atomically (`recon.io.atomic_output`).

Expected counts of a volume x for the projection fit are ``count_scale · A x + b`` with the
study's geometry, μ, collimator blur (its named preset, when the study has a radius) and
background: every method is scored with the same forward model, that of the data.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.figures import ACTIVITY_CMAP, _centre, _edges, _mark, _new_figure, save_png
from recon.io.atomic import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from recon.io.study import Result, Study
    from spectproj import CollimatorResponse

__all__ = [
    "FIGURES",
    "Comparison",
    "MethodResult",
    "ReportFiles",
    "compare",
    "comparison_figure",
    "convergence_figure",
    "expected_counts",
    "headline_cells",
    "json_safe",
    "method_label",
    "organ_figure",
    "profiles_figure",
    "projection_profiles_figure",
    "report_point",
    "study_collimator_response",
    "write_report",
]

#: The PNG files of a report, by role (``convergence`` only when a method has a history).
FIGURES = {
    "comparison": "comparison.png",
    "profiles": "profiles.png",
    "organs": "organs.png",
    "projections": "projections.png",
    "convergence": "convergence.png",
}
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

#: Name of the conjugate-view column (organ activities only, no volume).
CONJUGATE_VIEW = "conjugate view"
#: Colour of the truth in plots, and of the methods in order.
TRUTH_COLOUR = "black"
METHOD_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
CONJUGATE_COLOUR = "tab:gray"


# -- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodResult:
    """One reconstruction to compare.

    Attributes
    ----------
    name : str
        Display name (``"NeRF"``, ``"MLEM"``, a file name, ...); unique within a comparison.
    activity : numpy.ndarray
        ``[Z, Y, X]`` activity concentration on the study's grid, in the study's unit.
    result : recon.io.Result, optional
        The result it came from (its method, parameters and history are reported).
    file : str, optional
        Path of the result file, if any (shown in the report; linked when it lies in the report
        folder).
    """

    name: str
    activity: np.ndarray
    result: Result | None = None
    file: str | None = None

    @classmethod
    def from_result(
        cls, result: Result, name: str | None = None, file: str | None = None
    ) -> MethodResult:
        """A method from a `recon.io.Result` (named by its method unless ``name`` is given)."""
        label = name if name is not None else method_label(result.method)
        return cls(label, np.asarray(result.activity), result, file)


def method_label(method: str) -> str:
    """Display name of a result's method: ``"nerf"`` → ``"NeRF"``, ``"mlem"`` → ``"MLEM"``, ..."""
    return _METHOD_LABELS.get(str(method).lower(), str(method).upper())


_METHOD_LABELS = {"nerf": "NeRF", "mlem": "MLEM", "osem": "OSEM", "map-osl": "MAP-OSL"}


@dataclass
class Comparison:
    """Scores of several reconstructions of one study (see `compare`).

    Attributes
    ----------
    study : recon.io.Study
        The study (with ``truth_activity``).
    methods : list of MethodResult
        The reconstructions, in report order.
    metrics : dict
        Method name → `recon.metrics.evaluate_volume` output.
    projection_fit : dict
        Method name → `recon.projection_metrics.projection_fit` output (``None`` if it failed).
    expected : dict
        Method name → ``[V, rows, bins]`` expected counts (float32).
    conjugate_view : list of dict or None
        `recon.conjugate_view.ConjugateViewRow` dicts, when the study allows the method.
    conjugate_background : str or None
        The background option the conjugate view used.
    notes : list of str
        What was skipped and why, and other remarks for the reader.
    study_file : str or None
        Path of the study file, if any.
    """

    study: Study
    methods: list[MethodResult]
    metrics: dict[str, dict[str, Any]]
    projection_fit: dict[str, dict[str, float] | None]
    expected: dict[str, np.ndarray]
    conjugate_view: list[dict[str, Any]] | None = None
    conjugate_background: str | None = None
    notes: list[str] = field(default_factory=list)
    study_file: str | None = None

    # -- tables ------------------------------------------------------------------------------
    def organ_names(self) -> list[str]:
        """Organs (named labels with activity) in label order, ``body`` excluded."""
        names: list[str] = []
        for m in self.methods:
            for row in self.metrics[m.name].get("organs", []):
                if row["name"] != "body" and row["true_mbq"] > 0 and row["name"] not in names:
                    names.append(row["name"])
        return names

    def organ_table(self) -> list[dict[str, Any]]:
        """One row per organ: ``name``, ``true_mbq`` and ``estimates`` (column name →
        ``{"mbq", "relative_error"}``), the conjugate view included as a column."""
        rows: dict[str, dict[str, Any]] = {}
        for name in self.organ_names():
            rows[name] = {"name": name, "true_mbq": None, "estimates": {}}
        for m in self.methods:
            for row in self.metrics[m.name].get("organs", []):
                if row["name"] in rows:
                    rows[row["name"]]["true_mbq"] = row["true_mbq"]
                    rows[row["name"]]["estimates"][m.name] = {
                        "mbq": row["estimated_mbq"],
                        "relative_error": row["relative_error"],
                    }
        for row in self.conjugate_view or []:
            if row["name"] in rows:
                rows[row["name"]]["estimates"][CONJUGATE_VIEW] = {
                    "mbq": row["activity_mbq"],
                    "relative_error": row["relative_error"],
                }
        return list(rows.values())

    def columns(self) -> list[str]:
        """Column names of the organ table: the methods, then the conjugate view if present."""
        names = [m.name for m in self.methods]
        return names + ([CONJUGATE_VIEW] if self.conjugate_view else [])

    def mean_abs_organ_error(self, column: str) -> float | None:
        """Mean |relative error| over the organs (lesions excluded) for one column."""
        errors = []
        for row in self.organ_table():
            if str(row["name"]).startswith("lesion"):
                continue
            est = row["estimates"].get(column)
            if est is None or est["relative_error"] is None:
                return None
            errors.append(abs(float(est["relative_error"])))
        return float(np.mean(errors)) if errors else None

    def headline(self) -> list[dict[str, Any]]:
        """One row per column: NRMSE in the body, PSNR, SSIM, total-activity error, activity
        outside the body, mean |organ error| and projection deviance per pixel (``None`` where a
        column has no such number, e.g. the conjugate view's volume metrics)."""
        rows = []
        for m in self.methods:
            met = self.metrics[m.name]
            fit = self.projection_fit.get(m.name) or {}
            outside = met.get("activity_outside") or {}
            rows.append(
                {
                    "method": m.name,
                    "nrmse_body": met.get("nrmse_body"),
                    "psnr_db": met.get("psnr_db"),
                    "ssim": met.get("ssim"),
                    "total_activity_error": met["total_activity"]["relative_error"],
                    "activity_outside_fraction": outside.get("fraction"),
                    "mean_abs_organ_error": self.mean_abs_organ_error(m.name),
                    "deviance_per_pixel": fit.get("deviance_per_pixel"),
                }
            )
        if self.conjugate_view:
            rows.append(
                {
                    "method": CONJUGATE_VIEW,
                    "nrmse_body": None,
                    "psnr_db": None,
                    "ssim": None,
                    "total_activity_error": None,
                    "activity_outside_fraction": None,
                    "mean_abs_organ_error": self.mean_abs_organ_error(CONJUGATE_VIEW),
                    "deviance_per_pixel": None,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Everything as a JSON-serialisable dict (non-finite numbers as ``None``)."""
        study = self.study
        acq = study.acquisition
        methods = []
        for m in self.methods:
            entry: dict[str, Any] = {
                "name": m.name,
                "file": m.file,
                "method": None if m.result is None else m.result.method,
                "metrics": self.metrics[m.name],
                "projection_fit": self.projection_fit.get(m.name),
            }
            if m.result is not None:
                entry["parameters"] = dict(m.result.parameters)
            methods.append(entry)
        out = {
            "study": {
                "file": self.study_file,
                "isotope": acq.isotope,
                "energy_keV": acq.energy_keV,
                "views_deg": list(acq.angles_deg),
                "detector_shape": list(acq.detector_shape),
                "pixel_size_mm": list(acq.pixel_size_mm),
                "collimator": acq.collimator,
                "total_counts": float(np.asarray(study.projections, dtype=np.float64).sum()),
                "count_scale": acq.count_scale,
                "grid": {
                    "shape": list(study.grid.shape),
                    "spacing_mm": list(study.grid.spacing_mm),
                    "offset_mm": list(study.grid.offset_mm),
                },
                "activity_unit": study.activity_unit,
            },
            "headline": self.headline(),
            "organs": self.organ_table(),
            "methods": methods,
            "conjugate_view": None
            if self.conjugate_view is None
            else {"background": self.conjugate_background, "rows": self.conjugate_view},
            "notes": list(self.notes),
        }
        return json_safe(out)


@dataclass(frozen=True)
class ReportFiles:
    """The files `write_report` wrote (absolute paths)."""

    folder: Path
    html: Path
    summary_json: Path
    summary_md: Path
    figures: dict[str, Path]


# -- scoring -------------------------------------------------------------------------------------


def study_collimator_response(study: Study) -> CollimatorResponse | None:
    """The collimator blur a study names (``acquisition.collimator`` at its energy), or ``None``
    when it names none, has no radius, or names an unknown preset."""
    from spectproj import CollimatorResponse

    acq = study.acquisition
    if not acq.collimator or acq.radius_mm is None:
        return None
    try:
        return CollimatorResponse.preset(acq.collimator, acq.energy_keV)
    except ValueError:
        return None


def expected_counts(study: Study, activity: np.ndarray, *, device: Any = None) -> np.ndarray:
    """Expected counts ``[V, rows, bins]`` (float32) of ``activity`` under the study's model.

    ``count_scale · A(activity) + background`` with the study's geometry, μ (if any), collimator
    blur (`study_collimator_response`) and background (if any). Negative activity is clipped to
    0 first (expected counts cannot be negative).
    """
    import torch

    from spectproj import SPECTProjector

    dev = torch.device("cpu") if device is None else torch.device(device)
    x = np.asarray(activity, dtype=np.float32)
    if x.shape != tuple(study.grid.shape):
        raise ValueError(
            f"activity has shape {x.shape}, the study's grid {tuple(study.grid.shape)}"
        )
    mu = None
    if study.mu_per_mm is not None:
        mu = torch.as_tensor(np.ascontiguousarray(study.mu_per_mm, dtype=np.float32), device=dev)
    projector = SPECTProjector(
        study.geometry(), mu, study_collimator_response(study), dtype=torch.float32, device=dev
    )
    with torch.no_grad():
        volume = torch.as_tensor(np.ascontiguousarray(np.maximum(x, 0.0)), device=dev)
        y = study.acquisition.count_scale * projector(volume)
        if study.background is not None:
            y = y + torch.as_tensor(np.asarray(study.background, dtype=np.float32), device=dev)
    return y.cpu().numpy().astype(np.float32)


def compare(
    study: Study,
    methods: Sequence[MethodResult],
    *,
    conjugate_view: bool = True,
    conjugate_background: str = "body",
    study_file: str | os.PathLike[str] | None = None,
    device: Any = None,
) -> Comparison:
    """Score reconstructions of ``study`` against its truth.

    Parameters
    ----------
    study : recon.io.Study
        With ``truth_activity``; ``labels``/``label_names`` give organ rows and the body mask.
    methods : sequence of MethodResult
        Volumes on the study's grid, with unique names.
    conjugate_view : bool
        Add the conjugate-view organ activities when the study has an AP/PA pair, μ and labels
        (skipped with a note otherwise).
    conjugate_background : str
        Its ``background`` option: ``"body"`` (default; the body label's tissue background, far
        more accurate on the torso), ``"study"`` or any label name. If the label cannot serve
        (e.g. no pixel outside the organs), ``"study"`` is used and a note says so.
    study_file : path, optional
        Recorded in the summary.
    device : torch device, optional
        Where the expected counts are computed.

    Raises
    ------
    ValueError
        No truth, no method, duplicate names, or a volume not on the study's grid.
    """
    from recon.metrics import evaluate_volume
    from recon.projection_metrics import projection_fit

    if study.truth_activity is None:
        raise ValueError("the study holds no truth activity; there is nothing to compare with")
    if not methods:
        raise ValueError("give at least one reconstruction to compare")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    shape = tuple(study.grid.shape)
    for m in methods:
        if tuple(np.shape(m.activity)) != shape:
            raise ValueError(
                f"{m.name}: activity has shape {tuple(np.shape(m.activity))}, the study's grid "
                f"{shape}"
            )
        if m.result is not None and m.result.grid != study.grid:
            raise ValueError(
                f"{m.name}: the result's grid {m.result.grid} is not the study's {study.grid}"
            )

    truth = np.asarray(study.truth_activity)
    counts = np.asarray(study.projections, dtype=np.float32)
    notes: list[str] = []
    metrics: dict[str, dict[str, Any]] = {}
    fits: dict[str, dict[str, float] | None] = {}
    expected: dict[str, np.ndarray] = {}
    for m in methods:
        metrics[m.name] = evaluate_volume(
            m.activity,
            truth,
            study.labels,
            study.label_names,
            study.grid,
            unit=study.activity_unit,
        )
        expected[m.name] = expected_counts(study, m.activity, device=device)
        try:
            fits[m.name] = projection_fit(expected[m.name], counts)
        except ValueError as error:
            fits[m.name] = None
            notes.append(f"{m.name}: no projection fit ({error})")

    rows = None
    background_used = None
    if conjugate_view:
        rows, background_used, note = _conjugate_view(study, conjugate_background)
        if note:
            notes.append(note)
    return Comparison(
        study=study,
        methods=list(methods),
        metrics=metrics,
        projection_fit=fits,
        expected=expected,
        conjugate_view=rows,
        conjugate_background=background_used,
        notes=notes,
        study_file=None if study_file is None else os.fspath(study_file),
    )


def _conjugate_view(
    study: Study, background: str
) -> tuple[list[dict[str, Any]] | None, str | None, str | None]:
    """Conjugate-view rows (or ``None``), the background used, and a note for the reader."""
    from recon.conjugate_view import conjugate_view_quantification

    angles = [a % 360.0 for a in study.acquisition.angles_deg]
    has_pair = any(abs(a) < 1e-6 for a in angles) and any(abs(a - 180.0) < 1e-6 for a in angles)
    if not has_pair or study.mu_per_mm is None or study.labels is None or not study.label_names:
        return None, None, "conjugate view skipped: it needs an AP/PA pair, μ and organ labels"
    names = {str(n) for n in study.label_names.values()}
    choice: str | None = background if background in names or background == "study" else "study"
    try:
        result = conjugate_view_quantification(study, background=choice)
        note = None
        if choice != background:
            note = f"conjugate view: no {background!r} label, study background used"
    except ValueError as error:
        if choice == "study":
            return None, None, f"conjugate view skipped: {error}"
        try:
            result = conjugate_view_quantification(study, background="study")
        except ValueError as error2:
            return None, None, f"conjugate view skipped: {error2}"
        note = (
            f"conjugate view: background {background!r} unusable ({error}); study background used"
        )
        choice = "study"
    return [r.to_dict() for r in result], choice, note


# -- figures -------------------------------------------------------------------------------------


def report_point(study: Study) -> tuple[int, int, int]:
    """Voxel ``(k, j, i)`` the report's slices and profiles go through.

    The centroid of the largest lesion (a label whose name starts with ``lesion``) when the study
    has one, else the hottest voxel of the truth smoothed over 3 voxels.
    """
    from scipy import ndimage

    truth = np.asarray(study.truth_activity, dtype=np.float64)
    if study.labels is not None:
        labels = np.asarray(study.labels)
        best, size = None, 0
        for value, name in study.label_names.items():
            if str(name).startswith("lesion"):
                n = int((labels == int(value)).sum())
                if n > size:
                    best, size = int(value), n
        if best is not None:
            k, j, i = (round(float(c)) for c in np.argwhere(labels == best).mean(axis=0))
            return k, j, i
    smooth = ndimage.uniform_filter(truth, size=3, mode="constant")
    k, j, i = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return int(k), int(j), int(i)


def comparison_figure(
    truth: np.ndarray,
    methods: Sequence[MethodResult],
    grid: Any,
    *,
    point: tuple[int, int, int],
    unit: str = "Bq/mL",
    title: str | None = None,
) -> Figure:
    """Truth (first row) and each method (one row each): coronal MIP, then coronal, sagittal and
    transverse slices through ``point``, all on one colour scale (0 to the truth's maximum;
    hotter values are clipped)."""
    t = np.asarray(truth, dtype=np.float64)
    rows = [("truth", t)] + [(m.name, np.asarray(m.activity, dtype=np.float64)) for m in methods]
    k, j, i = point
    z0, z1 = _edges(grid, 0)
    y0, y1 = _edges(grid, 1)
    x0, x1 = _edges(grid, 2)
    zc, yc, xc = _centre(grid, 0, k), _centre(grid, 1, j), _centre(grid, 2, i)
    vmax = float(t.max()) if t.size and float(t.max()) > 0 else 1.0
    style = {"cmap": ACTIVITY_CMAP, "vmin": 0.0, "vmax": vmax, "interpolation": "nearest"}
    fig = _new_figure(13.0, 2.9 * len(rows) + 0.8)
    axes = np.atleast_2d(fig.subplots(len(rows), 4, squeeze=False))
    image = None
    for r, (name, v) in enumerate(rows):
        panels = (
            (v.max(axis=1), "lower", (x0, x1, z0, z1), "coronal MIP", ("R", "L"), None),
            (v[:, j, :], "lower", (x0, x1, z0, z1), f"coronal, y = {yc:.0f} mm", ("R", "L"),
             (xc, zc)),
            (v[:, :, i], "lower", (y0, y1, z0, z1), f"sagittal, x = {xc:.0f} mm", ("A", "P"),
             (yc, zc)),
            (v[k], "upper", (x0, x1, y1, y0), f"transverse, z = {zc:.0f} mm",
             ("R", "L", "A", "P"), (xc, yc)),
        )  # fmt: skip
        for c, (img, origin, extent, label, marks, cross) in enumerate(panels):
            ax = axes[r, c]
            image = ax.imshow(img, origin=origin, extent=extent, **style)
            ax.set_title(label, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            _mark(ax, *marks)
            if cross is not None:
                line = {"color": "tab:cyan", "lw": 0.5, "alpha": 0.5, "ls": "--"}
                ax.axvline(cross[0], **line)
                ax.axhline(cross[1], **line)
        axes[r, 0].set_ylabel(name, fontsize=12, weight="bold")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label=f"activity ({unit})")
    if title:
        fig.suptitle(title)
    return fig


def profiles_figure(
    truth: np.ndarray,
    methods: Sequence[MethodResult],
    grid: Any,
    *,
    point: tuple[int, int, int],
    unit: str = "Bq/mL",
    title: str | None = None,
) -> Figure:
    """Line profiles through ``point`` along x (right → left), y (anterior → posterior, the depth
    two opposed views cannot resolve) and z (feet → head): truth and every method."""
    k, j, i = point
    fig = _new_figure(13.0, 3.8)
    axes = fig.subplots(1, 3, sharey=True)
    t = np.asarray(truth, dtype=np.float64)
    profiles = (
        (2, lambda v: v[k, j, :], "x (mm), patient right → left"),
        (1, lambda v: v[k, :, i], "y (mm), anterior → posterior"),
        (0, lambda v: v[:, j, i], "z (mm), feet → head"),
    )
    for ax, (axis, take, xlabel) in zip(axes, profiles, strict=True):
        pos = np.array([_centre(grid, axis, n) for n in range(grid.shape[axis])])
        ax.plot(pos, take(t), color=TRUTH_COLOUR, lw=2.0, label="truth", drawstyle="steps-mid")
        for m, colour in zip(methods, _colours(len(methods)), strict=True):
            v = np.asarray(m.activity, dtype=np.float64)
            ax.plot(pos, take(v), color=colour, lw=1.3, label=m.name, drawstyle="steps-mid")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    zc, yc, xc = _centre(grid, 0, k), _centre(grid, 1, j), _centre(grid, 2, i)
    axes[0].set_ylabel(f"activity ({unit})")
    axes[0].set_title(f"left–right at y = {yc:.0f}, z = {zc:.0f} mm", fontsize=10)
    axes[1].set_title(f"front–back (depth) at x = {xc:.0f}, z = {zc:.0f} mm", fontsize=10)
    axes[2].set_title(f"head–feet at x = {xc:.0f}, y = {yc:.0f} mm", fontsize=10)
    axes[0].legend(fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def organ_figure(comparison: Comparison, *, title: str | None = None, limit: float = 2.0) -> Figure:
    """Grouped bars of each organ's activity error (%) for every method and the conjugate view;
    bars beyond ±``limit`` (relative) are clipped and labelled with their value."""
    table = comparison.organ_table()
    columns = comparison.columns()
    colours = list(_colours(len(comparison.methods))) + (
        [CONJUGATE_COLOUR] if comparison.conjugate_view else []
    )
    n = max(len(table), 1)
    fig = _new_figure(max(7.0, 0.9 * n + 2.5), 4.6)
    ax = fig.subplots()
    width = 0.8 / max(len(columns), 1)
    x = np.arange(len(table))
    lo, hi = -100.0, 100.0 * limit
    for c, (column, colour) in enumerate(zip(columns, colours, strict=True)):
        values = []
        for row in table:
            est = row["estimates"].get(column)
            rel = None if est is None else est["relative_error"]
            values.append(math.nan if rel is None else 100.0 * float(rel))
        shown = np.clip(values, lo, hi)
        xs = x - 0.4 + width * (c + 0.5)
        ax.bar(xs, shown, width=width, color=colour, label=column)
        for xv, v, s in zip(xs, values, shown, strict=True):
            if math.isfinite(v) and v != s:
                ax.text(xv, s, f"{v:+.0f}%", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([str(r["name"]) for r in table], rotation=35, ha="right", fontsize=9)
    ax.set_ylabel("activity error (%)")
    ax.set_ylim(lo * 1.05, hi * 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, ncol=min(len(columns), 4))
    ax.set_title(title or "Organ activity: (estimate − truth) / truth")
    return fig


def projection_profiles_figure(
    study: Study,
    comparison: Comparison,
    *,
    row: int,
    title: str | None = None,
) -> Figure:
    """Measured counts (dots) and each method's expected counts (lines) along detector ``row``
    of (up to) four views, bins as a viewer shows them."""
    from recon.figures import choose_views, view_name

    acq = study.acquisition
    counts = np.asarray(study.projections, dtype=np.float64)
    views = choose_views(acq.angles_deg, 4)
    fig = _new_figure(5.0 * len(views) + 1.0, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(views), sharey=True, squeeze=False)[0])
    bins = counts.shape[2]
    r = (np.arange(bins) - (bins - 1) / 2.0) * acq.pixel_size_mm[1]
    for ax, v in zip(axes, views, strict=True):
        ax.plot(r, counts[v, row], ".", color=TRUTH_COLOUR, ms=4, label="measured")
        for m, colour in zip(comparison.methods, _colours(len(comparison.methods)), strict=True):
            ax.plot(r, comparison.expected[m.name][v, row], color=colour, lw=1.3, label=m.name)
        ax.set_title(view_name(float(acq.angles_deg[v])), fontsize=10)
        ax.set_xlabel("detector position r (mm)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"counts (row {row})")
    axes[0].legend(fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def _curves(result: Result) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(label, x, y, x label) curves of a result's history."""
    h = {k: np.asarray(v, dtype=np.float64) for k, v in result.history.items()}
    curves = []
    if "log_likelihood" in h and h["log_likelihood"].size:
        ll = h["log_likelihood"]
        curves.append(("Poisson log-likelihood", np.arange(1, ll.size + 1), ll, "iteration"))
    if "loss" in h and h["loss"].size:
        step = h.get("step", np.arange(1, h["loss"].size + 1, dtype=np.float64))
        curves.append(("training loss", step, h["loss"], "step"))
        if "val_deviance" in h:
            ok = np.isfinite(h["val_deviance"])
            if ok.any():
                curves.append(
                    ("validation deviance / pixel", step[ok], h["val_deviance"][ok], "step")
                )
    return curves


def convergence_figure(
    methods: Sequence[MethodResult], *, title: str | None = None
) -> Figure | None:
    """One panel per method with a history: MLEM's log-likelihood per iteration, a NeRF's
    training loss (and validation deviance) per step. ``None`` if no method has one."""
    panels = [
        (m, colour, _curves(m.result))
        for m, colour in zip(methods, _colours(len(methods)), strict=True)
        if m.result is not None and _curves(m.result)
    ]
    if not panels:
        return None
    fig = _new_figure(5.2 * len(panels) + 0.6, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (m, colour, curves) in zip(axes, panels, strict=True):
        label, x, y, xlabel = curves[0]
        ax.plot(x, y, color=colour, lw=1.5, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label, color=colour)
        ax.grid(alpha=0.3)
        if len(curves) > 1 and curves[0][0] == "training loss":
            twin = ax.twinx()
            label2, x2, y2, _ = curves[1]
            twin.plot(x2, y2, "o-", color="tab:red", ms=3, lw=1.0, label=label2)
            twin.set_ylabel(label2, color="tab:red")
        ax.set_title(m.name, fontsize=11)
    if title:
        fig.suptitle(title)
    return fig


def _colours(n: int) -> list[str]:
    return [METHOD_COLOURS[k % len(METHOD_COLOURS)] for k in range(n)]


# -- writing -------------------------------------------------------------------------------------


def write_report(
    folder: str | os.PathLike[str],
    comparison: Comparison,
    *,
    title: str = "Reconstruction comparison",
    intro: str | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_rows: Sequence[tuple[str, str]] = (),
    overwrite: bool = False,
    dpi: int = 100,
) -> ReportFiles:
    """Write the report of ``comparison`` into ``folder`` (created if missing).

    Parameters
    ----------
    folder : path
        Output folder.
    comparison : Comparison
        What `compare` returned.
    title : str
        Page and figure title.
    intro : str, optional
        A paragraph of plain text under the title.
    extra : mapping, optional
        More entries for ``summary.json`` (e.g. the demo's timings).
    extra_rows : sequence of (str, str)
        More rows for the page's "About" table (plain text).
    overwrite : bool
        Replace existing report files; without it any existing one is refused (before any
        file is written) with `FileExistsError`.
    dpi : int
        Resolution of the PNG files.

    Returns
    -------
    ReportFiles
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    names = [REPORT_HTML, SUMMARY_JSON, SUMMARY_MD, *FIGURES.values()]
    if not overwrite:
        existing = [str(out / n) for n in names if os.path.lexists(out / n)]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)}: already exist(s); use --force (overwrite=True) to replace"
            )
    out.mkdir(parents=True, exist_ok=True)

    study = comparison.study
    truth = np.asarray(study.truth_activity)
    point = report_point(study)
    unit = study.activity_unit
    figures: dict[str, Figure] = {
        "comparison": comparison_figure(
            truth, comparison.methods, study.grid, point=point, unit=unit, title=title
        ),
        "profiles": profiles_figure(truth, comparison.methods, study.grid, point=point, unit=unit),
        "organs": organ_figure(comparison),
        "projections": projection_profiles_figure(
            study, comparison, row=_detector_row(study, point)
        ),
    }
    curves = convergence_figure(comparison.methods)
    if curves is not None:
        figures["convergence"] = curves
    elif os.path.lexists(out / FIGURES["convergence"]) and overwrite:
        (out / FIGURES["convergence"]).unlink()

    paths: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for key, fig in figures.items():
        path = out / FIGURES[key]
        save_png(fig, path, overwrite=overwrite, dpi=dpi)
        paths[key] = path
        images[key] = path.read_bytes()

    summary = comparison.to_dict()
    summary["title"] = title
    summary["created_utc"] = _now()
    summary["software"] = f"spect {_software_version()}"
    summary["slice_point_voxel"] = list(point)
    summary["figures"] = {k: p.name for k, p in paths.items()}
    if extra:
        summary.update(json_safe(dict(extra)))
    json_path, md_path, html_path = out / SUMMARY_JSON, out / SUMMARY_MD, out / REPORT_HTML
    with atomic_output(json_path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with atomic_output(md_path, overwrite=overwrite) as tmp:
        tmp.write_text(summary_markdown(comparison, title=title), encoding="utf-8")
    page = _html_page(comparison, summary, images, paths, out, title, intro, extra_rows, point)
    with atomic_output(html_path, overwrite=overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return ReportFiles(
        folder=out.resolve(),
        html=html_path.resolve(),
        summary_json=json_path.resolve(),
        summary_md=md_path.resolve(),
        figures={k: p.resolve() for k, p in paths.items()},
    )


def _detector_row(study: Study, point: tuple[int, int, int]) -> int:
    """The detector row that sees slice z of ``point`` (rows run along z, docs/conventions.md)."""
    rows = study.acquisition.detector_shape[0]
    z = _centre(study.grid, 0, point[0])
    row = round(z / study.acquisition.pixel_size_mm[0] + (rows - 1) / 2.0)
    return min(max(row, 0), rows - 1)


# -- text ----------------------------------------------------------------------------------------


def _pct(value: object, digits: int = 1) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:+.{digits}f} %"


def _num(value: object, fmt: str = ".3f") -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return format(value, fmt)


def headline_cells(row: Mapping[str, Any]) -> list[str]:
    """The headline row as text cells, in the order of `HEADLINE_COLUMNS`."""
    outside = row.get("activity_outside_fraction")
    return [
        str(row["method"]),
        _num(row.get("nrmse_body")),
        _num(row.get("psnr_db"), ".2f"),
        _num(row.get("ssim")),
        _pct(row.get("total_activity_error")),
        "–" if outside is None else f"{100.0 * outside:.1f} %",
        "–"
        if row.get("mean_abs_organ_error") is None
        else f"{100.0 * row['mean_abs_organ_error']:.1f} %",
        _num(row.get("deviance_per_pixel"), ".3g"),
    ]


#: Column titles of the headline table.
HEADLINE_COLUMNS = (
    "method",
    "NRMSE (body)",
    "PSNR (dB)",
    "SSIM",
    "total activity error",
    "activity outside body",
    "mean abs. organ error",
    "projection deviance / pixel",
)


def summary_markdown(comparison: Comparison, *, title: str) -> str:
    """The headline and organ tables as Markdown (what ``summary.md`` holds)."""
    lines = [f"# {title}", "", "| " + " | ".join(HEADLINE_COLUMNS) + " |"]
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(HEADLINE_COLUMNS) - 1)) + "|")
    for row in comparison.headline():
        lines.append("| " + " | ".join(headline_cells(row)) + " |")
    columns = comparison.columns()
    lines += ["", "Organ activities (MBq) and errors:", ""]
    lines.append("| organ | truth (MBq) | " + " | ".join(columns) + " |")
    lines.append("|" + "|".join([" --- ", " ---: "] + [" ---: "] * len(columns)) + "|")
    for row in comparison.organ_table():
        cells = [str(row["name"]), _num(row["true_mbq"], ".3g")]
        for column in columns:
            est = row["estimates"].get(column)
            cells.append(
                "–"
                if est is None
                else f"{_num(est['mbq'], '.3g')} ({_pct(est['relative_error'], 0)})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "NRMSE = ‖x − t‖/‖t‖ inside the body; PSNR with the truth's maximum as peak; SSIM in 3D; "
        "mean abs. organ error = mean |error| over the organs (lesions excluded); deviance "
        "per pixel ≈ 1 for a model that explains Poisson data.",
    ]
    for note in comparison.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:2em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
.muted{color:#666;font-size:.9em}code{background:#f5f5f5;padding:0 .2em}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(key: str, png: bytes, path: Path, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    name = html.escape(path.name)
    return (
        f'<figure id="fig-{key}"><a href="{name}"><img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)} '
        f'(<a href="{name}">{name}</a>)</figcaption></figure>'
    )


def _link(path: str | None, folder: Path) -> str:
    """A relative link when ``path`` lies in ``folder``, the path as text otherwise."""
    if not path:
        return "–"
    p = Path(path)
    try:
        rel = p.resolve().relative_to(folder.resolve())
    except ValueError:
        return f"<code>{html.escape(str(path))}</code>"
    if not p.exists():
        return f"<code>{html.escape(str(path))}</code>"
    ref = html.escape(rel.as_posix())
    return f'<a href="{ref}">{ref}</a>'


_CAPTIONS = {
    "comparison": "Truth and each reconstruction: coronal maximum-intensity projection and "
    "slices through the largest lesion, one colour scale (0 to the truth's maximum).",
    "profiles": "Line profiles through the same point; the front–back profile shows the depth "
    "information two opposed views carry.",
    "organs": "Organ activity errors of each method (bars clipped at the axis limits are "
    "labelled with their value).",
    "projections": "Projection-domain fit: measured counts and each method's expected counts "
    "along one detector row.",
    "convergence": "Convergence: MLEM's Poisson log-likelihood per iteration; NeRF's training "
    "loss and validation deviance per step.",
}


def _html_page(
    comparison: Comparison,
    summary: Mapping[str, Any],
    images: Mapping[str, bytes],
    paths: Mapping[str, Path],
    folder: Path,
    title: str,
    intro: str | None,
    extra_rows: Sequence[tuple[str, str]],
    point: tuple[int, int, int],
) -> str:
    study = comparison.study
    acq = study.acquisition
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{html.escape(str(summary["software"]))}, '
        f"{html.escape(str(summary['created_utc']))}</p>",
    ]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")

    parts.append("<h2>Headline numbers</h2>")
    parts.append(
        _table(HEADLINE_COLUMNS, [headline_cells(r) for r in comparison.headline()], "headline")
    )
    parts.append(
        '<p class="muted">NRMSE = ‖x − t‖₂/‖t‖₂ over the body; PSNR with the truth\'s maximum as '
        "peak; SSIM: 3D SSIM (Gaussian window σ = 1.5 voxels); total activity error = (Σx − Σt)/Σt;"
        " mean abs. organ error = mean |error| over the organs, lesions excluded; projection "
        "deviance per pixel = 2Σ[y ln(y/ŷ) − (y − ŷ)]/N, ≈ 1 when the expected counts ŷ "
        "explain the Poisson data y. "
        "The conjugate view gives organ activities only.</p>"
    )
    for key in ("comparison", "profiles"):
        parts.append(_figure(key, images[key], paths[key], _CAPTIONS[key]))

    parts.append("<h2>Organ activities</h2>")
    columns = comparison.columns()
    header = ["organ", "truth (MBq)"] + [f"{c} (MBq, error)" for c in columns]
    organ_rows = []
    for row in comparison.organ_table():
        cells = [str(row["name"]), _num(row["true_mbq"], ".4g")]
        for column in columns:
            est = row["estimates"].get(column)
            cells.append(
                "–" if est is None else f"{_num(est['mbq'], '.4g')} ({_pct(est['relative_error'])})"
            )
        organ_rows.append(cells)
    parts.append(_table(header, organ_rows, "organs"))
    parts.append(_figure("organs", images["organs"], paths["organs"], _CAPTIONS["organs"]))

    parts.append("<h2>Projection-domain fit</h2>")
    fit_rows = []
    for m in comparison.methods:
        fit = comparison.projection_fit.get(m.name) or {}
        fit_rows.append(
            [
                m.name,
                _num(fit.get("deviance"), ".6g"),
                _num(fit.get("deviance_per_pixel"), ".4g"),
                _num(fit.get("psnr"), ".2f"),
                str(fit.get("n_pixels", "–")),
            ]
        )
    parts.append(
        _table(
            ["method", "Poisson deviance", "deviance / pixel", "PSNR (dB)", "pixels"],
            fit_rows,
            "projection-fit",
        )
    )
    parts.append(
        _figure(
            "projections", images["projections"], paths["projections"], _CAPTIONS["projections"]
        )
    )
    if "convergence" in images:
        parts.append("<h2>Convergence</h2>")
        parts.append(
            _figure(
                "convergence", images["convergence"], paths["convergence"], _CAPTIONS["convergence"]
            )
        )

    parts.append("<h2>About</h2>")
    rows_views = ", ".join(f"{a:g}°" for a in acq.angles_deg)
    about = [
        ("study", _link(comparison.study_file, folder)),
        ("views (β)", html.escape(rows_views)),
        ("nuclide", html.escape(f"{acq.isotope or '?'} at {acq.energy_keV:g} keV")),
        (
            "counts",
            html.escape(f"{float(np.asarray(study.projections, dtype=np.float64).sum()):.4g}"),
        ),
        (
            "grid",
            html.escape(
                "×".join(str(n) for n in study.grid.shape)
                + " voxels of "
                + "×".join(f"{d:g}" for d in study.grid.spacing_mm)
                + " mm"
            ),
        ),
        ("slice point (voxel k, j, i)", html.escape(str(point))),
    ]
    for m in comparison.methods:
        method = "" if m.result is None else f" ({m.result.method})"
        about.append((html.escape(m.name + method), _link(m.file, folder)))
    if comparison.conjugate_view:
        about.append(
            ("conjugate view background", html.escape(str(comparison.conjugate_background)))
        )
    for key, value in extra_rows:
        about.append((html.escape(key), html.escape(value)))
    about.append(
        (
            "summaries",
            f'<a href="{SUMMARY_JSON}">{SUMMARY_JSON}</a>, <a href="{SUMMARY_MD}">{SUMMARY_MD}</a>',
        )
    )
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in about)
    parts.append(f'<table id="about"><tbody>{body}</tbody></table>')
    for note in comparison.notes:
        parts.append(f'<p class="muted">Note: {html.escape(note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- helpers -------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Non-finite floats → None, NumPy scalars/arrays → Python, tuples → lists, paths → str."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _software_version() -> str:
    from recon.io.hdf5 import software_version

    return software_version()

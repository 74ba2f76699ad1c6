"""Scoring of several reconstructions of one study against its truth (`compare`).

`compare` scores every reconstruction (`recon.evaluation.metrics.evaluate_volume`, the
projection-domain fit
`recon.evaluation.projection_metrics.projection_fit` of its expected counts) and, for an AP/PA
study with μ
and labels, adds the conjugate-view organ activities (`recon.algorithms.conjugate_view`), which
have no
volume. The figures of a report are in `recon.evaluation.report_figures`, its files in
`recon.evaluation.report_writer`; `recon.evaluation.report` gathers all three.

Expected counts of a volume x for the projection fit are ``count_scale · A x + b`` with the
study's geometry, μ, collimator blur (its named preset, when the study has a radius) and
background: every method is scored with the same forward model, that of the data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from recon.io.study import Result, Study
    from spectproj import CollimatorResponse

__all__ = [
    "CONJUGATE_VIEW",
    "SETTINGS",
    "Comparison",
    "MethodResult",
    "compare",
    "expected_counts",
    "heldout_mask",
    "json_safe",
    "method_label",
    "method_settings",
    "study_collimator_response",
]

#: Name of the conjugate-view column (organ activities only, no volume).
CONJUGATE_VIEW = "conjugate view"


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
        Method name → `recon.evaluation.metrics.evaluate_volume` output.
    projection_fit : dict
        Method name → `recon.evaluation.projection_metrics.projection_fit` output (``None`` if it
        failed).
    expected : dict
        Method name → ``[V, rows, bins]`` expected counts (float32).
    conjugate_view : list of dict or None
        `recon.algorithms.conjugate_view.ConjugateViewRow` dicts, when the study allows the method.
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
                "settings": method_settings(m.result),
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


# -- scoring -------------------------------------------------------------------------------------


def study_collimator_response(study: Study) -> CollimatorResponse | None:
    """The collimator blur a study names (`Study.collimator_response`), or ``None`` when it
    names none, has no radius, or names an unknown preset (a report scores what it can)."""
    try:
        return study.collimator_response()
    except ValueError:
        return None


#: Settings shown for each method: (label, the result parameters that may hold it, in order).
SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("iterations / steps", ("iterations", "steps_done")),
    ("subsets", ("subsets",)),
    ("support", ("support_note", "support")),
    ("collimator", ("collimator_note", "collimator")),
    ("anatomy", ("anatomy",)),
    ("representation", ("representation",)),
)


def method_settings(result: Result | None) -> dict[str, str]:
    """The settings of a method for a report (`SETTINGS`), ``"–"`` where it records none."""
    params = {} if result is None else dict(result.parameters)
    out = {}
    for label, keys in SETTINGS:
        value = next((params[k] for k in keys if params.get(k) not in (None, "")), None)
        if isinstance(value, Mapping):
            value = value.get("kind", json.dumps(value, sort_keys=True))
        out[label] = "–" if value is None else str(value)
    return out


def heldout_mask(result: Result | None) -> np.ndarray | None:
    """``[V, rows, bins]`` bool: the pixels a fit held out for validation (a NeRF's
    ``train_mask`` extra), or ``None`` when it held none out."""
    if result is None or "train_mask" not in result.extras:
        return None
    held = np.asarray(result.extras["train_mask"]) == 0
    return held if held.any() else None


def expected_counts(study: Study, activity: np.ndarray, *, device: Any = None) -> np.ndarray:
    """Expected counts ``[V, rows, bins]`` (float32) of ``activity`` under the study's model
    (`recon.evaluation.expected_counts.expected_counts` with `study_collimator_response`)."""
    from recon.evaluation.expected_counts import expected_counts as model_counts

    return model_counts(study, activity, collimator=study_collimator_response(study), device=device)


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
    from recon.evaluation.metrics import evaluate_volume
    from recon.evaluation.projection_metrics import projection_fit

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
            fits[m.name] = full = projection_fit(expected[m.name], counts)
            held = heldout_mask(m.result)
            if held is not None and held.shape == counts.shape:
                fit = projection_fit(expected[m.name], counts, held)
                full["heldout_deviance_per_pixel"] = fit["deviance_per_pixel"]
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
    from recon.algorithms.conjugate_view import conjugate_view_quantification

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

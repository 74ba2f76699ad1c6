"""The organ and lesion table of a study's reconstructions: MBq, concentration, share, uncertainty.

One definition for every method, so the columns compare:

- a method that fits compartments (``organs``, ``organs+residual``, ``conjugate-view``) reports
  its own per-segment table (stored in the result's parameters as ``organ_table``), with its
  standard deviation where it has one (counts and model, `recon.anatomy.uncertainty`), and its
  residual sources (``sources``);
- any other result (MLEM, NeRF, ...) is summed over each segment of the study's anatomy (the
  activity inside the segment's mask); it has no uncertainty.

Regions are the study's anatomy segments (or, for a phantom without an anatomy, its truth labels).
When the study holds a truth (phantoms), each row also gets the truth and the relative error;
truth lesions (labels named ``lesion*``) get rows of their own: for a voxel result the activity
inside the lesion's mask, for a residual model the source matched to the lesion (its centre
within the lesion's radius plus one voxel), marked not found otherwise. A lesion that the
anatomy itself segments (a segment that is mostly the lesion, and holds most of it) is that
segment's row, with the lesion's truth, and gets no row of its own.
No truth is needed: on a patient study the table has the estimates only.

**Which truth.** A region's truth is the activity of the structure of that name when the study
records it exactly (a simulated phantom's ``provenance["truth_activity_mbq"]``: each structure's
own activity summed over its sub-voxels on the simulation grid, `docs/phantoms.md`). Otherwise
it is the truth volume summed inside the region's mask. The two differ: a segmentation with
errors (a shifted or eroded organ) holds less than the organ, and on a coarse grid a structure's
labelled voxels mix in its neighbours' partial volumes and lose its own (−7 % for the spleen and
kidneys of the Lu-177 phantom at 64³). The organ's own activity is what a dosimetry needs, and
what `benchmarks/bench_anatomy.py` scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recon.evaluation.metrics import unit_to_bq_per_ml
from recon.io.study import Result, Study

__all__ = ["QuantRow", "quantify", "rows_to_csv", "structure_truth_mbq"]

#: Columns of the CSV table, in order.
COLUMNS = (
    "method", "region", "kind", "activity_mbq", "activity_sd_mbq", "activity_sd_counts_mbq",
    "concentration_bq_per_ml", "percent_of_total", "volume_ml", "truth_mbq", "error_percent",
    "found",
)  # fmt: skip


@dataclass(frozen=True)
class QuantRow:
    """One region of one method.

    Attributes
    ----------
    method: the result's label (its method name, or the file stem when given).
    region: segment, background region, source or lesion name.
    kind: ``"organ"``, ``"background"``, ``"source"`` or ``"lesion"``.
    activity_mbq: estimated activity (MBq).
    activity_sd_mbq: its standard deviation (NaN when the method gives none): count statistics
        and the method's model error (`recon.anatomy.uncertainty`).
    activity_sd_counts_mbq: its count part alone (NaN when the method gives none).
    concentration_bq_per_ml: mean concentration over the region (NaN for sources).
    percent_of_total: share of the result's total activity (%).
    volume_ml: the region's volume (mL; NaN for sources).
    truth_mbq: the truth inside the region (NaN without a truth).
    error_percent: ``100 (estimate − truth) / truth`` (NaN without a truth).
    found: for lesions, whether the method located it (sources); ``None`` otherwise.
    """

    method: str
    region: str
    kind: str
    activity_mbq: float
    activity_sd_mbq: float = math.nan
    activity_sd_counts_mbq: float = math.nan
    concentration_bq_per_ml: float = math.nan
    percent_of_total: float = math.nan
    volume_ml: float = math.nan
    truth_mbq: float = math.nan
    error_percent: float = math.nan
    found: bool | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (NaN becomes ``None``)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def quantify(
    study: Study, results: Sequence[Result], names: Sequence[str] | None = None
) -> list[QuantRow]:
    """The organ and lesion table of ``results`` (all on ``study.grid``).

    Parameters
    ----------
    study:
        The study the results were made from (its anatomy, or truth labels, define the regions).
    results:
        Reconstructions of it.
    names:
        A label per result (default: each result's method).

    Raises
    ------
    ValueError
        A result on another grid, a study with neither anatomy nor labels, an activity unit that
        is not an activity concentration, names of another length.
    """
    names = [r.method for r in results] if names is None else list(names)
    if len(names) != len(results):
        raise ValueError(f"names has {len(names)} entries for {len(results)} results")
    regions, region_names = _regions(study)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    lesions = _truth_lesions(study)
    exact = structure_truth_mbq(study)

    def truth_of(name: str, mask: np.ndarray) -> float:
        return exact[name] if name in exact else _truth_in(study, mask, voxel_ml)

    lesion_truth = {name: truth_of(name, mask) for name, (mask, _, _) in lesions.items()}
    segmented = _segmented_lesions(regions, region_names, lesions)  # region → lesion
    region_truth = {
        r: lesion_truth[segmented[r]] if r in segmented else truth_of(r, regions == v)
        for v, r in region_names.items()
    }
    lesions = {n: v for n, v in lesions.items() if n not in segmented.values()}
    rows: list[QuantRow] = []
    for name, result in zip(names, results, strict=True):
        if tuple(result.grid.shape) != tuple(study.grid.shape) or result.grid != study.grid:
            raise ValueError(f"{name}: the result's grid {result.grid} is not the study's")
        to_mbq = unit_to_bq_per_ml(result.activity_unit) * 1e-6
        activity = np.asarray(result.activity, dtype=np.float64)
        total = float(activity.sum()) * voxel_ml * to_mbq
        table = result.parameters.get("organ_table")
        for value, region in region_names.items():
            mask = regions == value
            volume = float(mask.sum()) * voxel_ml
            own = _own_row(table, region) if isinstance(table, list) else None
            if own is not None:
                mbq = float(own["activity_mbq"])
                sd = _sd(own)
            else:
                mbq = float(activity[mask].sum()) * voxel_ml * to_mbq
                sd = (math.nan, math.nan)
            truth = region_truth[region]
            rows.append(
                QuantRow(
                    method=name,
                    region=region,
                    kind="organ",
                    activity_mbq=mbq,
                    activity_sd_mbq=sd[0],
                    activity_sd_counts_mbq=sd[1],
                    concentration_bq_per_ml=mbq * 1e6 / volume if volume else math.nan,
                    percent_of_total=100.0 * mbq / total if total else math.nan,
                    volume_ml=volume,
                    truth_mbq=truth,
                    error_percent=_error(mbq, truth),
                )
            )
        if isinstance(table, list):
            for own in table:
                if own.get("background"):
                    mbq = float(own["activity_mbq"])
                    background_sd = _sd(own)
                    rows.append(
                        QuantRow(
                            method=name,
                            region=str(own["name"]),
                            kind="background",
                            activity_mbq=mbq,
                            activity_sd_mbq=background_sd[0],
                            activity_sd_counts_mbq=background_sd[1],
                            concentration_bq_per_ml=float(own["concentration"])
                            * unit_to_bq_per_ml(result.activity_unit),
                            percent_of_total=100.0 * mbq / total if total else math.nan,
                            volume_ml=float(own["volume_ml"]),
                        )
                    )
        sources = result.parameters.get("sources") or []
        matched: set[int] = set()
        for lesion_name, (mask, centre, radius) in lesions.items():
            truth = lesion_truth[lesion_name]
            if isinstance(sources, list) and sources:
                j = _match(sources, centre, radius + max(study.grid.spacing_mm))
                found = j is not None
                mbq = float(sources[j]["activity_mbq"]) if j is not None else 0.0
                sd = _sd(sources[j]) if j is not None else (0.0, 0.0)
                if j is not None:
                    matched.add(j)
            elif "organ_table" in result.parameters:
                found, mbq, sd = False, 0.0, (math.nan, math.nan)
            else:
                found, mbq = None, float(activity[mask].sum()) * voxel_ml * to_mbq
                sd = (math.nan, math.nan)
            rows.append(
                QuantRow(
                    method=name,
                    region=lesion_name,
                    kind="lesion",
                    activity_mbq=mbq,
                    activity_sd_mbq=sd[0],
                    activity_sd_counts_mbq=sd[1],
                    percent_of_total=100.0 * mbq / total if total else math.nan,
                    volume_ml=float(mask.sum()) * voxel_ml,
                    truth_mbq=truth,
                    error_percent=_error(mbq, truth),
                    found=found,
                )
            )
        for j, source in enumerate(sources if isinstance(sources, list) else []):
            if j in matched:
                continue
            mbq = float(source["activity_mbq"])
            source_sd = _sd(source)
            rows.append(
                QuantRow(
                    method=name,
                    region=str(source.get("name", f"source_{j + 1}")),
                    kind="source",
                    activity_mbq=mbq,
                    activity_sd_mbq=source_sd[0],
                    activity_sd_counts_mbq=source_sd[1],
                    percent_of_total=100.0 * mbq / total if total else math.nan,
                )
            )
    return rows


def _sd(row: dict[str, Any]) -> tuple[float, float]:
    """A method's table row's sd and its count part (MBq; NaN where it has none; a row written
    before the model part existed has only the count part)."""
    total = float(row.get("activity_sd_mbq") or math.nan)
    return total, float(row.get("activity_sd_counts_mbq", total) or math.nan)


def rows_to_csv(rows: Sequence[QuantRow]) -> str:
    """The rows as CSV text (header `COLUMNS`; empty cells for unknown values)."""
    lines = [",".join(COLUMNS)]
    for row in rows:
        d = row.to_dict()
        cells = []
        for column in COLUMNS:
            value = d[column]
            if value is None:
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.6g}")
            else:
                text = str(value)
                cells.append(f'"{text}"' if "," in text else text)
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _regions(study: Study) -> tuple[np.ndarray, dict[int, str]]:
    if study.anatomy is not None:
        return study.anatomy.labels, dict(sorted(study.anatomy.names.items()))
    if study.labels is not None:
        names = {
            int(v): str(n)
            for v, n in sorted(study.label_names.items())
            if not str(n).startswith("lesion")
        }
        return np.asarray(study.labels), names
    raise ValueError(
        "the study has no anatomy (segmentation) and no labels: nothing to quantify; add an "
        "anatomy with 'spect convert anatomy'"
    )


def _segmented_lesions(
    regions: np.ndarray,
    region_names: dict[int, str],
    lesions: dict[str, tuple[np.ndarray, np.ndarray, float]],
) -> dict[str, str]:
    """Region name → truth lesion name, for each region that is mostly one truth lesion and holds
    most of it (more than half of each's voxels in common): the anatomy segments that lesion."""
    values, counts = np.unique(regions, return_counts=True)
    sizes = dict(zip(values.tolist(), counts.tolist(), strict=True))
    out = {}
    for lesion, (lesion_mask, _, _) in lesions.items():
        # Only the region holding most of the lesion can qualify.
        under, common = np.unique(regions[lesion_mask], return_counts=True)
        value, shared = int(under[np.argmax(common)]), int(common.max())
        if value in region_names and 2 * shared > sizes[value] and 2 * shared > common.sum():
            out[region_names[value]] = lesion
    return out


def _truth_lesions(study: Study) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Truth lesions: name → (mask, centre (x, y, z) mm, equivalent-sphere radius mm)."""
    if study.truth_activity is None or study.labels is None:
        return {}
    labels = np.asarray(study.labels)
    grid = study.grid
    z, y, x = (np.asarray(grid.centres_mm(a)) for a in range(3))
    out = {}
    for value, name in sorted(study.label_names.items()):
        if not str(name).startswith("lesion"):
            continue
        mask = labels == value
        if not mask.any():
            continue
        idx = np.argwhere(mask)
        centre = np.array([x[idx[:, 2]].mean(), y[idx[:, 1]].mean(), z[idx[:, 0]].mean()])
        volume = float(mask.sum()) * grid.voxel_volume_mm3
        out[str(name)] = (mask, centre, (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0))
    return out


def structure_truth_mbq(study: Study) -> dict[str, float]:
    """Each structure's exact activity (MBq) when the study records it (a simulated phantom's
    ``provenance["truth_activity_mbq"]``), else an empty dict.

    Raises
    ------
    ValueError
        The record is there but is not a JSON object of finite numbers.
    """
    text = study.provenance.get("truth_activity_mbq")
    if text is None or study.truth_activity is None:
        return {}
    try:
        record = json.loads(text)
        out = {str(k): float(v) for k, v in record.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f"the study's provenance truth_activity_mbq must be a JSON object of numbers, got "
            f"{text[:80]!r}"
        ) from error
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"the study's provenance truth_activity_mbq is not finite for {bad}")
    return out


def _truth_in(study: Study, mask: np.ndarray, voxel_ml: float) -> float:
    if study.truth_activity is None:
        return math.nan
    try:
        to_mbq = unit_to_bq_per_ml(study.activity_unit) * 1e-6
    except ValueError:
        return math.nan
    return float(np.asarray(study.truth_activity, dtype=np.float64)[mask].sum()) * voxel_ml * to_mbq


def _own_row(table: list[Any], region: str) -> dict[str, Any] | None:
    for row in table:
        if isinstance(row, dict) and row.get("name") == region:
            return row
    return None


def _match(sources: list[dict[str, Any]], centre: np.ndarray, distance: float) -> int | None:
    best, best_d = None, math.inf
    for j, s in enumerate(sources):
        d = float(np.linalg.norm(np.asarray(s["centre_mm"], dtype=np.float64) - centre))
        if d <= distance and d < best_d:
            best, best_d = j, d
    return best


def _error(estimate: float, truth: float) -> float:
    if math.isnan(truth) or truth == 0:
        return math.nan
    return 100.0 * (estimate - truth) / truth

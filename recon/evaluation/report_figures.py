"""The figures of a comparison report (Matplotlib on the Agg canvas, no display needed).

Truth and methods side by side (`comparison_figure`), line profiles (`profiles_figure`), organ
errors (`organ_figure`), measured and expected counts along one detector row
(`projection_profiles_figure`) and convergence curves (`convergence_figure`). Axes are physical,
in mm, in the orientation of `recon.evaluation.figures` (``docs/conventions.md``), whose public
helpers they
share; `recon.evaluation.figures.save_png` writes one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.evaluation.figures import (
    ACTIVITY_CMAP,
    choose_views,
    mark_sides,
    new_figure,
    view_name,
    voxel_centre_mm,
    voxel_edges_mm,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from recon.evaluation.scoring import Comparison, MethodResult
    from recon.io.study import Result, Study

__all__ = [
    "CONJUGATE_COLOUR",
    "METHOD_COLOURS",
    "TRUTH_COLOUR",
    "comparison_figure",
    "convergence_figure",
    "detector_row",
    "method_colours",
    "organ_figure",
    "profiles_figure",
    "projection_profiles_figure",
    "report_point",
]

#: Colour of the truth in plots, and of the methods in order.
TRUTH_COLOUR = "black"
METHOD_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
#: Colour of the conjugate-view column (organ activities only).
CONJUGATE_COLOUR = "tab:gray"


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
    peak = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return int(peak[0]), int(peak[1]), int(peak[2])


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
    z0, z1 = voxel_edges_mm(grid, 0)
    y0, y1 = voxel_edges_mm(grid, 1)
    x0, x1 = voxel_edges_mm(grid, 2)
    zc, yc, xc = (
        voxel_centre_mm(grid, 0, k),
        voxel_centre_mm(grid, 1, j),
        voxel_centre_mm(grid, 2, i),
    )
    vmax = float(t.max()) if t.size and float(t.max()) > 0 else 1.0
    style = {"cmap": ACTIVITY_CMAP, "vmin": 0.0, "vmax": vmax, "interpolation": "nearest"}
    fig = new_figure(13.0, 2.9 * len(rows) + 0.8)
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
            mark_sides(ax, *marks)
            if cross is not None:
                line = {"color": "tab:cyan", "lw": 0.5, "alpha": 0.5, "ls": "--"}
                ax.axvline(cross[0], **line)
                ax.axhline(cross[1], **line)
        axes[r, 0].set_ylabel(name, fontsize=12, weight="bold")
    # at least one panel is drawn, so image is set
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label=f"activity ({unit})")  # type: ignore[arg-type]  # >= 1 panel drawn
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
    fig = new_figure(13.0, 3.8)
    axes = fig.subplots(1, 3, sharey=True)
    t = np.asarray(truth, dtype=np.float64)
    profiles = (
        (2, lambda v: v[k, j, :], "x (mm), patient right → left"),
        (1, lambda v: v[k, :, i], "y (mm), anterior → posterior"),
        (0, lambda v: v[:, j, i], "z (mm), feet → head"),
    )
    for ax, (axis, take, xlabel) in zip(axes, profiles, strict=True):
        pos = np.array([voxel_centre_mm(grid, axis, n) for n in range(grid.shape[axis])])
        ax.plot(pos, take(t), color=TRUTH_COLOUR, lw=2.0, label="truth", drawstyle="steps-mid")
        for m, colour in zip(methods, method_colours(len(methods)), strict=True):
            v = np.asarray(m.activity, dtype=np.float64)
            ax.plot(pos, take(v), color=colour, lw=1.3, label=m.name, drawstyle="steps-mid")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    zc, yc, xc = (
        voxel_centre_mm(grid, 0, k),
        voxel_centre_mm(grid, 1, j),
        voxel_centre_mm(grid, 2, i),
    )
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
    colours = list(method_colours(len(comparison.methods))) + (
        [CONJUGATE_COLOUR] if comparison.conjugate_view else []
    )
    n = max(len(table), 1)
    fig = new_figure(max(7.0, 0.9 * n + 2.5), 4.6)
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
    acq = study.acquisition
    counts = np.asarray(study.projections, dtype=np.float64)
    views = choose_views(acq.angles_deg, 4)
    fig = new_figure(5.0 * len(views) + 1.0, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(views), sharey=True, squeeze=False)[0])
    bins = counts.shape[2]
    r = (np.arange(bins) - (bins - 1) / 2.0) * acq.pixel_size_mm[1]
    for ax, v in zip(axes, views, strict=True):
        ax.plot(r, counts[v, row], ".", color=TRUTH_COLOUR, ms=4, label="measured")
        for m, colour in zip(
            comparison.methods, method_colours(len(comparison.methods)), strict=True
        ):
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
    curves: list[tuple[str, np.ndarray, np.ndarray, str]] = []
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
        for m, colour in zip(methods, method_colours(len(methods)), strict=True)
        if m.result is not None and _curves(m.result)
    ]
    if not panels:
        return None
    fig = new_figure(5.2 * len(panels) + 0.6, 3.8)
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


def method_colours(n: int) -> list[str]:
    """Plot colours of ``n`` methods in order (`METHOD_COLOURS`, cycled)."""
    return [METHOD_COLOURS[k % len(METHOD_COLOURS)] for k in range(n)]


def detector_row(study: Study, point: tuple[int, int, int]) -> int:
    """The detector row that sees slice z of ``point`` (rows run along z, docs/conventions.md)."""
    rows = study.acquisition.detector_shape[0]
    z = voxel_centre_mm(study.grid, 0, point[0])
    row = round(z / study.acquisition.pixel_size_mm[0] + (rows - 1) / 2.0)
    return min(max(row, 0), rows - 1)

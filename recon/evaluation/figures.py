"""Figures of projections and volumes (Matplotlib, no display needed), e.g. for ``spect show``.

Every function returns a `matplotlib.figure.Figure` attached to the Agg canvas (no ``pyplot``, no
global state, any backend); `save_png` writes one atomically. Axes are physical, in mm
(``docs/conventions.md``):

- **Projections** are shown as a nuclear-medicine viewer shows them (`spectproj.display.to_viewer`:
  head at the top; bins left to right as seen from the detector, so the anterior view has the
  patient's right on the left and the posterior view the patient's left), all views on one colour
  scale labelled "counts".
- **Volumes** ``[Z, Y, X]`` are shown as maximum-intensity projections (coronal, sagittal,
  transverse) and orthogonal slices through one point (the hottest voxel or the centre), in the
  radiological orientation: coronal and transverse with the patient's right on the left, sagittal
  with anterior on the left, transverse with anterior at the top, head at the top.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from recon.io.atomic import write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, FigureBase

    from recon.io.study import Anatomy, Result, Study
    from spectproj import ImageGrid

__all__ = [
    "ACTIVITY_CMAP",
    "SliceAt",
    "choose_views",
    "draw_projections",
    "draw_volume",
    "mark_sides",
    "new_figure",
    "projections_figure",
    "result_figure",
    "save_png",
    "slice_point",
    "study_figure",
    "view_name",
    "volume_figure",
    "voxel_centre_mm",
    "voxel_edges_mm",
]

SliceAt = Literal["hottest", "centre"]
StudyKind = Literal["projections", "volume", "both"]

#: Colour maps: projections black on white (nuclear-medicine habit), activity, μ.
PROJECTION_CMAP = "gray_r"
ACTIVITY_CMAP = "inferno"
MU_CMAP = "gray"
_MARK: dict[str, Any] = {"color": "tab:cyan", "weight": "bold", "fontsize": 9}
#: Anatomy overlays: segment contours in these colours (cycled), the body outline dashed white.
CONTOUR_COLOURS = (
    "tab:green",
    "tab:blue",
    "tab:orange",
    "tab:purple",
    "tab:red",
    "tab:olive",
    "tab:pink",
    "tab:brown",
    "gold",
    "deepskyblue",
)
_BODY_STYLE = {"colors": "white", "linewidths": 0.8, "linestyles": "dashed"}

# Orientation letters (left, right) of the bins of the four axis-aligned views: bins run along
# r = x·cos β − y·sin β (docs/conventions.md), shown left to right as seen from the detector.
_VIEW_SIDES = {0: ("R", "L"), 1: ("P", "A"), 2: ("L", "R"), 3: ("A", "P")}
_VIEW_NAMES = {0: "Anterior", 1: "Right lateral", 2: "Posterior", 3: "Left lateral"}


# -- helpers -------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """An empty ``width`` × ``height`` inch figure (constrained layout) on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _quadrant(beta: float) -> int | None:
    k = round(beta / 90.0)
    return k % 4 if abs(beta - 90.0 * k) <= 1e-6 else None


def view_name(beta: float) -> str:
    """Title of a view: ``"Anterior (β = 0°)"``, ``"Right lateral (β = 90°)"``, ``"β = 37.5°"``."""
    q = _quadrant(float(beta) % 360.0)
    angle = f"β = {float(beta):g}°"
    return f"{_VIEW_NAMES[q]} ({angle})" if q is not None else angle


def choose_views(angles_deg: Sequence[float], max_views: int = 4) -> list[int]:
    """Indices of at most ``max_views`` views to show: all of them if few, else those nearest
    β = 0, 90, 180, 270 (or evenly spaced ones), in order of angle."""
    n = len(angles_deg)
    if max_views < 1:
        raise ValueError(f"max_views must be >= 1, got {max_views}")
    if n <= max_views:
        return list(range(n))
    angles = np.asarray(angles_deg, dtype=np.float64) % 360.0
    targets = np.linspace(0.0, 360.0, max_views, endpoint=False)
    chosen: list[int] = []
    for t in targets:
        distance = np.abs((angles - t + 180.0) % 360.0 - 180.0)
        for v in np.argsort(distance, kind="stable"):
            if int(v) not in chosen:
                chosen.append(int(v))
                break
    return sorted(chosen, key=lambda v: angles[v])


def slice_point(volume: np.ndarray, at: SliceAt = "hottest") -> tuple[int, int, int]:
    """Voxel ``(k, j, i)`` of ``volume`` ``[Z, Y, X]``: its hottest voxel, or its centre."""
    a = np.asarray(volume)
    if a.ndim != 3:
        raise ValueError(f"volume must be [Z, Y, X], got shape {a.shape}")
    if at == "centre" or not np.isfinite(a).any() or float(np.nanmax(a)) <= 0:
        return tuple(n // 2 for n in a.shape)
    if at != "hottest":
        raise ValueError(f"at must be 'hottest' or 'centre', got {at!r}")
    k, j, i = np.unravel_index(int(np.nanargmax(a)), a.shape)
    return int(k), int(j), int(i)


def voxel_edges_mm(grid: ImageGrid, axis: int) -> tuple[float, float]:
    """Outer edges ``(low, high)`` in mm of ``grid``'s voxels along ``axis`` (0 z, 1 y, 2 x)."""
    n, d, o = grid.shape[axis], grid.spacing_mm[axis], grid.offset_mm[axis]
    return (-(n / 2) * d + o, (n / 2) * d + o)


def voxel_centre_mm(grid: ImageGrid, axis: int, index: int) -> float:
    """Centre in mm of voxel ``index`` along ``axis`` (0 z, 1 y, 2 x) of ``grid``."""
    n, d, o = grid.shape[axis], grid.spacing_mm[axis], grid.offset_mm[axis]
    return (index - (n - 1) / 2) * d + o


def mark_sides(
    ax: Axes, left: str, right: str, top: str | None = None, bottom: str | None = None
) -> None:
    """Orientation letters on the edges of ``ax``: ``left``/``right`` (and ``top``/``bottom``)."""
    ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **_MARK)
    ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **_MARK)
    if top:
        ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **_MARK)
    if bottom:
        ax.text(0.5, 0.02, bottom, transform=ax.transAxes, ha="center", va="bottom", **_MARK)


# -- projections ---------------------------------------------------------------------------------


def draw_projections(
    fig: FigureBase,
    projections: np.ndarray,
    angles_deg: Sequence[float],
    pixel_size_mm: tuple[float, float],
    *,
    max_views: int = 4,
    unit: str = "counts",
    title: str | None = None,
) -> None:
    """Draw some views of ``projections`` ``[V, rows, bins]`` side by side into ``fig``
    (a figure or sub-figure), on one colour scale, as a viewer shows them."""
    from spectproj.display import to_viewer

    p = np.asarray(projections)
    if p.ndim != 3 or p.shape[0] != len(angles_deg):
        raise ValueError(
            f"projections must be [V, rows, bins] with V = {len(angles_deg)} angles, "
            f"got shape {p.shape}"
        )
    views = choose_views(angles_deg, max_views)
    rows, bins = p.shape[1:]
    row_mm, bin_mm = (float(v) for v in pixel_size_mm)
    half_w, half_h = bins * bin_mm / 2.0, rows * row_mm / 2.0
    extent = (-half_w, half_w, -half_h, half_h)  # left, right, bottom (feet), top (head)
    shown = p[views]
    vmax = float(np.nanmax(shown)) if shown.size else 0.0
    vmax = vmax if vmax > 0 else 1.0
    axes = np.atleast_1d(fig.subplots(1, len(views), sharey=True, squeeze=False)[0])
    image = None
    for ax, v in zip(axes, views, strict=True):
        image = ax.imshow(
            np.asarray(to_viewer(p[v])),
            origin="upper",
            extent=extent,
            cmap=PROJECTION_CMAP,
            vmin=0.0,
            vmax=vmax,
            interpolation="nearest",
        )
        beta = float(angles_deg[v])
        ax.set_title(view_name(beta) if len(angles_deg) <= 2 else f"view {v}: {view_name(beta)}")
        ax.set_xlabel("detector position r (mm)")
        q = _quadrant(beta % 360.0)
        if q is not None:
            mark_sides(ax, *_VIEW_SIDES[q])
    axes[0].set_ylabel("z (mm), head up")
    fig.colorbar(image, ax=list(axes), shrink=0.9, label=unit)  # type: ignore[arg-type]  # >= 1 view
    if title:
        fig.suptitle(title)


def projections_figure(
    projections: np.ndarray,
    angles_deg: Sequence[float],
    pixel_size_mm: tuple[float, float],
    *,
    max_views: int = 4,
    unit: str = "counts",
    title: str | None = None,
) -> Figure:
    """A figure of up to ``max_views`` views of ``projections`` ``[V, rows, bins]``.

    Parameters
    ----------
    projections
        ``[V, rows, bins]`` (counts, or any unit given by ``unit``).
    angles_deg
        Detector angle β of each view (degrees).
    pixel_size_mm
        ``(row height, bin width)`` in mm.
    max_views
        Most views shown; with more views, those nearest β = 0, 90, 180, 270 (`choose_views`).
    unit
        Colour-bar label.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The views side by side (viewer orientation, mm axes), one colour bar.
    """
    n = len(choose_views(angles_deg, max_views))
    rows, bins = np.asarray(projections).shape[-2:]
    aspect = (rows * pixel_size_mm[0]) / max(bins * pixel_size_mm[1], 1e-9)
    width = 1.2 + 3.6 * n
    fig = new_figure(width, min(max(3.6 * aspect + 1.0, 3.0), 9.0))
    draw_projections(
        fig,
        projections,
        angles_deg,
        pixel_size_mm,
        max_views=max_views,
        unit=unit,
        title=title,
    )
    return fig


# -- volumes -------------------------------------------------------------------------------------


def draw_volume(
    fig: FigureBase,
    volume: np.ndarray,
    grid: ImageGrid,
    *,
    label: str,
    cmap: str = ACTIVITY_CMAP,
    point: tuple[int, int, int] | None = None,
    title: str | None = None,
    anatomy: Anatomy | None = None,
) -> None:
    """Draw MIPs (top row) and slices through ``point`` (bottom row) of ``volume`` into ``fig``.

    With ``anatomy`` (on ``grid``) the outline of each segment is drawn over every panel (on a
    MIP, the outline of the segment's projection), and the body outline dashed white.
    """
    v = np.asarray(volume, dtype=np.float64)
    if v.shape != tuple(grid.shape):
        raise ValueError(f"volume shape {v.shape} does not match the grid {tuple(grid.shape)}")
    k, j, i = slice_point(v, "hottest") if point is None else point
    z0, z1 = voxel_edges_mm(grid, 0)
    y0, y1 = voxel_edges_mm(grid, 1)
    x0, x1 = voxel_edges_mm(grid, 2)
    finite = v[np.isfinite(v)]
    vmax = float(finite.max()) if finite.size else 1.0
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = vmax if vmax > vmin else vmin + 1.0
    style = {"cmap": cmap, "vmin": vmin, "vmax": vmax, "interpolation": "nearest"}
    axes = fig.subplots(2, 3)
    z_label, x_label = "z (mm), head up", "x (mm), patient left →"
    y_label_h, y_label_v = "y (mm), posterior →", "y (mm), posterior ↓"
    zc, yc, xc = (
        voxel_centre_mm(grid, 0, k),
        voxel_centre_mm(grid, 1, j),
        voxel_centre_mm(grid, 2, i),
    )
    panels = (
        # (row, col, image, origin, extent, title, xlabel, ylabel, marks, cross)
        (0, 0, v.max(axis=1), "lower", (x0, x1, z0, z1), "coronal MIP", x_label, z_label,
         ("R", "L"), None),
        (0, 1, v.max(axis=2), "lower", (y0, y1, z0, z1), "sagittal MIP", y_label_h, z_label,
         ("A", "P"), None),
        (0, 2, v.max(axis=0), "upper", (x0, x1, y1, y0), "transverse MIP", x_label, y_label_v,
         ("R", "L", "A", "P"), None),
        (1, 0, v[:, j, :], "lower", (x0, x1, z0, z1), f"coronal slice, y = {yc:.1f} mm",
         x_label, z_label, ("R", "L"), (xc, zc)),
        (1, 1, v[:, :, i], "lower", (y0, y1, z0, z1), f"sagittal slice, x = {xc:.1f} mm",
         y_label_h, z_label, ("A", "P"), (yc, zc)),
        (1, 2, v[k], "upper", (x0, x1, y1, y0), f"transverse slice, z = {zc:.1f} mm",
         x_label, y_label_v, ("R", "L", "A", "P"), (xc, yc)),
    )  # fmt: skip
    image = None
    cuts = (  # how each panel's 2D image comes from a [Z, Y, X] mask, in the order of `panels`
        lambda m: m.any(axis=1),
        lambda m: m.any(axis=2),
        lambda m: m.any(axis=0),
        lambda m: m[:, j, :],
        lambda m: m[:, :, i],
        lambda m: m[k],
    )
    outlines = _anatomy_outlines(anatomy, v.shape)
    for (row, col, img, origin, extent, name, xlabel, ylabel, marks, cross), cut in zip(
        panels, cuts, strict=True
    ):
        ax = axes[row, col]
        image = ax.imshow(img, origin=origin, extent=extent, **style)
        for mask, contour_style in outlines:
            _draw_outline(ax, cut(mask), origin, extent, contour_style)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        mark_sides(ax, *marks)
        if cross is not None:
            line = {"color": "tab:cyan", "lw": 0.6, "alpha": 0.6, "ls": "--"}
            ax.axvline(cross[0], **line)
            ax.axhline(cross[1], **line)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label=label)  # type: ignore[arg-type]  # >= 1 panel
    if outlines:
        from matplotlib.lines import Line2D

        handles = [
            Line2D(
                [],
                [],
                color=style_["colors"],
                linestyle="--" if style_["linestyles"] == "dashed" else "-",
                label=style_["label"],
            )
            for _, style_ in outlines
        ]
        fig.legend(
            handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8
        )
    if title:
        fig.suptitle(title)


def _anatomy_outlines(
    anatomy: Anatomy | None, shape: tuple[int, ...]
) -> list[tuple[np.ndarray, dict]]:
    """``(bool mask [Z, Y, X], contour style with a legend label)`` per segment, then the body."""
    if anatomy is None:
        return []
    if tuple(anatomy.shape) != tuple(shape):
        raise ValueError(f"anatomy shape {anatomy.shape} does not match the volume {shape}")
    outlines = []
    for n, (value, name) in enumerate(sorted(anatomy.names.items())):
        colour = CONTOUR_COLOURS[n % len(CONTOUR_COLOURS)]
        style = {"colors": colour, "linewidths": 0.9, "linestyles": "solid", "label": name}
        outlines.append((anatomy.labels == value, style))
    if anatomy.body is not None:
        outlines.append((anatomy.body, {**_BODY_STYLE, "label": "body outline"}))
    return outlines


def _draw_outline(
    ax: Axes, mask: np.ndarray, origin: str, extent: tuple[float, ...], style: dict
) -> None:
    """The outline (level 0.5) of a 2D bool ``mask`` drawn as ``imshow`` would place it."""
    if not mask.any():
        return
    contour_style = {k: v for k, v in style.items() if k != "label"}
    # Pad by one voxel so outlines close at the edge of the volume; keep voxel centres in place.
    padded = np.pad(mask.astype(np.float32), 1)
    rows, cols = mask.shape
    dx = (extent[1] - extent[0]) / cols
    dy = (extent[3] - extent[2]) / rows
    x = extent[0] + dx * (np.arange(cols + 2) - 0.5)
    y = extent[2] + dy * (np.arange(rows + 2) - 0.5)
    if origin == "upper":  # row 0 at the top: y runs from extent[3] down to extent[2]
        y = extent[3] - dy * (np.arange(rows + 2) - 0.5)
    ax.contour(x, y, padded, levels=[0.5], **contour_style)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def volume_figure(
    volume: np.ndarray,
    grid: ImageGrid,
    *,
    label: str = "activity (Bq/mL)",
    cmap: str = ACTIVITY_CMAP,
    slice_at: SliceAt = "hottest",
    point: tuple[int, int, int] | None = None,
    title: str | None = None,
) -> Figure:
    """A figure of a volume ``[Z, Y, X]``: coronal, sagittal and transverse MIPs, and the three
    orthogonal slices through one voxel, on one colour scale.

    Parameters
    ----------
    volume
        ``[Z, Y, X]`` values on ``grid``.
    grid
        The image grid (mm axes).
    label
        Colour-bar label with the unit, e.g. ``"activity (Bq/mL)"`` or ``"μ (1/mm)"``.
    cmap
        Matplotlib colour map.
    slice_at
        Where the slices cross: ``"hottest"`` voxel or volume ``"centre"`` (if ``point`` is not
        given).
    point
        Voxel ``(k, j, i)`` the slices go through.
    title
        Figure title.
    """
    fig = new_figure(12.0, 8.0)
    draw_volume(
        fig,
        volume,
        grid,
        label=label,
        cmap=cmap,
        point=slice_point(volume, slice_at) if point is None else point,
        title=title,
    )
    return fig


# -- studies and results -------------------------------------------------------------------------


def _study_volumes(study: Study) -> list[tuple[str, np.ndarray, str, str]]:
    """(name, volume, colour-bar label, cmap) of the volumes a study holds."""
    volumes = []
    if study.truth_activity is not None:
        volumes.append(
            (
                "truth activity",
                study.truth_activity,
                f"activity ({study.activity_unit})",
                ACTIVITY_CMAP,
            )
        )
    if study.mu_per_mm is not None:
        energy = study.acquisition.energy_keV
        volumes.append((f"μ at {energy:g} keV", study.mu_per_mm, "μ (1/mm)", MU_CMAP))
    return volumes


def study_figure(
    study: Study,
    kind: StudyKind = "projections",
    *,
    slice_at: SliceAt = "hottest",
    max_views: int = 4,
    title: str | None = None,
    contours: bool = True,
) -> Figure:
    """A figure of a study: its projections, its volumes (truth activity, μ), or both.

    Parameters
    ----------
    study
        The study.
    kind
        ``"projections"`` (up to ``max_views`` views, `projections_figure`), ``"volume"`` (MIPs
        and slices of the truth activity and μ, whichever the study holds, `volume_figure`) or
        ``"both"``, stacked.
    slice_at
        Where the slices cross: the hottest voxel of the truth activity (of μ without one) or
        the centre.
    max_views
        Most views shown.
    title
        Figure title; by default a line on the study (nuclide, views, counts).
    contours
        Outline the study's anatomy (``study.anatomy``: each segment, and the body outline
        dashed) on the volume panels, when it has one.

    Raises
    ------
    ValueError
        ``kind`` asks for volumes but the study holds neither truth activity nor μ.
    """
    if kind not in ("projections", "volume", "both"):
        raise ValueError(f"kind must be 'projections', 'volume' or 'both', got {kind!r}")
    acq = study.acquisition
    volumes = _study_volumes(study) if kind != "projections" else []
    if kind != "projections" and not volumes:
        raise ValueError("the study holds no volume to show (neither truth activity nor μ)")
    if title is None:
        total = float(np.asarray(study.projections, dtype=np.float64).sum())
        title = (
            f"{acq.isotope or ''} {acq.energy_keV:g} keV, {len(acq.angles_deg)} view(s), "
            f"{total:.4g} counts"
        ).strip()
    point = slice_point(volumes[0][1], slice_at) if volumes else None

    show_projections = kind in ("projections", "both")
    n_views = len(choose_views(acq.angles_deg, max_views))
    rows, bins = acq.detector_shape
    aspect = (rows * acq.pixel_size_mm[0]) / (bins * acq.pixel_size_mm[1])
    proj_h = min(max(3.6 * aspect + 1.0, 3.0), 9.0)
    heights = ([proj_h] if show_projections else []) + [8.0] * len(volumes)
    width = max(1.2 + 3.6 * n_views if show_projections else 0.0, 12.0 if volumes else 0.0)
    fig = new_figure(width, sum(heights) + 0.5)
    subfigs = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    parts = list(subfigs)
    if show_projections:
        draw_projections(
            parts.pop(0),
            study.projections,
            acq.angles_deg,
            acq.pixel_size_mm,
            max_views=max_views,
            title="projections" if volumes else None,
        )
    anatomy = study.anatomy if contours else None
    for sub, (name, volume, label, cmap) in zip(parts, volumes, strict=True):
        draw_volume(
            sub,
            volume,
            study.grid,
            label=label,
            cmap=cmap,
            point=point,
            title=name,
            anatomy=anatomy,
        )
    fig.suptitle(title)
    return fig


def result_figure(
    result: Result, *, slice_at: SliceAt = "hottest", title: str | None = None
) -> Figure:
    """MIPs and slices of a reconstruction's activity (`volume_figure`), titled by its method."""
    if title is None:
        iterations = next(iter(result.history.values()), None)
        title = result.method.upper()
        if iterations is not None:
            title += f", {len(iterations)} iterations"
        subsets = result.parameters.get("subsets")
        if isinstance(subsets, int) and subsets > 1:
            title += f" × {subsets} subsets"
    return volume_figure(
        result.activity,
        result.grid,
        label=f"activity ({result.activity_unit})",
        cmap=ACTIVITY_CMAP,
        slice_at=slice_at,
        title=title,
    )


def save_png(
    fig: Figure,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    dpi: int = 110,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``fig`` as a PNG file, atomically (`recon.io.atomic_output`).

    Parameters
    ----------
    fig
        The figure.
    path
        The PNG file; its folder must exist.
    overwrite
        Replace an existing file (the CLI's ``--force``); without it an existing file is refused
        with `FileExistsError`.
    dpi
        Resolution.
    metadata
        PNG text chunks (e.g. ``{"Source": "study.h5"}``); "Software" defaults to spect's.
    """
    from recon.io.hdf5 import software_version

    text = {"Software": f"spect {software_version()}"}
    text.update(metadata or {})
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata=text)
    write_bytes(path, buffer.getvalue(), overwrite=overwrite)

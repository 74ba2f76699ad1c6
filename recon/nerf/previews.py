"""Preview figures written during training (Matplotlib Agg, no display, no ``pyplot``).

- `projection_preview`: measured and rendered (expected) counts of two views side by side, as a
  nuclear-medicine viewer shows them (`spectproj.display.to_viewer`: head at the top), on one
  colour scale per view pair, so that the count relation of the two views is visible.
- `depth_preview`: activity and μ along a few detector lines, against the depth coordinate
  ``s = −x·sin β − y·cos β`` (mm, toward the detector of the first view; ``docs/conventions.md``).

Both write a PNG atomically (`recon.io.atomic_output`); `write_previews` writes both for a
field and a study's `recon.nerf.rays.RayData` during training.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.io.atomic import write_bytes
from recon.nerf.rays import RayData, RecordingField
from spectproj.display import to_viewer

__all__ = ["depth_preview", "projection_preview", "write_previews"]


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_bytes(path, buffer.getvalue(), overwrite=True)


def projection_preview(
    path: str | os.PathLike[str],
    measured: np.ndarray,
    rendered: np.ndarray,
    view_names: Sequence[str],
    title: str = "",
) -> None:
    """Write a PNG of measured (top) and rendered (bottom) counts of a few views.

    Parameters
    ----------
    path:
        PNG file to write (replaced if it exists).
    measured, rendered:
        ``[K, rows, bins]`` counts of K views (rendered = expected counts incl. background).
    view_names:
        K labels (e.g. ``["AP", "PA"]``).
    title:
        Figure title (e.g. the step).
    """
    measured = np.asarray(measured, dtype=np.float64)
    rendered = np.asarray(rendered, dtype=np.float64)
    k = measured.shape[0]
    vmax = float(max(measured.max(initial=0.0), rendered.max(initial=0.0))) or 1.0
    fig = _figure(2.6 * k + 0.8, 5.2)
    axes = fig.subplots(2, k, squeeze=False)
    image = None
    for j in range(k):
        for i, (label, img) in enumerate((("measured", measured[j]), ("rendered", rendered[j]))):
            ax = axes[i][j]
            image = ax.imshow(to_viewer(img), cmap="gray_r", vmin=0.0, vmax=vmax)
            ax.set_title(f"{view_names[j]} {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="counts")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def depth_preview(
    path: str | os.PathLike[str],
    depth_mm: np.ndarray,
    activity: np.ndarray,
    mu_per_mm: np.ndarray,
    labels: Sequence[str],
    activity_unit: str = "Bq/mL",
    title: str = "",
) -> None:
    """Write a PNG of activity (left axis) and μ (right axis) along a few lines.

    Parameters
    ----------
    path:
        PNG file to write (replaced if it exists).
    depth_mm:
        ``[K, S]`` depth of each sample (mm).
    activity:
        ``[K, S]`` activity at the samples (``activity_unit``).
    mu_per_mm:
        ``[K, S]`` μ at the samples (1/mm).
    labels:
        K line labels (e.g. ``"AP row 30 bin 12"``).
    """
    depth = np.asarray(depth_mm, dtype=np.float64)
    act = np.asarray(activity, dtype=np.float64)
    mu = np.asarray(mu_per_mm, dtype=np.float64)
    k = depth.shape[0]
    fig = _figure(4.0 * k, 3.2)
    axes = fig.subplots(1, k, squeeze=False)[0]
    for j in range(k):
        ax = axes[j]
        order = np.argsort(depth[j])
        ax.plot(depth[j][order], act[j][order], color="tab:red", label="activity")
        ax.set_xlabel("depth toward the detector (mm)")
        ax.set_ylabel(f"activity ({activity_unit})", color="tab:red")
        ax.set_title(labels[j], fontsize=9)
        twin = ax.twinx()
        twin.plot(depth[j][order], mu[j][order], color="tab:blue", linestyle="--", label="μ")
        twin.set_ylabel("μ (1/mm)", color="tab:blue")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def write_previews(
    out_dir: Path,
    step: int,
    data: RayData,
    field: Any,
    n_samples: int | None,
    activity_unit: str,
) -> None:
    """``preview-<step>-projections.png`` (the first view and its opposed view, measured and
    expected) and ``preview-<step>-depth.png`` (activity and μ along three lines of the first
    view: its brightest pixel, its centre and its 75th-percentile pixel) in ``out_dir``."""
    lines = _preview_lines(data)
    with torch.no_grad():
        expected = data.expected_views(field, n_samples).cpu().numpy()
        depth, act, mu = _line_profiles(data, field, lines, n_samples)
    views = _preview_views(data)
    names = [_view_label(data.geometry.angles_deg[v]) for v in views]
    counts = data.counts.cpu().numpy()
    projection_preview(
        out_dir / f"preview-{step:06d}-projections.png",
        counts[views], expected[views], names, title=f"step {step}",
    )  # fmt: skip
    labels = [
        f"{_view_label(data.geometry.angles_deg[int(data.view[k])])} row {int(data.row[k])} "
        f"bin {int(data.bin[k])}"
        for k in lines.tolist()
    ]
    depth_preview(
        out_dir / f"preview-{step:06d}-depth.png", depth, act, mu, labels,
        activity_unit=activity_unit, title=f"step {step}",
    )  # fmt: skip


def _view_label(beta: float) -> str:
    names = {0: "AP", 180: "PA", 90: "RL", 270: "LL"}
    b = round(beta % 360.0, 6)
    return names.get(int(b), f"β={b:g}°") if float(b).is_integer() else f"β={b:g}°"


def _preview_views(data: RayData) -> list[int]:
    first = int(data.view[0])
    opposed = data.geometry.opposed_view(first)
    return [first] if opposed is None or opposed == first else [first, opposed]


def _preview_lines(data: RayData) -> torch.Tensor:
    """Three lines of the first view: brightest pixel, centre, 75th-percentile pixel."""
    first = int(data.view[0])
    on_view = torch.nonzero(data.view == first).squeeze(1)
    counts = data.counts[first].reshape(-1).cpu()
    _, n_rows, n_bins = data.shape
    brightest = int(torch.argmax(counts))
    centre = (n_rows // 2) * n_bins + n_bins // 2
    q = torch.quantile(counts.double(), 0.75)
    quartile = int(torch.argmin((counts.double() - q).abs()))
    picks = list(dict.fromkeys([brightest, centre, quartile]))
    return on_view[torch.tensor(picks)]


def _line_profiles(
    data: RayData, field: Any, lines: torch.Tensor, n_samples: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth (mm), activity and μ at the samples of ``lines``, each ``[K, S]``."""
    recorder = RecordingField(field)
    v, r, b = (t[lines].to(data.device) for t in (data.view, data.row, data.bin))
    data.projector.render_rays(recorder, v, r, b, n_samples=n_samples)
    points, values = recorder.samples(len(lines))
    beta = torch.tensor([math.radians(data.geometry.angles_deg[int(k)]) for k in v.cpu()])
    x, y = points[..., 0].cpu().double(), points[..., 1].cpu().double()
    depth = -x * torch.sin(beta)[:, None] - y * torch.cos(beta)[:, None]
    mu = data.mu_at(points)
    return depth.numpy(), values.double().cpu().numpy(), mu.double().cpu().numpy()

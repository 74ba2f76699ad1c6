"""``spect demo``: project the basic torso phantom to AP/PA and write a figure and the data."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

#: Edge of the cubic field of view of the demo, in mm (64 voxels of 4 mm by default).
FOV_MM = 256.0
#: Photon energy of the demo (Tc-99m), in keV.
ENERGY_KEV = 140.5
PNG_NAME = "ap_pa.png"
NPZ_NAME = "projections.npz"


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _prepare_folder(folder: Path, names: tuple[str, ...], force: bool) -> list[Path]:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    paths = [folder / n for n in names]
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(f"{' and '.join(existing)} already {verb}; use --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    return paths


def _figure(ap: np.ndarray, pa: np.ndarray, bin_mm: float, row_mm: float, out: BinaryIO) -> None:
    """AP and PA side by side, as a nuclear-medicine viewer shows them, on one colour scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from spectproj.display import to_viewer

    rows, bins = ap.shape
    half_w, half_h = bins * bin_mm / 2.0, rows * row_mm / 2.0
    extent = (-half_w, half_w, -half_h, half_h)  # left, right, bottom (feet), top (head)
    vmax = float(max(ap.max(), pa.max())) or 1.0

    fig = Figure(figsize=(9.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    # AP: bins run toward the patient's left, so the patient's right is on the viewer's left;
    # PA: bins run toward the patient's right, so the patient's left is on the viewer's left.
    panels = (("Anterior (AP, β = 0°)", ap, "R", "L"), ("Posterior (PA, β = 180°)", pa, "L", "R"))
    for ax, (title, img, left, right) in zip(axes, panels, strict=True):
        im = ax.imshow(
            np.asarray(to_viewer(torch.as_tensor(img))),
            origin="upper",
            extent=extent,
            cmap="gray_r",
            vmin=0.0,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_title(title)
        ax.set_xlabel("detector position r (mm)")
        for x, label, ha in ((0.02, left, "left"), (0.98, right, "right")):
            ax.text(
                x,
                0.97,
                label,
                transform=ax.transAxes,
                ha=ha,
                va="top",
                weight="bold",
                color="tab:blue",
            )
    axes[0].set_ylabel("z (mm), head up")
    fig.colorbar(im, ax=list(axes), shrink=0.9, label="activity·mm (line integral)")
    fig.savefig(out, format="png", dpi=110)


def run_demo(folder: Path, *, force: bool = False, size: int = 64) -> dict[str, np.ndarray]:
    """Build the phantom, project AP/PA with attenuation, write the outputs, print a table.

    Returns the arrays written to ``projections.npz``.
    """
    from rich.console import Console
    from rich.table import Table

    import spectproj
    from recon.phantoms_basic import LESION_CENTRE_MM, basic_phantom
    from spectproj.display import mirror_bins

    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    png_path, npz_path = _prepare_folder(Path(folder), (PNG_NAME, NPZ_NAME), force)

    step = FOV_MM / size
    grid = spectproj.ImageGrid(shape=(size, size, size), spacing_mm=(step, step, step))
    activity, mu = basic_phantom(grid, ENERGY_KEV)
    geom = spectproj.ParallelGeometry.ap_pa(grid)
    with torch.no_grad():
        proj = spectproj.project(activity, geom, mu=mu)
    proj_np = proj.detach().cpu().numpy().astype(np.float32)
    if proj_np.shape[0] != 2:
        raise RuntimeError(f"ParallelGeometry.ap_pa gave {proj_np.shape[0]} views, expected 2")
    ap, pa = proj_np[0], proj_np[1]

    # Detector axes (conventions): rows along z, bins along r (AP: r = x; PA: r = -x).
    row_mm, bin_mm = (float(p) for p in geom.pixel_size_mm)
    row_centres = geom.detector_centres_mm(0).numpy()
    bin_centres = geom.detector_centres_mm(1).numpy()

    # Lesion column: AP bin r = x, row z; the mirrored PA bin sees the same line.
    z_les, _, x_les = LESION_CENTRE_MM
    row = int(np.argmin(np.abs(row_centres - z_les)))
    b = int(np.argmin(np.abs(bin_centres - x_les)))
    pa_mirrored = mirror_bins(torch.as_tensor(pa)).numpy()
    ap_les, pa_les = float(ap[row, b]), float(pa_mirrored[row, b])
    log_ratio = math.log(ap_les / pa_les) if ap_les > 0 and pa_les > 0 else float("nan")

    arrays = {
        "projections": proj_np,
        "views": np.array(["AP", "PA"]),
        "angles_deg": np.array(geom.angles_deg),
        "bin_centres_mm": bin_centres,
        "row_centres_mm": row_centres,
        "pixel_size_mm": np.array([row_mm, bin_mm]),
        "energy_keV": np.array(ENERGY_KEV),
        "lesion_row_bin": np.array([row, b]),
    }
    _atomic_write(png_path, lambda f: _figure(ap, pa, bin_mm, row_mm, f))
    _atomic_write(npz_path, lambda f: np.savez(f, **arrays))

    pixel_area = bin_mm * row_mm
    voxel_volume = grid.voxel_volume_mm3
    table = Table(
        title=f"AP/PA of the basic phantom ({size}³ voxels of {step:g} mm, {ENERGY_KEV} keV)"
    )
    table.add_column("view")
    table.add_column("total (a·mm³)", justify="right")
    table.add_column("max (a·mm)", justify="right")
    table.add_column(f"lesion column [{row}, {b}] (a·mm)", justify="right")
    table.add_row("AP", f"{ap.sum() * pixel_area:.4g}", f"{ap.max():.4g}", f"{ap_les:.4g}")
    table.add_row("PA", f"{pa.sum() * pixel_area:.4g}", f"{pa.max():.4g}", f"{pa_les:.4g}")
    table.add_row("ln(AP/PA)", "", "", f"{log_ratio:.3f}")
    console = Console()
    console.print(table)
    console.print(
        f"a = activity unit; total = Σ bins × pixel area; phantom activity (unattenuated) = "
        f"{float(activity.sum()) * voxel_volume:.4g} a·mm³",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"wrote {png_path} and {npz_path}", highlight=False)
    return arrays

"""The demo pipeline behind ``spect demo``: phantom → noisy AP/PA acquisition → four
reconstructions → evaluation → report, from nothing but the built-in torso.

Steps (`run_demo`):

1. the torso phantom (`recon.data.phantoms.make_torso`, Tc-99m concentrations) on
   ``default_grid(size)`` (a 400 mm cube: 64³ voxels of 6.25 mm for ``fast``, 128³ of 3.125 mm
   for ``full``);
2. an anterior/posterior acquisition with attenuation and seeded Poisson noise, 1.5 million
   expected counts over both views (`recon.data.simulate.simulate_acquisition`; no collimator blur
   and no scatter, so that the demo stays quick; `docs/anatomy.md` measures every method with
   both); written as ``study.h5`` with its anatomy (`recon.data.phantoms.segmentation_from_phantom`:
   the organs and the body outline, not the lesions);
3. reconstructions that use the study's μ map and its body outline (`recon.support.support_mask`,
   from μ) as support, as a CT would give them:

   - **NeRF**: an emission field (`recon.nerf.config.TrainConfig.cpu_default`, a small hash
     grid, for ``fast``; `TrainConfig.gpu_default`, pieNeRF's size, for ``full``)
     fitted by `recon.reconstruct.reconstruct_nerf`, its activity zero outside the body;
     ``nerf.h5``;
   - **MLEM** from the two views (`recon.reconstruct.reconstruct_mlem`, 50 iterations, voxels
     outside the body held at 0); ``mlem.h5``;
   - **organs + residual** (`recon.anatomy.reconstruct_organs`): one activity per organ of the
     study's anatomy (the phantom's organs without its lesions, as a CT would show them) plus
     residual sources for what the anatomy misses; ``organs.h5``;
   - **conjugate view**, the clinical geometric-mean method (`recon.algorithms.conjugate_view`,
     organ
     ROIs from the labels, tissue background from the body): organ activities only;

4. `recon.evaluation.report.compare` and `recon.evaluation.report.write_report`: ``report.html``,
   the PNG figures,
   ``summary.json`` and ``summary.md`` in the output folder.

Nothing here prints; `run_demo` reports progress through an optional callback and returns a
`DemoSummary` (where the report is, the headline numbers, timings).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.evaluation.report import FIGURES, REPORT_HTML, SUMMARY_JSON, SUMMARY_MD
from recon.io.atomic import write_text
from recon.support import SupportedField

__all__ = [
    "DEMO_FILES",
    "QUALITIES",
    "DemoSettings",
    "DemoSummary",
    "SupportedField",
    "demo_settings",
    "run_demo",
]

QUALITIES = ("fast", "full")
#: Result and study files of the demo (besides the report's files).
STUDY_FILE, NERF_FILE, MLEM_FILE = "study.h5", "nerf.h5", "mlem.h5"
ORGANS_FILE = "organs.h5"
#: Every file `run_demo` writes into its folder.
DEMO_FILES = (
    STUDY_FILE,
    NERF_FILE,
    MLEM_FILE,
    ORGANS_FILE,
    REPORT_HTML,
    SUMMARY_JSON,
    SUMMARY_MD,
    *FIGURES.values(),
)

#: ``progress(message)``: what the demo is doing now (for a spinner or a log).
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """What one demo run does (see `demo_settings`).

    Attributes
    ----------
    quality : str
        ``"fast"`` or ``"full"``.
    size : int
        Voxels per axis of the 400 mm cubic grid.
    total_counts : float
        Expected counts over both views.
    seed : int
        Seed of the Poisson noise and of the NeRF fit.
    mlem_iterations : int
        MLEM iterations.
    nerf : recon.nerf.config.TrainConfig
        The NeRF training settings.
    body_support : bool
        Whether MLEM and NeRF put activity only inside the body (`recon.support`, from μ).
    """

    quality: str
    size: int
    total_counts: float
    seed: int
    mlem_iterations: int
    nerf: Any
    body_support: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable values (the NeRF settings as a dict)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "nerf"}
        d["nerf"] = self.nerf.to_dict()
        return d


def demo_settings(
    quality: str = "fast", *, size: int | None = None, steps: int | None = None
) -> DemoSettings:
    """The settings of a demo quality, with optional overrides (for tests).

    ``fast``: 64³ voxels; NeRF = `TrainConfig.cpu_default` (a small hash-grid field; the whole
    demo takes a minute or two on two CPU cores). ``full``: 128³ voxels; NeRF =
    `TrainConfig.gpu_default` (pieNeRF's network and batch size), meant for a GPU. Both: 1.5
    million counts, MLEM 50 iterations, seed 0; no checkpoints or previews are written.

    Parameters
    ----------
    quality : {"fast", "full"}
    size : int, optional
        Voxels per axis instead of the quality's (>= 8).
    steps : int, optional
        NeRF steps instead of the quality's (>= 1).
    """
    from recon.nerf.config import TrainConfig

    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {list(QUALITIES)}, got {quality!r}")
    if quality == "fast":
        # The CPU preset as it is; only denser logs for the convergence figure.
        base = TrainConfig.cpu_default()
        nerf = dataclasses.replace(
            base,
            val_every=max(base.steps // 8, 1),
            log_every=max(base.steps // 100, 1),
            checkpoint_every=0,
            preview_every=0,
        )
        default_size = 64
    else:
        nerf = dataclasses.replace(TrainConfig.gpu_default(), checkpoint_every=0, preview_every=0)
        default_size = 128
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        nerf = dataclasses.replace(
            nerf, steps=steps, val_every=min(nerf.val_every, max(steps // 4, 1))
        )
    n = default_size if size is None else size
    if nerf.rays_per_step > n * n:  # small grids: at most one ray per detector line and step
        nerf = dataclasses.replace(nerf, rays_per_step=n * n)
    return DemoSettings(
        quality=quality,
        size=default_size if size is None else size,
        total_counts=1.5e6,
        seed=0,
        mlem_iterations=50,
        nerf=nerf,
    )


@dataclass
class DemoSummary:
    """What `run_demo` did.

    Attributes
    ----------
    out_dir : pathlib.Path
        The output folder.
    report : pathlib.Path
        ``report.html``.
    files : dict
        Role → path of every file written (``study``, ``nerf``, ``mlem``, ``html``,
        ``summary_json``, ``summary_md`` and the figures by name).
    settings : DemoSettings
    device : str
        Where the reconstructions ran.
    headline : list of dict
        `recon.evaluation.report.Comparison.headline` rows (one per method and the conjugate view).
    organs : list of dict
        `recon.evaluation.report.Comparison.organ_table` rows.
    timings_s : dict
        Wall-clock seconds of each stage.
    runtime_s : float
        Wall-clock seconds of the whole run.
    cpu_time_s : float
        CPU seconds of this process over the run (all threads).
    """

    out_dir: Path
    report: Path
    files: dict[str, Path]
    settings: DemoSettings
    device: str
    headline: list[dict[str, Any]]
    organs: list[dict[str, Any]]
    timings_s: dict[str, float] = field(default_factory=dict)
    runtime_s: float = 0.0
    cpu_time_s: float = 0.0


#: Present in a demo folder while the demo writes it; a folder with it holds the remains of an
#: interrupted demo, which the next run replaces without --force.
IN_PROGRESS = ".spect-demo-in-progress"


def _check_outputs(folder: Path, overwrite: bool) -> bool:
    """Refuse a demo over existing outputs; returns whether the files may be replaced
    (``overwrite``, or the folder holds an interrupted demo's files)."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder")
    if overwrite or (folder / IN_PROGRESS).exists():
        return True
    existing = [str(folder / n) for n in DEMO_FILES if os.path.lexists(folder / n)]
    if existing:
        listed = ", ".join(existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise FileExistsError(f"{listed}: already exist(s); use --force to overwrite")
    return False


def run_demo(
    out_dir: str | os.PathLike[str] = "spect-demo",
    quality: str = "fast",
    device: str | torch.device = "cpu",
    *,
    size: int | None = None,
    steps: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DemoSummary:
    """Run the whole demo into ``out_dir`` (created if missing) and return its summary.

    Parameters
    ----------
    out_dir : path
        Output folder; the files of `DEMO_FILES` are written there.
    quality : {"fast", "full"}
        See `demo_settings`.
    device : str or torch.device
        Where MLEM and NeRF run (``"cpu"``, ``"cuda"``).
    size, steps : int, optional
        Grid size and NeRF steps instead of the quality's (small values for tests).
    overwrite : bool
        Replace existing output files; without it any existing one is refused before any work
        (`FileExistsError`).
    progress : callable, optional
        Called with a short message at each stage (and every few NeRF steps).

    Returns
    -------
    DemoSummary

    Raises
    ------
    ValueError
        Bad quality, size, steps or device (e.g. CUDA asked for but absent).
    FileExistsError
        Outputs exist and ``overwrite`` is false (unless they are the remains of an interrupted
        demo: the folder then holds `IN_PROGRESS`, and they are replaced).
    """
    from recon.algorithms.mlem import EMConfig
    from recon.anatomy import reconstruct_organs
    from recon.data.phantoms import (
        NUCLIDES,
        PhantomVariant,
        default_grid,
        make_torso,
        segmentation_from_phantom,
    )
    from recon.data.simulate import simulate_acquisition
    from recon.evaluation.report import MethodResult, compare, write_report
    from recon.io import write_result, write_study
    from recon.reconstruct import reconstruct_mlem, reconstruct_nerf
    from spectproj import ParallelGeometry

    settings = demo_settings(quality, size=size, steps=steps)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available (torch {torch.__version__})")
    folder = Path(out_dir)
    overwrite = _check_outputs(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / IN_PROGRESS, "spect demo writing this folder\n", overwrite=True)

    say: Progress = progress if progress is not None else (lambda message: None)
    timings: dict[str, float] = {}
    t_start, cpu_start = time.perf_counter(), time.process_time()

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 3)
        return now

    # 1-2. phantom and acquisition
    t = time.perf_counter()
    say(f"Building the {settings.size}³ torso phantom...")
    energy = NUCLIDES["Tc-99m"]
    grid = default_grid(settings.size)
    phantom = make_torso(grid, energy)
    t = lap("phantom", t)
    say("Simulating a noisy AP/PA acquisition...")
    geometry = ParallelGeometry.ap_pa(grid, radius_mm=250.0)
    study = simulate_acquisition(
        phantom,
        geometry,
        total_counts=settings.total_counts,
        isotope="Tc-99m",
        seed=settings.seed,
    )
    provenance = dict(study.provenance)
    provenance["demo"] = f"recon.demo.run_demo(quality={settings.quality!r}, size={settings.size})"
    # The segmentation a CT would give: the organs, not the lesions.
    anatomy = segmentation_from_phantom(phantom, PhantomVariant(unsegmented_lesions=True))
    study = dataclasses.replace(study, provenance=provenance, anatomy=anatomy)
    study_path = folder / STUDY_FILE
    write_study(study_path, study, overwrite=overwrite)
    t = lap("simulate", t)

    # 3a. MLEM
    say(f"MLEM, {settings.mlem_iterations} iterations...")
    support = "body" if settings.body_support else "none"
    mlem_result = reconstruct_mlem(
        study,
        EMConfig(iterations=settings.mlem_iterations),
        support=support,
        device=dev,
        study_file=STUDY_FILE,
        extra_parameters={
            "mask": "body (from μ, recon.support)" if settings.body_support else None,
            "made_by": "recon.demo.run_demo",
        },
    )
    mlem_path = folder / MLEM_FILE
    write_result(mlem_path, mlem_result, overwrite=overwrite)
    t = lap("mlem", t)

    # 3b. NeRF
    config = dataclasses.replace(settings.nerf, seed=settings.seed)
    say(f"NeRF, {config.steps} steps of {config.rays_per_step} rays...")
    every = max(config.steps // 20, 1)

    def on_step(step: int, total: int, metrics: Any) -> None:
        if step % every == 0 or step == total:
            say(f"NeRF step {step}/{total}, loss {float(metrics['loss']):.4g}")

    nerf_result = reconstruct_nerf(
        study,
        config,
        support=support,
        device=dev,
        callback=on_step,
        study_file=STUDY_FILE,
        extra_parameters={"made_by": "recon.demo.run_demo"},
    )
    nerf_path = folder / NERF_FILE
    write_result(nerf_path, nerf_result, overwrite=overwrite)
    t = lap("nerf", t)

    # 3c. organs + residual from the anatomy
    say("Organs + residual from the anatomy...")
    organs_result = reconstruct_organs(study, support=support, study_file=STUDY_FILE).result
    organs_path = folder / ORGANS_FILE
    write_result(organs_path, organs_result, overwrite=overwrite)
    t = lap("organs", t)

    # 3d-4. conjugate view, evaluation, report
    say("Evaluating and writing the report...")
    comparison = compare(
        study,
        [
            MethodResult.from_result(nerf_result, "NeRF", str(nerf_path)),
            MethodResult.from_result(mlem_result, "MLEM", str(mlem_path)),
            MethodResult.from_result(organs_result, "organs + residual", str(organs_path)),
        ],
        conjugate_view=True,
        conjugate_background="body",
        study_file=study_path,
        device=dev,
    )
    t = lap("evaluate", t)
    counts_text = f"{float(study.projections.sum(dtype=np.float64)):.3g}"
    intro = (
        f"The built-in torso phantom ({settings.size}³ voxels of {grid.spacing_mm[0]:g} mm, "
        f"Tc-99m) seen by an anterior and a posterior view with attenuation and Poisson noise "
        f"({counts_text} counts), reconstructed four ways: a neural field (NeRF) fitted to "
        f"the two views, 2-view MLEM ({settings.mlem_iterations} iterations), organs + residual "
        "(one activity per segmented organ plus sources for what the segmentation misses; the "
        "segmentation, like a CT's, does not show the lesions), and the clinical conjugate-view "
        "method (organ activities only). All use the μ map and keep activity inside the body "
        "outline."
    )
    demo_info = {
        "demo": {
            "settings": settings.to_dict(),
            "device": str(dev),
            "torch_threads": torch.get_num_threads(),
            "timings_s": dict(timings),
        }
    }
    rows = [
        ("quality", settings.quality),
        ("device", str(dev)),
        (
            "NeRF",
            f"{config.steps} steps × {config.rays_per_step} rays × "
            f"{config.n_samples or 'lattice'} samples, {config.field.encoding} field, "
            f"{nerf_result.parameters.get('elapsed_s', 0.0):.0f} s",
        ),
        ("MLEM", f"{settings.mlem_iterations} iterations"),
    ]
    files = write_report(
        folder,
        comparison,
        title="spect demo: NeRF vs MLEM vs conjugate view from two views",
        intro=intro,
        extra=demo_info,
        extra_rows=rows,
        overwrite=overwrite,
    )
    lap("report", t)
    runtime = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    _add_timings(files.summary_json, timings, runtime, cpu)
    (folder / IN_PROGRESS).unlink(missing_ok=True)  # complete: a rerun needs --force again

    paths = {
        "study": study_path.resolve(),
        "nerf": nerf_path.resolve(),
        "mlem": mlem_path.resolve(),
        "html": files.html,
        "summary_json": files.summary_json,
        "summary_md": files.summary_md,
        **files.figures,
    }
    return DemoSummary(
        out_dir=folder.resolve(),
        report=files.html,
        files=paths,
        settings=settings,
        device=str(dev),
        headline=comparison.headline(),
        organs=comparison.organ_table(),
        timings_s=timings,
        runtime_s=runtime,
        cpu_time_s=cpu,
    )


def _add_timings(summary_json: Path, timings: dict[str, float], runtime: float, cpu: float) -> None:
    """Put the final timings (the report stage included) into ``summary.json``."""
    import json

    data = json.loads(summary_json.read_text(encoding="utf-8"))
    demo = data.setdefault("demo", {})
    demo["timings_s"] = dict(timings)
    demo["runtime_s"] = round(runtime, 3)
    demo["cpu_time_s"] = round(cpu, 3)
    write_text(summary_json, json.dumps(data, indent=2) + "\n", overwrite=True)

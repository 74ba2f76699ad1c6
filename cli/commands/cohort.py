"""``spect cohort make`` (simulate a cohort of a phantom population), ``spect train-cohort`` (a
shared NeRF over many studies, also under ``torchrun``) and ``spect recon batch`` (many studies,
MLEM or NeRF, over several processes)."""

from __future__ import annotations

import dataclasses
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands import ForceOption, check_output, output_option, print_rows, train_overrides
from cli.progress import iteration_progress, loss_psnr_callback

__all__ = ["BackendChoice", "BatchMethod", "TracerChoice", "app", "batch", "make", "train_cohort"]

app = typer.Typer(
    name="cohort",
    help="Cohorts of studies: simulate one from a phantom population.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class TracerChoice(StrEnum):
    """Tracer of a phantom population (`recon.data.phantoms.population.TRACERS`)."""

    LU177_DOTATATE = "lu177-dotatate"
    LU177_PSMA = "lu177-psma"
    TC99M_MDP = "tc99m-mdp"


class BackendChoice(StrEnum):
    """Process-group backend (auto: nccl on CUDA devices, gloo on CPUs)."""

    AUTO = "auto"
    GLOO = "gloo"
    NCCL = "nccl"


class OrganAnchorChoice(StrEnum):
    """What an organ code is anchored on (`recon.nerf.organ_field.ANCHORS`)."""

    ORGANS = "organs"
    RESIDUAL = "residual"


class CohortDevice(StrEnum):
    """Where each process computes (auto: its CUDA device when there is one)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class BatchMethod(StrEnum):
    """Reconstruction method of ``spect recon batch``."""

    MLEM = "mlem"
    NERF = "nerf"


def make(
    n: Annotated[int, typer.Argument(metavar="N", min=1, help="Number of studies.")],
    output: Annotated[Path, output_option("Cohort folder to create (studies + cohort.csv).")],
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the population.")] = 0,
    tracer: Annotated[
        TracerChoice, typer.Option("--tracer", case_sensitive=False, help="Uptake pattern.")
    ] = TracerChoice.LU177_DOTATATE,
    size: Annotated[
        int, typer.Option("--size", min=8, help="Voxels per axis of each study's grid.")
    ] = 64,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes.")] = 1,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", min=0.0, max=0.99, help="Share of the studies marked 'val'."
        ),
    ] = 0.0,
    force: ForceOption = False,
) -> None:
    """Simulate N studies of a phantom population into a new folder, with its manifest.

    Each study is a torso of its own: body and organ sizes, positions and rotations, uptake per
    organ from the tracer's published ranges, lesions, uneven uptake, a synthetic CT (μ from
    its HU) and a segmentation with errors (docs/cohorts.md). The folder holds p0000.h5, ...,
    cohort.csv (the manifest for 'spect train-cohort') and population.json. It is written
    through a staging folder and appears complete or not at all.
    """
    from recon.cohort.make import make_cohort
    from recon.data.phantoms.population import PopulationConfig

    config = PopulationConfig(tracer=tracer.value)
    with iteration_progress(n, "Cohort") as update:
        made = make_cohort(
            output, n, config, seed=seed, size=size, val_fraction=val_fraction,
            workers=workers, overwrite=force, callback=lambda done, total: update(done),
        )  # fmt: skip
    manifest = made.manifest
    rows = [
        ("studies", f"{len(manifest.train)} training, {len(manifest.val)} held out"),
        ("population", f"{tracer.value}, seed {seed}, {size}³ voxels"),
        ("time", f"{made.elapsed_s:.1f} s with {made.workers} process(es)"),
        ("manifest", str(made.manifest_path)),
    ]
    print_rows(f"Cohort of {n} phantoms", rows, output)


def _rank() -> int:
    """This process's rank under torchrun (0 for a plain run), before the group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def train_cohort(
    manifest: Annotated[
        Path,
        typer.Argument(
            metavar="MANIFEST", help="CSV (path[,id][,split]) or a folder of study files."
        ),
    ],
    output: Annotated[Path, output_option("Cohort model file to write (.pt).")],
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Optimiser steps (default: preset).")
    ] = None,
    rays_per_step: Annotated[
        int | None,
        typer.Option(
            "--rays-per-step",
            min=1,
            help="Global batch: lines per step over all processes (a multiple of their number).",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", min=0, help="Samples per ray; 0: one per voxel (lattice)."),
    ] = None,
    latent_dim: Annotated[
        int | None, typer.Option("--latent-dim", min=1, help="Size of each study's code.")
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config", metavar="FILE.toml", help="Training settings (TOML) on the preset."
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            min=0.0,
            max=0.99,
            help="Hold out this share of the studies when the manifest marks none 'val'.",
        ),
    ] = 0.0,
    val_steps: Annotated[
        int, typer.Option("--val-steps", min=0, help="Code-fit steps per held-out study.")
    ] = 100,
    backend: Annotated[
        BackendChoice,
        typer.Option("--backend", case_sensitive=False, help="torch.distributed backend."),
    ] = BackendChoice.AUTO,
    device: Annotated[
        CohortDevice,
        typer.Option("--device", case_sensitive=False, help="Compute device of each process."),
    ] = CohortDevice.AUTO,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", metavar="CKPT", help="Cohort checkpoint to continue from."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            metavar="DIR",
            help="Folder for logs and checkpoints (default: MODEL stem + '_cohort').",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed.")] = None,
    cache_studies: Annotated[
        int,
        typer.Option(
            "--cache-studies",
            min=0,
            help="Hold at most this many studies in memory per process, reading the others "
            "from their files when needed (0: hold all).",
        ),
    ] = 0,
    studies_per_step: Annotated[
        int,
        typer.Option(
            "--studies-per-step",
            min=0,
            help="Draw each step's lines from this many studies (0: from all).",
        ),
    ] = 0,
    group_steps: Annotated[
        int,
        typer.Option("--group-steps", min=1, help="Steps that share those studies."),
    ] = 1,
    anatomy: Annotated[
        bool,
        typer.Option(
            "--anatomy",
            help="Anatomy-conditioned network: it also takes each study's μ and segmentation "
            "at every point (every study needs μ or a CT, and an anatomy).",
        ),
    ] = False,
    organ_code: Annotated[
        bool,
        typer.Option(
            "--organ-code",
            help="Organ-anchored code (implies --anatomy): each study's code holds the "
            "log-concentrations of its segments, started at its organ fit, and the network "
            "only modulates them and adds a residual.",
        ),
    ] = False,
    organ_bound: Annotated[
        float,
        typer.Option(
            "--organ-bound",
            min=0.0,
            help="With --organ-code: the network scales each organ's uptake by a factor "
            "between e^-B and e^B.",
        ),
    ] = 0.7,
    organ_anchor: Annotated[
        OrganAnchorChoice,
        typer.Option(
            "--organ-anchor",
            case_sensitive=False,
            help="With --organ-code: anchor each study's code on its organ fit (organs) or on "
            "its organs + residual fit (residual: refined segments and the residual sources, "
            "each source a part of the code).",
        ),
    ] = OrganAnchorChoice.ORGANS,
    organ_normalise: Annotated[
        bool,
        typer.Option(
            "--organ-normalise",
            help="With --organ-code: the network only redistributes activity within each "
            "segment and source (every one keeps the total its code gives it).",
        ),
    ] = False,
    organ_normalise_sample: Annotated[
        int,
        typer.Option(
            "--organ-normalise-sample",
            min=0,
            help="With --organ-normalise: estimate each segment's and source's mean modulation "
            "on this many of its voxels (a fixed, seeded subsample; 0: on all of them, exact "
            "but one network pass over the whole anatomy per step).",
        ),
    ] = 4096,  # recon.nerf.organ_field.NORMALISE_SAMPLE (tested equal)
    force: ForceOption = False,
) -> None:
    """Train one latent-conditioned NeRF on a cohort of studies (one code per study).

    Each step mixes lines of many studies; every study has its own latent code and the
    network is shared. Run it as it is on one process, or data-parallel on several processes,
    GPUs or machines with torchrun, e.g. 'torchrun --nproc-per-node 4 $(which spect)
    train-cohort cohort.csv -o model.pt' (gloo on CPUs, nccl on GPUs; see docs/cohorts.md).
    The global batch --rays-per-step is split over the processes, so the result does not
    depend on their number. Only rank 0 writes files: logs and checkpoints in --out-dir, the
    model in MODEL. Ctrl-C (or SIGTERM) stops every process after the current step with a
    checkpoint to --resume from. Use the model with 'spect recon nerf STUDY --prior MODEL'.
    --anatomy feeds each study's μ and segmentation to the network; --organ-code anchors each
    study's code on its organ fit (see docs/cohorts.md).
    """
    import math
    import time

    from recon.cohort.distributed import resolve_device
    from recon.cohort.training import CohortConfig
    from recon.cohort.training import train_cohort as run_training
    from recon.io import signals
    from recon.nerf.config import TrainConfig
    from recon.nerf.training import TrainingDiverged, TrainingInterrupted

    main = _rank() == 0
    if main:  # only rank 0 writes MODEL and reads --resume (other machines may not see them)
        check_output(output, force)
        if resume is not None and not resume.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    on_gpu = resolve_device(device.value, local).type == "cuda"
    base = TrainConfig.gpu_default() if on_gpu else TrainConfig.cpu_default()
    train = base if config_file is None else TrainConfig.from_toml(config_file, base)
    changes: dict[str, Any] = train_overrides(steps, rays_per_step, samples, seed)
    if latent_dim is not None:
        changes["field"] = dataclasses.replace(train.field, latent_dim=latent_dim)
    train = dataclasses.replace(train, preview_every=0, **changes)
    config = CohortConfig(
        train=train, val_fraction=val_fraction, val_steps=val_steps,
        backend=backend.value, device=device.value, cache_studies=cache_studies,
        studies_per_step=studies_per_step, group_steps=group_steps,
        anatomy=anatomy or organ_code, organ_code=organ_code, organ_bound=organ_bound,
        organ_anchor=organ_anchor.value, organ_normalise=organ_normalise,
        organ_normalise_sample=organ_normalise_sample or None,
    )  # fmt: skip
    folder = out_dir if out_dir is not None else output.with_name(output.stem + "_cohort")

    start = time.perf_counter()
    total = train.steps
    with _progress(main, total) as update:
        callback = loss_psnr_callback(update, "heldout_psnr")

        try:
            result = run_training(
                manifest, config, folder, resume, model_path=output, overwrite=force,
                callback=callback,
            )  # fmt: skip
        except TrainingInterrupted as stop:
            if main:
                typer.echo(f"Interrupted: {stop}", err=True)
            raise typer.Exit(signals.exit_code(stop)) from None
        except TrainingDiverged as error:
            raise ValueError(str(error)) from None
    if not main:
        return

    fc = train.field
    processes = "one process" if result.world_size == 1 else f"{result.world_size} processes"
    rows = [
        ("studies", f"{len(result.train_ids)} training, {len(result.val_ids)} held out"),
        (
            "field",
            f"{fc.encoding}, latent {fc.latent_dim} per study"
            + (", anatomy-conditioned" if config.anatomy else ""),
        ),
        ("processes", f"{processes} on {result.device}"),
        ("steps", f"{result.steps_done} × {train.rays_per_step} lines (global batch)"),
        ("time", f"{time.perf_counter() - start:.1f} s"),
    ]
    if organ_code:
        fit = "organ fit" if organ_anchor == OrganAnchorChoice.ORGANS else "organs + residual fit"
        norm = ""
        if organ_normalise:
            on = f"{organ_normalise_sample} voxels" if organ_normalise_sample else "all voxels"
            norm = f", normalised per segment (means on {on} of each)"
        rows.insert(2, ("organ code", f"B = {organ_bound:g}, from each study's {fit}{norm}"))
    if math.isfinite(result.samples_per_s):
        rows.append(("throughput", f"{result.samples_per_s:.4g} lines/s"))
    if result.losses:
        rows.append(("loss", f"{result.losses[0]:.4g} (step 1) → {result.losses[-1]:.4g}"))
    if result.heldout:
        psnr = [h["psnr"] for h in result.heldout if h["psnr"] == h["psnr"]]
        organ = [h["organ_error"] for h in result.heldout if h.get("organ_error") is not None]
        text = f"PSNR {sum(psnr) / len(psnr):.2f} dB" if psnr else "–"
        if organ:
            text += f", organ-activity error {100 * sum(organ) / len(organ):.1f} %"
        rows.append(("held-out studies", f"{text} (code fit of {val_steps} steps)"))
    rows.append(("outputs", f"{folder} (logs, checkpoints)"))
    print_rows(f"Cohort model from {manifest}", rows, output)


class _NoProgress:
    def __enter__(self) -> Any:
        return lambda completed, **values: None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(main: bool, total: int) -> Any:
    if not main:
        return _NoProgress()
    return iteration_progress(total, "Cohort", fields={"loss": "–", "PSNR": "–"})


def batch(
    studies: Annotated[
        list[Path], typer.Argument(metavar="STUDY.h5...", help="Study files to reconstruct.")
    ],
    output: Annotated[Path, output_option("Folder for the results (STEM.h5) and summary.csv.")],
    method: Annotated[
        BatchMethod, typer.Option("--method", case_sensitive=False, help="Reconstruction method.")
    ] = BatchMethod.MLEM,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Processes (1: one study after another).")
    ] = 1,
    iterations: Annotated[
        int | None, typer.Option("--iterations", min=1, help="MLEM/OSEM iterations (default 10).")
    ] = None,
    subsets: Annotated[
        int | None, typer.Option("--subsets", min=1, help="OSEM subsets (MLEM: 1).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="NeRF steps (default: preset).")
    ] = None,
    prior: Annotated[
        Path | None,
        typer.Option("--prior", metavar="MODEL", help="Cohort model (NeRF): fit a code."),
    ] = None,
    fine_tune: Annotated[
        bool, typer.Option("--fine-tune", help="With --prior: then fine-tune the network.")
    ] = False,
    device: Annotated[
        CohortDevice,
        typer.Option(
            "--device", case_sensitive=False, help="cpu, cuda (all GPUs) or auto (GPUs if any)."
        ),
    ] = CohortDevice.CPU,
    force: ForceOption = False,
) -> None:
    """Reconstruct many studies with MLEM or NeRF, over several processes and GPUs.

    Each STUDY.h5 becomes OUTDIR/STEM.h5. A study that fails (a broken file, bad data) is
    reported in the summary table and in OUTDIR/summary.csv, and the others go on; the exit
    code is 1 if any failed. With --workers N the studies run in N processes spread over the
    devices (--device cuda: every visible GPU).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from recon.algorithms.mlem import EMConfig
    from recon.batch import reconstruct_batch
    from recon.nerf.config import TrainConfig

    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{output}: is a file; -o names the results folder")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: folder {output.parent} does not exist")
    if method is BatchMethod.MLEM and (steps is not None or prior is not None or fine_tune):
        raise ValueError("--steps, --prior and --fine-tune are for --method nerf")
    if method is BatchMethod.NERF and (iterations is not None or subsets is not None):
        raise ValueError("--iterations and --subsets are for --method mlem")
    if fine_tune and prior is None:
        raise ValueError("--fine-tune needs --prior MODEL")
    if prior is not None and not prior.is_file():
        raise FileNotFoundError(f"--prior {prior}: no such model file")
    devices = {"cpu": None, "cuda": "auto", "auto": "auto"}[device.value]
    if device is CohortDevice.CUDA:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available; use --device cpu")
    mlem = EMConfig(iterations=iterations or 10, subsets=subsets or 1)
    nerf = None
    if method is BatchMethod.NERF:
        on_gpu = devices == "auto" and _cuda_available()
        nerf = TrainConfig.gpu_default() if on_gpu else TrainConfig.cpu_default()
        nerf = dataclasses.replace(nerf, preview_every=0, steps=steps or nerf.steps)

    failed = 0
    with iteration_progress(len(studies), "Batch", fields={"failed": "0"}) as update:

        def callback(done: int, total: int, row: Any) -> None:
            nonlocal failed
            failed += 0 if row.ok else 1
            update(done, failed=str(failed))

        summary = reconstruct_batch(
            studies, method.value, output, workers=workers, mlem=mlem, nerf=nerf, prior=prior,
            fine_tune=fine_tune, devices=devices, overwrite=force, callback=callback,
        )  # fmt: skip

    table = Table(title=escape(f"{method.value.upper()} of {len(studies)} studies"))
    for name in ("study", "status", "time", "total activity", "vs truth", "organs"):
        table.add_column(name, overflow="fold")
    for row in summary.rows:
        total = "–" if row.total_mbq is None else f"{row.total_mbq:.4g} MBq"
        truth = "–" if row.total_error is None else f"{100 * row.total_error:+.1f} %"
        organs = "–" if row.organ_error is None else f"{100 * row.organ_error:.1f} %"
        status = "[green]ok[/green]" if row.ok else "[red]failed[/red]"
        name = escape(Path(row.study).name)
        table.add_row(name, status, f"{row.seconds:.1f} s", total, truth, organs)
    console = Console()
    console.print(table)
    for row in summary.failed:
        console.print(f"failed: {row.study}: {row.error}", highlight=False, markup=False,
                      soft_wrap=True)  # fmt: skip
    console.print(
        f"{summary.n_ok} of {len(summary.rows)} done in {summary.elapsed_s:.1f} s with "
        f"{summary.workers} process(es); summary: {output / 'summary.csv'}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if summary.failed:
        raise ValueError(
            f"{len(summary.failed)} of {len(summary.rows)} studies failed "
            f"(see the table above and {output / 'summary.csv'})"
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

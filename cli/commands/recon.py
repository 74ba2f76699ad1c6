"""``spect recon``: reconstructions of a study file into a result file (``spect recon mlem``)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands import FORCE_HELP, check_output, help_text, study_collimator, train_overrides
from cli.progress import iteration_progress, loss_psnr_callback, status

__all__ = ["DeviceChoice", "PriorChoice", "app", "mlem", "resolve_device"]

app = typer.Typer(
    name="recon",
    help="Reconstruct a study file into a result file.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _group(ctx: typer.Context) -> None:
    """Reconstruct a study file into a result file."""
    if ctx.invoked_subcommand is None:  # plain `spect recon`: its help, exit code 0
        typer.echo(ctx.get_help())
        raise typer.Exit()


class PriorChoice(str, Enum):
    """Prior of one-step-late MAP-EM (``none``: plain MLEM/OSEM)."""

    NONE = "none"
    QUADRATIC = "quadratic"
    RELATIVE_DIFFERENCE = "relative-difference"

    @property
    def library_name(self) -> str | None:
        """The name `recon.mlem.EMConfig` takes (``None``, ``"quadratic"``, ...)."""
        return None if self is PriorChoice.NONE else self.value.replace("-", "_")


class DeviceChoice(str, Enum):
    """Where the reconstruction runs."""

    CPU = "cpu"
    CUDA = "cuda"


def resolve_device(choice: DeviceChoice) -> Any:
    """The `torch.device` of ``choice``; a clear error when CUDA is asked for but absent."""
    import torch

    if choice is DeviceChoice.CUDA and not torch.cuda.is_available():
        build = torch.version.cuda
        why = "no CUDA device is visible" if build else "this PyTorch is a CPU-only build"
        raise ValueError(
            f"--device cuda: CUDA is not available ({why}; torch {torch.__version__}); "
            "use --device cpu"
        )
    return torch.device(choice.value)


def mlem(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.h5", help="Study file to reconstruct.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Result file to write (.h5).")],
    iterations: Annotated[
        int, typer.Option("--iterations", min=1, help="Full passes over the data.")
    ] = 10,
    subsets: Annotated[
        int,
        typer.Option("--subsets", min=1, help="Ordered subsets of interleaved views (1: MLEM)."),
    ] = 1,
    prior: Annotated[
        PriorChoice,
        typer.Option("--prior", case_sensitive=False, help="One-step-late MAP-EM prior."),
    ] = PriorChoice.NONE,
    beta: Annotated[
        float,
        typer.Option("--beta", min=0.0, help="Prior weight (needs --prior; in counts)."),
    ] = 0.0,
    gamma: Annotated[
        float,
        typer.Option(
            "--gamma", min=0.0, help="Edge preservation of the relative-difference prior."
        ),
    ] = 2.0,
    filter_fwhm_mm: Annotated[
        float,
        typer.Option("--filter-fwhm-mm", min=0.0, help="Gaussian post-filter FWHM (mm), 0: none."),
    ] = 0.0,
    device: Annotated[
        DeviceChoice, typer.Option("--device", case_sensitive=False, help="Compute device.")
    ] = DeviceChoice.CPU,
    attenuation: Annotated[
        bool,
        typer.Option(
            "--attenuation/--no-attenuation",
            help="Model attenuation with the study's μ (when it has one).",
        ),
    ] = True,
    collimator: Annotated[
        bool,
        typer.Option(
            "--collimator/--no-collimator",
            help="Model the collimator blur the study names (when it has a radius).",
        ),
    ] = True,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
) -> None:
    """Reconstruct a study by MLEM, OSEM (--subsets) or one-step-late MAP-EM (--prior).

    The model is counts ~ Poisson(count_scale · A(activity) + background), with the study's
    geometry, μ, collimator, background (scatter) and count scale, so the result is an
    activity concentration in the study's unit. The result file records every parameter and
    the log-likelihood and log-prior of each iteration.
    """
    import numpy as np
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from recon.io import Result, read_study, write_result
    from recon.mlem import EMConfig, em_reconstruct

    check_output(output, force)
    if prior is PriorChoice.NONE and beta > 0:
        raise ValueError("--beta is the weight of a prior; give --prior too")
    if prior is not PriorChoice.NONE and beta == 0:
        raise ValueError(f"--prior {prior.value} needs --beta > 0")
    config = EMConfig(
        iterations=iterations,
        subsets=subsets,
        prior=prior.library_name,
        beta=beta,
        gamma=gamma,
        filter_fwhm_mm=filter_fwhm_mm,
    )
    torch_device = resolve_device(device)
    study = read_study(study_file)
    acq = study.acquisition
    geometry = study.geometry()
    if subsets > geometry.n_views:
        raise ValueError(f"--subsets {subsets} exceeds the study's {geometry.n_views} view(s)")
    response, collimator_note = study_collimator(study, collimator)
    use_mu = attenuation and study.mu_per_mm is not None
    if not attenuation:
        attenuation_note = "off (--no-attenuation)"
    elif use_mu:
        attenuation_note = f"study μ at {acq.energy_keV:g} keV"
    else:
        attenuation_note = "none (the study has no μ)"

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=torch_device)

    counts = tensor(study.projections)
    mu = tensor(study.mu_per_mm) if use_mu else None
    background = None if study.background is None else tensor(study.background)
    count_scale = acq.count_scale

    with iteration_progress(iterations, config.method.upper(), fields={"logL": "–"}) as update:

        def callback(iteration: int, activity: torch.Tensor, log_likelihood: float) -> None:
            update(iteration, logL=f"{log_likelihood:.8g}")

        em = em_reconstruct(
            counts,
            geometry,
            config,
            mu=mu,
            collimator=response,
            background=background,
            count_scale=count_scale,
            callback=callback,
        )

    parameters: dict[str, Any] = dataclasses.asdict(config)
    parameters.update(
        {
            "method": config.method,
            "study_file": str(study_file),
            "device": str(torch_device),
            "dtype": "float32",
            "count_scale": count_scale,
            "attenuation": use_mu,
            "attenuation_note": attenuation_note,
            "collimator": None if response is None else (acq.collimator or "").upper(),
            "collimator_sigma0_mm": None if response is None else response.sigma0_mm,
            "collimator_slope": None if response is None else response.slope,
            "collimator_note": collimator_note,
            "radius_mm": acq.radius_mm,
            "background": background is not None,
            "n_views": geometry.n_views,
            "initial": "uniform, projection matches the measured total",
        }
    )
    activity = em.activity.detach().cpu().numpy().astype(np.float32)
    extras: dict[str, np.ndarray] = {}
    if filter_fwhm_mm > 0 and em.unfiltered is not None:
        extras["unfiltered_activity"] = em.unfiltered.detach().cpu().numpy().astype(np.float32)
    result = Result(
        activity=activity,
        grid=study.grid,
        method=config.method,
        parameters=parameters,
        history={
            "log_likelihood": np.asarray(em.log_likelihood, dtype=np.float64),
            "log_prior": np.asarray(em.log_prior, dtype=np.float64),
        },
        activity_unit=study.activity_unit,
        extras=extras,
        study_file=str(study_file),
    )
    with status(f"Writing {output}..."):
        write_result(output, result, overwrite=force)

    table = Table(title=escape(f"{config.method.upper()} of {study_file}"), show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value")
    table.add_row("iterations × subsets", f"{iterations} × {subsets}")
    if config.prior is not None:
        table.add_row("prior", f"{prior.value}, β = {beta:g}, γ = {gamma:g}")
    table.add_row("attenuation", attenuation_note)
    table.add_row("collimator", collimator_note)
    table.add_row("background", "study background" if background is not None else "none")
    table.add_row("count scale", f"{count_scale:.6g}")
    if em.log_likelihood:
        table.add_row(
            "log-likelihood",
            f"{em.log_likelihood[0]:.8g} (iteration 1) → {em.log_likelihood[-1]:.8g}",
        )
    if study.activity_unit == "Bq/mL":
        voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
        total = float(activity.sum(dtype=np.float64)) * voxel_ml * 1e-6
        text = f"{total:.6g} MBq"
        if study.truth_activity is not None:
            truth = float(study.truth_activity.sum(dtype=np.float64)) * voxel_ml * 1e-6
            text += f" (truth {truth:.6g} MBq)"
        table.add_row("total activity", text)
    if filter_fwhm_mm > 0:
        table.add_row("post-filter", f"Gaussian, FWHM {filter_fwhm_mm:g} mm")
    console = Console()
    console.print(table)
    console.print(f"wrote {output}", highlight=False, markup=False)


app.command("mlem", help=help_text(mlem))(mlem)


# -- spect recon nerf ----------------------------------------------------------------------------


class EncodingChoice(str, Enum):
    """Input encoding of the emission field."""

    FREQUENCY = "frequency"
    HASHGRID = "hashgrid"


def nerf(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.h5", help="Study file to reconstruct.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Result file to write (.h5).")],
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Optimiser steps (default: preset).")
    ] = None,
    rays_per_step: Annotated[
        int | None,
        typer.Option("--rays-per-step", min=1, help="Detector lines per step (AP/PA pairs once)."),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", min=0, help="Samples per ray; 0: one per voxel (lattice)."),
    ] = None,
    encoding: Annotated[
        EncodingChoice | None,
        typer.Option("--encoding", case_sensitive=False, help="Field input encoding."),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config", metavar="FILE.toml", help="Training settings (TOML) on the preset."
        ),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", metavar="CKPT", help="Checkpoint to continue from.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            metavar="DIR",
            help="Folder for logs, previews and checkpoints (default: RESULT stem + '_nerf').",
        ),
    ] = None,
    device: Annotated[
        DeviceChoice, typer.Option("--device", case_sensitive=False, help="Compute device.")
    ] = DeviceChoice.CPU,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed.")] = None,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Use deterministic algorithms only.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", min=1, help="CPU threads for torch (1 is fastest on a busy machine)."
        ),
    ] = None,
    prior: Annotated[
        Path | None,
        typer.Option(
            "--prior",
            metavar="MODEL",
            help="Cohort model (spect train-cohort): fit only this study's latent code.",
        ),
    ] = None,
    fine_tune: Annotated[
        bool,
        typer.Option("--fine-tune", help="With --prior: fine-tune the network for half the steps."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
) -> None:
    """Reconstruct a study with a neural emission field (pieNeRF-style, exact physics).

    The field is fitted to the counts by the Poisson likelihood of count_scale · A(activity) +
    background with the study's μ and one count scale for all views (no per-view normalisation).
    Defaults: a small hash-grid field on --device cpu, pieNeRF's network on --device cuda;
    --config FILE.toml changes any setting (see docs/nerf.md) and the options above override
    both. Logs, previews and checkpoints go to --out-dir; Ctrl-C writes a checkpoint to
    --resume from. --prior MODEL starts from a cohort model's network and fits only this
    study's latent code (--fine-tune: then every weight; see docs/cohorts.md).
    """
    import time

    import numpy as np
    import torch

    from recon.io import read_study, write_result
    from recon.nerf.checkpoint import LAST_CHECKPOINT
    from recon.nerf.config import TrainConfig
    from recon.nerf.export import to_result
    from recon.nerf.field import EmissionField
    from recon.nerf.training import TrainingDiverged, TrainingInterrupted, fit

    check_output(output, force)
    torch_device = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    base = TrainConfig.gpu_default() if device is DeviceChoice.CUDA else TrainConfig.cpu_default()
    config = base if config_file is None else TrainConfig.from_toml(config_file, base)
    changes: dict[str, Any] = train_overrides(steps, rays_per_step, samples, seed)
    if deterministic:
        changes["deterministic"] = True
    if encoding is not None:
        changes["field"] = dataclasses.replace(config.field, encoding=encoding.value)
    config = dataclasses.replace(config, **changes)
    if resume is not None and not resume.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    if fine_tune and prior is None:
        raise ValueError("--fine-tune needs --prior MODEL (a model from spect train-cohort)")
    if prior is not None and encoding is not None:
        raise ValueError("--encoding cannot be changed with --prior: the model fixes it")

    folder = out_dir if out_dir is not None else output.with_name(output.stem + "_nerf")
    names = (LAST_CHECKPOINT, "log.csv")
    if prior is not None:  # a fit with a cohort prior keeps each phase in a sub-folder
        names = (f"fine-tune/{LAST_CHECKPOINT}", f"code/{LAST_CHECKPOINT}")
    previous = [n for n in names if (folder / n).exists()]
    if previous and resume is None and not force:
        last = folder / (previous[0] if prior is not None else LAST_CHECKPOINT)
        raise FileExistsError(
            f"{folder}: holds a previous run ({', '.join(previous)}); use --resume "
            f"{last} to continue it or --force to start over"
        )
    study = read_study(study_file)
    field = EmissionField(study.grid, config.field)

    start = time.perf_counter()
    with iteration_progress(config.steps, "NeRF", fields={"loss": "–", "PSNR": "–"}) as update:
        callback = loss_psnr_callback(update, "val_psnr")

        try:
            if prior is not None:
                from recon.cohort.prior import fit_with_prior

                trained = fit_with_prior(
                    study, prior, fine_tune, config, out_dir=folder, resume=resume,
                    callback=callback, device=torch_device,
                )  # fmt: skip
            else:
                trained = fit(
                    field, study, config, out_dir=folder, resume=resume, callback=callback,
                    device=torch_device,
                )  # fmt: skip
        except TrainingInterrupted as stop:
            where = (
                f"; continue with --resume {stop.checkpoint.parent / LAST_CHECKPOINT}"
                if stop.checkpoint is not None
                else ""
            )
            typer.echo(f"Interrupted after step {stop.step}{where}", err=True)
            raise typer.Exit(130) from None
        except TrainingDiverged as error:
            raise ValueError(str(error)) from None

    result = to_result(
        trained,
        study,
        study_file=study_file,
        extra_parameters={
            "study_file": str(study_file),
            "out_dir": str(folder),
            **({"prior": trained.prior} if prior is not None else {}),
        },
    )
    with status(f"Writing {output}..."):
        write_result(output, result, overwrite=force)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NeRF of {study_file}", show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value")
    enc = trained.config.field.encoding
    table.add_row("field", f"{enc}, latent {trained.config.field.latent_dim}")
    if prior is not None:
        p = trained.prior
        table.add_row(
            "prior", f"{prior}: code {p['code_steps']} steps, fine-tune {p['fine_tune_steps']}"
        )
    table.add_row("steps", f"{trained.steps_done} × {config.rays_per_step} rays")
    physics = "study μ" if study.mu_per_mm is not None else "no μ (no attenuation)"
    physics += ", background" if study.background is not None else ", no background"
    if study.acquisition.collimator:
        physics += f", {study.acquisition.collimator} blur not modelled"
    table.add_row("model", physics)
    table.add_row("time", f"{time.perf_counter() - start:.1f} s on {trained.device}")
    if trained.losses:
        table.add_row("loss", f"{trained.losses[0]:.4g} (step 1) → {trained.losses[-1]:.4g}")
    if trained.val_psnr == trained.val_psnr:
        table.add_row(
            "validation",
            f"PSNR {trained.val_psnr:.2f} dB, deviance {trained.val_deviance:.3g} per pixel",
        )
    if study.activity_unit == "Bq/mL":
        voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
        total = float(result.activity.sum(dtype=np.float64)) * voxel_ml * 1e-6
        table.add_row("total activity", f"{total:.6g} MBq")
    table.add_row("outputs", f"{folder} (logs, previews, checkpoints)")
    console = Console()
    console.print(table)
    console.print(f"wrote {output}", highlight=False, markup=False)


app.command("nerf", help=help_text(nerf))(nerf)

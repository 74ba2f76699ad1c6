"""``spect recon mlem`` and ``spect recon nerf``: a study file into a result file.

Each parses its options, calls `recon.reconstruct.reconstruct_mlem` or
`recon.reconstruct.reconstruct_nerf` (the functions `recon.batch` and `recon.demo` call too),
writes the result and prints a summary of it.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.commands import (
    CollimatorOption,
    ForceOption,
    NoCollimatorOption,
    ResultOutput,
    SupportChoice,
    SupportOption,
    check_output,
    help_text,
    print_rows,
    resolve_device,
    study_with_collimator,
    train_overrides,
)
from cli.commands.anatomy import ANATOMY_HELP
from cli.progress import iteration_progress, loss_psnr_callback, status

if TYPE_CHECKING:
    from recon.io import Result

__all__ = ["DeviceChoice", "PriorChoice", "SupportChoice", "app", "mlem", "nerf"]

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
        """The name `recon.algorithms.mlem.EMConfig` takes (``None``, ``"quadratic"``, ...)."""
        return None if self is PriorChoice.NONE else self.value.replace("-", "_")


class DeviceChoice(str, Enum):
    """Where the reconstruction runs."""

    CPU = "cpu"
    CUDA = "cuda"


def mlem(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.h5", help="Study file to reconstruct.")
    ],
    output: ResultOutput,
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
    collimator: CollimatorOption = None,
    no_collimator: NoCollimatorOption = False,
    support: SupportOption = None,
    force: ForceOption = False,
) -> None:
    """Reconstruct a study by MLEM, OSEM (--subsets) or one-step-late MAP-EM (--prior).

    The model is counts ~ Poisson(count_scale · A(activity) + background), with the study's
    geometry, μ, collimator, background (scatter) and count scale, so the result is an
    activity concentration in the study's unit. Voxels outside the support (--support; by
    default the body when the study has μ, a CT or an anatomy) are held at 0. The result file
    records every parameter and the log-likelihood and log-prior of each iteration.
    """
    from recon.algorithms.mlem import EMConfig
    from recon.io import read_study, write_result
    from recon.reconstruct import reconstruct_mlem

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
    torch_device = resolve_device(device.value)
    study = study_with_collimator(read_study(study_file), collimator, no_collimator)
    with iteration_progress(iterations, config.method.upper(), fields={"logL": "–"}) as update:
        result = reconstruct_mlem(
            study,
            config,
            support=None if support is None else support.value,
            attenuation=attenuation,
            collimator=not no_collimator,
            device=torch_device,
            callback=lambda i, _activity, log_l: update(i, logL=f"{log_l:.8g}"),
            study_file=study_file,
        )
    with status(f"Writing {output}..."):
        write_result(output, result, overwrite=force)

    p = result.parameters
    rows = [("iterations × subsets", f"{iterations} × {subsets}")]
    if config.prior is not None:
        rows.append(("prior", f"{prior.value}, β = {beta:g}, γ = {gamma:g}"))
    rows += [
        ("attenuation", str(p["attenuation_note"])),
        ("collimator", str(p["collimator_note"])),
        ("support", str(p["support_note"])),
        ("background", "study background" if p["background"] else "none"),
        ("count scale", f"{study.acquisition.count_scale:.6g}"),
    ]
    rows += _result_rows(result, study, ("log-likelihood", "total activity"))
    if filter_fwhm_mm > 0:
        rows.append(("post-filter", f"Gaussian, FWHM {filter_fwhm_mm:g} mm"))
    print_rows(f"{config.method.upper()} of {study_file}", rows, output)


def _result_rows(result: Result, study: Any, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """The rows ``names`` of `recon.io.summary.result_rows`, in its order."""
    from recon.io.summary import result_rows

    return [(name, value) for name, value in result_rows(result, study) if name in names]


app.command("mlem", help=help_text(mlem))(mlem)


# -- spect recon nerf ----------------------------------------------------------------------------


class EncodingChoice(str, Enum):
    """Input encoding of the emission field."""

    FREQUENCY = "frequency"
    HASHGRID = "hashgrid"


class RepresentationChoice(str, Enum):
    """What the NeRF fits: the emission field, or the field with anatomy features at each point."""

    FIELD = "field"
    ANATOMY_FIELD = "anatomy-field"


def nerf(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.h5", help="Study file to reconstruct.")
    ],
    output: ResultOutput,
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
    collimator: CollimatorOption = None,
    no_collimator: Annotated[
        bool,
        typer.Option(
            "--no-collimator",
            help="Model no collimator blur: random lines per step (default: the blur of the "
            "study's collimator, whole views per step).",
        ),
    ] = False,
    support: SupportOption = None,
    representation: Annotated[
        RepresentationChoice,
        typer.Option(
            "--representation",
            case_sensitive=False,
            help="field: the emission field; anatomy-field: its input also holds the anatomy at "
            "each point (μ, a learned embedding of the segment, the body), so uptake can follow "
            "the organs (needs μ, a CT or an anatomy).",
        ),
    ] = RepresentationChoice.FIELD,
    anatomy_file: Annotated[
        Path | None, typer.Option("--anatomy", metavar="FILE", help=ANATOMY_HELP)
    ] = None,
    force: ForceOption = False,
) -> None:
    """Reconstruct a study with a neural emission field (pieNeRF-style, exact physics).

    The field is fitted to the counts by the Poisson likelihood of count_scale · A(activity) +
    background with the study's μ, its collimator blur (when it names a collimator and has a
    radius; each step then renders whole views, --no-collimator: random lines without blur)
    and one count scale for all views (no per-view normalisation). The activity is zero
    outside the support (--support; by default the body when the study has μ, a CT or an
    anatomy).
    Defaults: a small hash-grid field on --device cpu, pieNeRF's network on --device cuda;
    --config FILE.toml changes any setting (see docs/nerf.md) and the options above override
    both. Logs, previews and checkpoints go to --out-dir; Ctrl-C writes a checkpoint to
    --resume from. --prior MODEL starts from a cohort model's network and fits only this
    study's latent code (--fine-tune: then every weight; see docs/cohorts.md).
    --representation anatomy-field feeds the study's anatomy (or --anatomy FILE) to the field.
    """
    import torch

    from recon.io import read_study, signals, write_result
    from recon.nerf.checkpoint import LAST_CHECKPOINT
    from recon.nerf.config import TrainConfig
    from recon.nerf.training import TrainingDiverged, TrainingInterrupted
    from recon.reconstruct import check_nerf_folder, reconstruct_nerf

    check_output(output, force)
    torch_device = resolve_device(device.value)
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
    if prior is not None and encoding is not None:
        raise ValueError("--encoding cannot be changed with --prior: the model fixes it")
    folder = out_dir if out_dir is not None else output.with_name(output.stem + "_nerf")
    check_nerf_folder(folder, with_prior=prior is not None, resume=resume, overwrite=force)
    study = study_with_collimator(read_study(study_file), collimator, no_collimator)
    if anatomy_file is not None:
        from cli.commands.anatomy import load_study_anatomy

        study = dataclasses.replace(study, anatomy=load_study_anatomy(study, anatomy_file))

    with iteration_progress(config.steps, "NeRF", fields={"loss": "–", "PSNR": "–"}) as update:
        try:
            result = reconstruct_nerf(
                study, config, representation=representation.value,
                support=None if support is None else support.value, collimator=not no_collimator,
                out_dir=folder, resume=resume, prior=prior, fine_tune=fine_tune,
                device=torch_device, callback=loss_psnr_callback(update, "val_psnr"),
                study_file=study_file,
            )  # fmt: skip
        except TrainingInterrupted as stop:
            where = (
                f"; continue with --resume {stop.checkpoint.parent / LAST_CHECKPOINT}"
                if stop.checkpoint is not None
                else ""
            )
            typer.echo(f"Interrupted after step {stop.step}{where}", err=True)
            raise typer.Exit(signals.exit_code(stop)) from None
        except TrainingDiverged as error:
            raise ValueError(str(error)) from None
    with status(f"Writing {output}..."):
        write_result(output, result, overwrite=force)

    p: dict[str, Any] = dict(result.parameters)
    field = p["config"]["field"]
    rows = [("field", f"{field['encoding']}, latent {field['latent_dim']}")]
    if prior is not None:
        rows.append(
            (
                "prior",
                f"{prior}: code {p['prior']['code_steps']} steps, "
                f"fine-tune {p['prior']['fine_tune_steps']}",
            )
        )
    per_step = "whole views" if p["render"] == "views" else f"{config.rays_per_step} rays"
    physics = "study μ" if study.mu_per_mm is not None else "no μ (no attenuation)"
    physics += ", background" if study.background is not None else ", no background"
    done = f"{p['steps_done']} × {per_step}"
    if p["config"].get("select") == "best_holdout":
        done += f"; kept the state of step {p['selected_step']} (lowest held-out deviance)"
    rows += [
        ("steps", done),
        ("model", physics),
        ("collimator", str(p["collimator"])),
        ("support", str(p["support_note"])),
        ("time", f"{p['elapsed_s']:.1f} s on {p['device']}"),
    ]
    rows += _result_rows(result, None, ("loss",))
    if p["val_psnr_db"] is not None and p["val_psnr_db"] == p["val_psnr_db"]:
        rows.append(
            (
                "validation",
                f"PSNR {p['val_psnr_db']:.2f} dB, deviance {p['val_deviance']:.3g} per pixel",
            )
        )
    rows += _result_rows(result, None, ("total activity",))
    rows.append(("outputs", f"{folder} (logs, previews, checkpoints)"))
    print_rows(f"NeRF of {study_file}", rows, output)


app.command("nerf", help=help_text(nerf))(nerf)

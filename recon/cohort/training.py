"""`train_cohort`: train a shared emission network and one latent code per study on a cohort.

**Model and loss.** `recon.cohort.model.CohortModel`: the activity of training study ``s`` is
``level_s · softplus(MLP([enc(p̂), z_s]))`` (with ``anatomy`` the network also takes the study's
anatomy features; with ``organ_code`` the activity is its organ fit's compartments at trainable
log-concentrations, modulated by the network, plus a residual). Each step draws a global
minibatch of ``config.train.rays_per_step`` samples; a sample is one detector line of one
study (uniform over the training studies, then uniform over that study's training lines; with
AP/PA a line is rendered in both views from the same field samples, `recon.nerf.rays.RayData`).
The loss of a step is the mean over the global batch of the single-study loss of
`recon.nerf.training.fit` (the same terms, `recon.training.terms`):

    ℓ(sample) = (poisson_nll − poisson_nll_saturated) / count_level_s        (per pixel mean)
              + latent_l2 · ‖z_s‖² + tv_ray · TV_ray / level_s + …,

so a one-study cohort trains like `fit`. Each sample also draws, when their weights are > 0, one
point pair in its study's grid for ``tv_3d`` and ``ct_smoothness`` and one random voxel for
``l1_activity`` (``|e_s − a_s| / level_s`` against the study's ``truth_activity``: 3D
supervision of the *cohort*, e.g. phantoms or SPECT/CT-derived activity; a new study
reconstructed with the model as a prior still uses only its own projections).

**Data parallelism.** Under ``torchrun`` every process (rank r of W) holds a full replica of the
model (codes included, see `recon.cohort.model`) wrapped in
`torch.nn.parallel.DistributedDataParallel`. The global batch of step t is a deterministic
function of ``(seed, t)`` alone: the samples are drawn with a generator seeded from both, sorted
by study, and rank r takes the contiguous slice ``[r·B/W, (r+1)·B/W)``. Ray jitter is drawn per
(step, study, ray group) from its own seeded generator, advanced past the samples that earlier
ranks take, so every sample gets the same jitter whatever W is. Each rank's loss is the mean over
its slice, DDP averages the gradients, hence **W processes with B/W samples each take the same
optimiser steps as one process with B samples**, up to the order of floating-point sums. That is
also why a run may be resumed with a different number of processes. ``rays_per_step`` must be a
multiple of W.

**Validation.** Every ``val_every`` steps and at the end: the mean Poisson deviance and PSNR of
held-out pixels of (up to ``val_train_studies``) training studies, and, for each held-out study
of the manifest, a code fit of ``val_steps`` steps with the network frozen
(`recon.cohort.prior`), its held-out-pixel deviance and PSNR and, where the study has a truth
and labels, its mean absolute organ-activity error. Validation studies are shared out over the
ranks and the results gathered.

**The loop** is `recon.training.loop.Trainer` (this module is its cohort objective): AMP,
gradient clipping, the NaN/Inf guard, logs, checkpoints and stopping work as in `fit`.

**Outputs (rank 0 only)** in ``out_dir``: ``log.csv``/``log.json`` (`COHORT_LOG_COLUMNS`),
``checkpoint-XXXXXX.pt`` and ``checkpoint-last.pt`` (weights-only checkpoints,
`recon.nerf.checkpoint`, ``kind = "cohort-checkpoint"``: the model with every code, the
optimiser, the history, the study ids and data digests); ``model_path``: the trained model
(``kind = "cohort-model"``, no optimiser state), the input of `recon.cohort.prior.fit_with_prior`.

**Interruption.** SIGINT or SIGTERM (Ctrl-C, ``scancel``, a pre-emption), or `request_stop`, in
any rank: all ranks agree at the end of the step in progress (the request travels with the
step's loss all-reduce), rank 0 writes a checkpoint of that step and every rank raises
`recon.training.TrainingInterrupted`. Resuming from it continues exactly. A second signal
interrupts at once (no checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recon.cohort.distributed import (
    BACKENDS,
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    distributed_session,
)
from recon.cohort.manifest import Manifest, read_manifest
from recon.cohort.model import (
    COHORT_CHECKPOINT_KIND,
    COHORT_MODEL_KIND,
    CohortModel,
    cohort_frame,
)
from recon.cohort.prior import organ_activity_error
from recon.cohort.store import StudyStore, read_entry
from recon.nerf.anatomy_field import AnatomyFeatureConfig
from recon.nerf.checkpoint import LAST_CHECKPOINT, grid_to_dict, load_checkpoint
from recon.nerf.config import REGULARISERS, TrainConfig
from recon.nerf.export import sample_on_grid
from recon.nerf.organ_field import NORMALISE_SAMPLE, OrganCodeConfig
from recon.nerf.training import fit
from recon.training import runtime, terms
from recon.training.loop import Trainer, require_same
from recon.training.runtime import request_stop

__all__ = [
    "COHORT_LOG_COLUMNS",
    "CohortCallback",
    "CohortConfig",
    "CohortResult",
    "global_batch",
    "request_stop",
    "train_cohort",
]

#: The logged parts of a step's loss: ``data`` (the Poisson term) and the unweighted
#: regularisers (`recon.nerf.config.REGULARISERS`).
TERMS = ("data", *REGULARISERS)

#: Columns of ``log.csv`` / ``log.json``: ``TERMS``, ``model_prior`` (the model's ``penalty()``,
#: if it has one); ``train_val_*``: held-out pixels of training studies; ``heldout_*``: held-out
#: studies after a code fit; ``samples_per_s``: lines per second since the previous row (all
#: ranks together).
COHORT_LOG_COLUMNS = (
    "step", "loss", *TERMS, "model_prior", "lr",
    "train_val_deviance", "train_val_psnr",
    "heldout_deviance", "heldout_psnr", "heldout_organ_error",
    "samples_per_s", "time_s",
)  # fmt: skip

#: ``callback(step, total_steps, metrics)`` after every step on every rank; ``metrics``: ``loss``
#: (global mean), ``lr``, ``rank``, ``world_size``, the loss's parts and the latest
#: ``heldout_psnr`` and ``train_val_psnr`` (NaN before the first validation).
CohortCallback = Callable[[int, int, Mapping[str, float]], None]

#: Seed offset of the initial codes' generator.
CODE_SEED_OFFSET = 2


@dataclass(frozen=True)
class CohortConfig:
    """Settings of a cohort training run.

    Parameters
    ----------
    train:
        Schedule, optimiser, regularisers and architecture (`recon.nerf.config.TrainConfig`;
        default `TrainConfig.cpu_default`). ``rays_per_step`` is the **global** batch (all
        ranks together), ``val_every``/``log_every``/``checkpoint_every`` apply as in `fit`, as
        do ``amp``/``cpu_bf16`` and every regulariser (``l1_activity`` needs every training
        study's ``truth_activity``); ``optimizer`` must be ``adam`` (each step draws a new
        batch, which L-BFGS's line search cannot follow); ``preview_every`` is ignored.
    code_lr:
        Learning rate of the codes (default: ``train.lr``), scaled by the same schedule.
    code_init_std:
        Codes start as N(0, code_init_std²).
    val_fraction:
        Held-out share of the studies when the manifest marks none ``val``.
    val_steps:
        Code-fit steps per held-out study at each validation.
    val_train_studies:
        Training studies whose held-out pixels are validated (the first ones of the manifest).
    backend:
        ``"auto"`` (``nccl`` on CUDA, ``gloo`` on CPU), ``"gloo"`` or ``"nccl"``.
    device:
        ``"auto"`` (``cuda:<LOCAL_RANK>`` if CUDA is available, else ``cpu``), ``"cpu"`` or
        ``"cuda"``.
    cache_studies:
        0: every rank holds every training study's data (counts, μ, projector) in memory; ``k``:
        at most ``k`` at once, read from their files when a step needs them
        (`recon.cohort.store.StudyStore`, for cohorts larger than memory). The model does not
        depend on it.
    studies_per_step:
        0: each sample of a step is drawn from all training studies; ``k``: from ``k`` studies
        drawn for every group of ``group_steps`` steps (so a lazy store of ``k`` studies reads
        ``k`` files per group, not per step). Changes the batches, hence the model.
    group_steps:
        Steps that share the same ``studies_per_step`` studies.
    anatomy:
        Anatomy-conditioned cohort: the shared network also takes each study's anatomy
        features (μ/μ_water, a shared segment embedding, the body indicator;
        `recon.cohort.model`); every training study needs a μ map or CT, and an anatomy. The
        vocabulary is the union of the training studies' segment names.
    anatomy_embedding_dim:
        Size of the shared segment embedding.
    organ_code:
        Organ-anchored cohort (needs ``anatomy``): part of each study's code is the
        log-concentrations of its compartments (segments and background), initialised from the
        study's organ fit (QPlanar, `recon.anatomy`) and trained with the network and the
        latent code, which only modulates them and adds a residual (`recon.cohort.model`).
    organ_bound:
        ``B`` of the organ code: the network modulates each organ's concentration within
        ``[e^−B, e^B]`` (>= 0).
    organ_residual:
        With ``organ_code``: add the non-negative residual head (activity the compartments do not
        hold, e.g. lesions).
    organ_anchor:
        With ``organ_code``: what each study's code is anchored on,
        ``"organs"`` (its organ fit, QPlanar) or ``"residual"`` (its organs + residual fit:
        refined compartments and residual sources, each source a component of the code;
        `recon.nerf.organ_field.study_anchor`).
    organ_normalise:
        With ``organ_code``: divide the modulation by its anchor-weighted mean over each
        component, so the network only redistributes activity within a component and the
        components' totals are the code's (`recon.nerf.organ_field.anchor_log_concentration`).
    organ_normalise_sample:
        With ``organ_normalise``: estimate each component's mean modulation on a fixed, seeded
        subsample of at most this many of its voxels (`recon.nerf.organ_field.OrganCodeConfig`
        ``normalise_sample``), or ``None``: on all of them (exact, one network pass over the
        whole anatomy per study and step).
    """

    train: TrainConfig = field(default_factory=TrainConfig.cpu_default)
    code_lr: float | None = None
    code_init_std: float = 0.01
    val_fraction: float = 0.0
    val_steps: int = 100
    val_train_studies: int = 8
    backend: str = "auto"
    device: str = "auto"
    cache_studies: int = 0
    studies_per_step: int = 0
    group_steps: int = 1
    anatomy: bool = False
    anatomy_embedding_dim: int = 8
    organ_code: bool = False
    organ_bound: float = 0.7
    organ_residual: bool = True
    organ_anchor: str = "organs"
    organ_normalise: bool = False
    organ_normalise_sample: int | None = NORMALISE_SAMPLE

    def __post_init__(self) -> None:
        t = self.train
        if not isinstance(t, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(t).__name__}")
        if t.optimizer != "adam":
            raise ValueError(
                f"cohort training uses the adam optimizer (train.optimizer), got {t.optimizer!r}: "
                "every step draws a new batch, which L-BFGS's line search cannot follow"
            )
        if t.select != "last":
            raise ValueError(
                "cohort training keeps its last state: train.select must be 'last', got "
                f"{t.select!r} (held-out selection is for single-study and prior fits)"
            )
        if t.field.latent_dim < 1:
            raise ValueError("cohort training needs latent codes: field latent_dim must be >= 1")
        if self.code_lr is not None and not (math.isfinite(self.code_lr) and self.code_lr > 0):
            raise ValueError(f"code_lr must be > 0 (or None), got {self.code_lr!r}")
        if not (math.isfinite(self.code_init_std) and self.code_init_std >= 0):
            raise ValueError(f"code_init_std must be >= 0, got {self.code_init_std!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("val_steps", "val_train_studies", "cache_studies", "studies_per_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("group_steps", "anatomy_embedding_dim"):
            g = getattr(self, name)
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {g!r}")
        for name in ("anatomy", "organ_code", "organ_residual", "organ_normalise"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.organ_code and not self.anatomy:
            raise ValueError(
                "organ_code needs anatomy=True: the organ code is anchored on each study's "
                "segmentation, which the network also takes as input"
            )
        self._organ_config()  # checks them
        if not self.organ_code and (self.organ_anchor != "organs" or self.organ_normalise):
            raise ValueError(
                "organ_anchor and organ_normalise set how an organ code works: they need "
                f"organ_code=True (got organ_anchor={self.organ_anchor!r}, "
                f"organ_normalise={self.organ_normalise})"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``train`` as `TrainConfig.to_dict`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["train"] = self.train.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CohortConfig:
        """Undo `to_dict` (e.g. the ``config`` of a cohort model file or checkpoint).

        Raises
        ------
        ValueError
            Unknown keys or bad values.
        """
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown cohort setting(s) {unknown}; valid: {sorted(valid)}")
        changes = dict(values)
        if "train" in changes and not isinstance(changes["train"], TrainConfig):
            changes["train"] = TrainConfig.from_dict(changes["train"])
        return cls(**changes)

    @property
    def organ(self) -> OrganCodeConfig | None:
        """The organ code's settings (``None`` without ``organ_code``)."""
        if not self.organ_code:
            return None
        return self._organ_config()

    def _organ_config(self) -> OrganCodeConfig:
        return OrganCodeConfig(
            bound=self.organ_bound, residual=self.organ_residual, anchor=self.organ_anchor,
            normalise=self.organ_normalise, normalise_sample=self.organ_normalise_sample,
        )  # fmt: skip


@dataclass
class CohortResult:
    """What `train_cohort` returns (on every rank).

    Attributes
    ----------
    model:
        The trained `CohortModel` (on the training device; identical on every rank).
    config:
        The settings used.
    train_ids, val_ids:
        Study ids, training (code order) and held out.
    history:
        Logged rows (`COHORT_LOG_COLUMNS`; NaN where not computed).
    losses:
        Global mean loss of every step, from step 1 (also across a resume).
    steps_done:
        Optimiser steps completed.
    samples_per_s:
        Lines per second over this run's steps (all ranks together; NaN without steps).
    elapsed_s:
        Training time (s), including time before a resume.
    heldout:
        Last validation of each held-out study: ``{"id", "deviance", "psnr", "organ_error"}``.
    checkpoint, model_path, out_dir:
        The last checkpoint and the model file written (by rank 0), the output folder.
    rank, world_size, device:
        Where this copy ran.
    amp:
        The mixed precision used (`recon.training.runtime.amp_mode`).
    max_studies_held, study_reads:
        On this rank: the most training studies whose data were in memory at once, and the
        study files read again after the first pass (`recon.cohort.store.StudyStore`).
    """

    model: CohortModel
    config: CohortConfig
    train_ids: list[str]
    val_ids: list[str]
    history: list[dict[str, float]]
    losses: list[float]
    steps_done: int
    samples_per_s: float
    elapsed_s: float
    heldout: list[dict[str, Any]]
    checkpoint: Path | None
    model_path: Path | None
    out_dir: Path | None
    rank: int
    world_size: int
    device: str
    amp: str = "off"
    max_studies_held: int = 0
    study_reads: int = 0


def train_cohort(
    manifest: Manifest | str | os.PathLike[str],
    config: CohortConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    *,
    model_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    callback: CohortCallback | None = None,
) -> CohortResult:
    """Train a cohort model; one process, or every rank of a ``torchrun`` job.

    Parameters
    ----------
    manifest:
        A `Manifest`, or a CSV file / folder of study files (`recon.cohort.manifest`).
    config:
        Settings (default ``CohortConfig()``).
    out_dir:
        Folder for logs and checkpoints (created by rank 0); ``None``: none written.
    resume:
        A cohort checkpoint to continue from (same studies, seed, holdout fraction, global
        batch and architecture; any number of processes).
    model_path:
        Where rank 0 writes the trained model at the end (``None``: not written).
    overwrite:
        Replace an existing ``model_path`` and start afresh in an ``out_dir`` that holds a
        previous run; otherwise both are refused before training.
    callback:
        `CohortCallback` after every step, on every rank.

    Returns
    -------
    CohortResult

    Raises
    ------
    TrainingInterrupted
        Stopped by a signal or `request_stop` (rank 0 wrote a checkpoint first, with
        ``out_dir``).
    TrainingDiverged
        The gradients became NaN/Inf (the last good checkpoint is kept).
    ValueError, FileNotFoundError, FileExistsError
        Bad settings or manifest, a broken study file (the message names it), a checkpoint that
        does not match, outputs in the way. Raised on every rank alike.
    """
    config = CohortConfig() if config is None else config
    if not isinstance(config, CohortConfig):
        raise TypeError(f"config must be a CohortConfig, got {type(config).__name__}")
    seed = config.train.seed
    if isinstance(manifest, Manifest):
        if not manifest.val and config.val_fraction > 0:
            manifest = manifest.with_val_fraction(config.val_fraction, seed)
    else:
        manifest = read_manifest(manifest, val_fraction=config.val_fraction, seed=seed)
    if not manifest.train:
        raise ValueError("the manifest has no training study")
    out = None if out_dir is None else Path(out_dir)
    model_file = None if model_path is None else Path(model_path)
    fresh = out if resume is None and not overwrite else None
    with distributed_session(config.backend, config.device) as info:
        _agree(info, lambda: _check_outputs(model_file, overwrite, fresh))
        objective = _CohortObjective(manifest, config, info)
        trainer = Trainer(objective, config.train, objective.optimizer, info.device, out, info)
        if resume is not None:
            path = Path(resume)
            payload = _agree(info, lambda: objective.check_resume(load_checkpoint(path), path))
            trainer.restore(payload)
            objective.restore(payload)
        trainer.run(callback)
        if model_file is not None:
            model = {**trainer.payload(with_optimizer=False), "kind": COHORT_MODEL_KIND}
            trainer.save(model, model_file)
        barrier(info)
        t = config.train
        n, run_time = trainer.steps_run, trainer.run_time_s
        return CohortResult(
            model=objective.model,
            config=config,
            train_ids=[e.study_id for e in manifest.train],
            val_ids=[e.study_id for e in manifest.val],
            history=trainer.history,
            losses=trainer.losses,
            steps_done=trainer.step,
            samples_per_s=n * t.rays_per_step / run_time if n and run_time > 0 else math.nan,
            elapsed_s=trainer.elapsed_before + run_time,
            heldout=objective.heldout,
            checkpoint=trainer.checkpoint,
            model_path=model_file,
            out_dir=out,
            rank=info.rank,
            world_size=info.world_size,
            device=str(info.device),
            amp=trainer.amp,
            max_studies_held=objective.store.max_held,
            study_reads=objective.store.loads,
        )


def _check_outputs(model_path: Path | None, overwrite: bool, fresh: Path | None) -> None:
    """Refuse a model file in the way, or (``fresh``) an output folder with a previous run."""
    if model_path is not None:
        if model_path.is_dir():
            raise IsADirectoryError(f"{model_path}: is a folder, not a file")
        if not overwrite and model_path.exists():
            raise FileExistsError(
                f"{model_path}: already exists; use --force (overwrite=True) to replace it"
            )
        if not model_path.parent.is_dir():
            raise FileNotFoundError(f"{model_path}: folder {model_path.parent} does not exist")
    if fresh is not None:
        previous = [n for n in (LAST_CHECKPOINT, "log.csv") if (fresh / n).exists()]
        if previous:
            raise FileExistsError(
                f"{fresh}: holds a previous run ({', '.join(previous)}); resume from "
                f"{fresh / LAST_CHECKPOINT} or use --force (overwrite=True) to start over"
            )


def _mix(*values: object) -> int:
    """A 63-bit seed from any values (stable across processes and runs)."""
    text = "/".join(str(v) for v in values).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def global_batch(
    seed: int,
    step: int,
    batch: int,
    n_lines: torch.Tensor,
    *,
    studies_per_step: int = 0,
    group_steps: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of step ``step`` (1-based), the same on every rank and for any world size.

    Parameters
    ----------
    seed:
        The training seed.
    step:
        The step.
    batch:
        The global batch size B.
    n_lines:
        ``[S]`` number of training lines of each training study.
    studies_per_step:
        0: the studies are uniform over all; ``k``: uniform over ``k`` studies drawn (without
        replacement, from ``(seed, group)``) for the group ``(step − 1) // group_steps``.
    group_steps:
        Steps per group.

    Returns
    -------
    tuple of torch.Tensor
        ``(study [B], position [B])``: the study of each sample (uniform over the studies) and
        the position of its line among that study's training lines (uniform), sorted by study
        (stable, so the order of draws is kept within a study). Rank r of W takes
        ``[r·B/W, (r+1)·B/W)``.
    """
    g = torch.Generator().manual_seed(_mix("cohort-batch", seed, step))
    n_studies = len(n_lines)
    if 0 < studies_per_step < n_studies:
        group = (step - 1) // max(1, group_steps)
        pick = torch.Generator().manual_seed(_mix("cohort-group", seed, group))
        chosen = torch.randperm(n_studies, generator=pick)[:studies_per_step]
        studies = chosen[torch.randint(studies_per_step, (batch,), generator=g)]
    else:
        studies = torch.randint(n_studies, (batch,), generator=g)
    u = torch.rand(batch, generator=g, dtype=torch.float64)
    order = torch.argsort(studies, stable=True)
    studies, u = studies[order], u[order]
    n = n_lines[studies]
    positions = torch.minimum((u * n).long(), n - 1)
    return studies, positions


@dataclass(frozen=True)
class _Batch:
    """A rank's slice of a step's global batch (CPU tensors)."""

    step: int
    studies: torch.Tensor  # [b] study index
    lines: torch.Tensor  # [b] line index into that study's lines
    keys: torch.Tensor  # [b] ray-group key (paired, samples per ray) as one integer
    jitter_offset: torch.Tensor  # [b] position among the global batch's (study, key) samples
    voxels: torch.Tensor  # [b] flat voxel index of each sample's supervision point ([0] if none)
    pair_u: torch.Tensor  # [b, 3] uniform position of each sample's tv_3d pair ([0, 3] if none)
    pair_d: torch.Tensor  # [b, 3] unit direction of that pair


class _StepModule(nn.Module):
    """The loss of a rank's slice of a step, as one module call (what DDP wraps)."""

    def __init__(self, objective: _CohortObjective) -> None:
        super().__init__()
        self.model = objective.model
        self.objective = [objective]  # not a submodule

    def forward(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        obj = self.objective[0]
        c = obj.train_cfg
        dev = self.model.codes.weight.device
        sums = dict.fromkeys(TERMS, torch.zeros((), device=dev))
        for s in torch.unique(batch.studies).tolist():
            in_s = batch.studies == s
            n_s, level = int(in_s.sum()), obj.levels[s]
            code = self.model.code(s)
            loaded = obj.store[s]
            log_c = None
            if self.model.organ_codes is not None:  # once per study and step (normalise)
                assert loaded.features is not None and loaded.anchor is not None
                log_c = self.model.anchor_log_concentration(
                    code, loaded.features, loaded.anchor, self.model.log_concentration(s)
                )

            def field(
                points: torch.Tensor,
                code: torch.Tensor = code,
                level: float = level,
                loaded: Any = loaded,
                log_c: torch.Tensor | None = log_c,
            ) -> torch.Tensor:
                return self.model.activity(
                    points, code, level, loaded.features, loaded.anchor, log_c, normalised=True
                )

            render = self._views if obj.views[s] else self._lines
            data_sum, samples = render(obj, batch, s, in_s, field)
            sums["data"] = sums["data"] + data_sum
            pairs = supervision = None
            grid = loaded.data.geometry.grid
            if len(batch.pair_u):
                offset = c.reg_offset_mm or float(min(grid.spacing_mm))
                u, d = batch.pair_u[in_s], batch.pair_d[in_s]
                pairs = terms.pairs_in_grid(grid, u, d, offset, dev)
            if c.l1_activity > 0:
                index = batch.voxels[in_s].to(dev)
                truth = loaded.truth
                assert truth is not None  # the store holds a truth whenever l1_activity > 0
                supervision = (runtime.voxel_points(grid, index), truth[index])
            regs = terms.field_regularisers(
                field, c, level, latent=code, ray_samples=samples, pairs=pairs,
                mu_at=loaded.data.mu_at, supervision=supervision, autocast=obj.autocast,
            )  # fmt: skip
            for name, value in regs.items():
                sums[name] = sums[name] + n_s * value
        n_local = len(batch.studies)
        loss = sums["data"] + sum(getattr(c, name) * sums[name] for name in REGULARISERS)
        parts = torch.stack([sums[name] for name in TERMS]).detach() / n_local
        return loss / n_local, parts

    @staticmethod
    def _lines(
        obj: _CohortObjective, batch: _Batch, s: int, in_s: torch.Tensor, field: Any
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Σ over study ``s``'s samples of the data term of its lines, and their ray samples."""
        c, data = obj.train_cfg, obj.store[s].data
        total, samples = torch.zeros(()), list[torch.Tensor]()
        for key in torch.unique(batch.keys[in_s]).tolist():  # one group per ray kind
            sel = in_s & (batch.keys == key)
            generator = None
            if c.jitter:
                seed = _mix("cohort-jitter", c.seed, batch.step, s, key)
                generator = torch.Generator().manual_seed(seed)
                skip = int(batch.jitter_offset[sel][0])
                if skip:  # the draws of the same rays' samples on lower ranks
                    torch.rand(skip, 1, generator=generator, dtype=torch.float64)
            with obj.autocast():
                rendered = data.render_lines(
                    field, batch.lines[sel], n_samples=c.n_samples, jitter=c.jitter,
                    generator=generator, record=c.tv_ray > 0,
                )  # fmt: skip
            expected, counts = rendered.expected.float(), rendered.counts.float()
            term, _ = terms.data_term(expected, counts, obj.count_levels[s])
            total = total.to(term.device) + int(sel.sum()) * term
            samples.extend(rendered.samples)
        return total, tuple(samples)

    @staticmethod
    def _views(
        obj: _CohortObjective, batch: _Batch, s: int, in_s: torch.Tensor, field: Any
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Study ``s``'s whole-view data term (with its collimator blur) times its samples: the
        same on every rank that holds some of them, so any split sums to the same gradient."""
        c, data = obj.train_cfg, obj.store[s].data
        generator = None
        if c.jitter:
            generator = torch.Generator().manual_seed(_mix("cohort-views", c.seed, batch.step, s))
        target = field if obj.amp == "off" else runtime.AutocastField(field, obj.autocast)
        rendered = data.render_views(
            target, c.n_samples, jitter=c.jitter, generator=generator, record=c.tv_ray > 0
        )
        term, _ = terms.data_term(rendered.expected, rendered.counts, obj.count_levels[s])
        return int(in_s.sum()) * term, rendered.samples


class _CohortObjective:
    """The `recon.training.loop.Objective` of a cohort on one rank (`train_cohort`)."""

    def __init__(self, manifest: Manifest, config: CohortConfig, info: DistInfo) -> None:
        self.manifest, self.config, self.info = manifest, config, info
        t = config.train
        self.train_cfg = t
        self.dev = info.device
        if t.rays_per_step % info.world_size:
            raise ValueError(
                f"rays_per_step {t.rays_per_step} (the global batch) must be a multiple of the "
                f"number of processes {info.world_size}"
            )
        self.amp = runtime.amp_mode(t, self.dev)
        self.columns = COHORT_LOG_COLUMNS
        self.latest = {"train_val_psnr": math.nan, "heldout_psnr": math.nan}
        self.heldout: list[dict[str, Any]] = []
        self.train_entries, self.val_entries = manifest.train, manifest.val
        failure: BaseException | None = None
        try:
            self._load_studies()
        except (ValueError, OSError) as error:  # e.g. a file missing on one machine only
            failure = error
        errors = all_gather_objects(info, None if failure is None else f"{failure}")
        if failure is not None:
            raise failure
        for rank, message in enumerate(errors):
            if message is not None:  # every rank stops, not only the one that failed
                raise ValueError(f"rank {rank}: {message}")
        torch.manual_seed(t.seed)
        self._init_model()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return runtime.autocast(self.amp, self.dev)

    def _load_studies(self) -> None:
        """Read the studies (`recon.cohort.store.StudyStore`): each training study's lines,
        levels and digest stay in memory, its data too unless ``cache_studies`` is set; the
        held-out studies are read for their grids only (and again when validated)."""
        c = self.config
        anatomy = AnatomyFeatureConfig(embedding_dim=c.anatomy_embedding_dim) if c.anatomy else None
        self.store = StudyStore(
            self.train_entries, self.train_cfg, self.dev, c.cache_studies, anatomy=anatomy,
            organ_code=c.organ_code, organ_anchor=c.organ_anchor,
        )  # fmt: skip
        infos = self.store.infos
        self.levels = [i.level for i in infos]
        self.count_levels = [i.count_level for i in infos]
        self.digests = [i.digest for i in infos]
        self.views = [i.views for i in infos]  # whole views with the collimator blur, else lines
        self.notes = [i.note for i in infos]
        val_grids = [read_entry(e).grid for e in self.val_entries]
        self.grids = [i.grid for i in infos] + val_grids
        self.n_lines = torch.tensor([len(i.train_lines) for i in infos])

    def _init_model(self) -> None:
        config, info, t = self.config, self.info, self.train_cfg
        codes_rng = torch.Generator().manual_seed(t.seed + CODE_SEED_OFFSET)
        infos = self.store.infos
        self.model = CohortModel(
            cohort_frame(self.grids), t.field, len(self.store),
            code_init_std=config.code_init_std, generator=codes_rng, anatomy=self.store.anatomy,
            organ_code=config.organ,
            organ_compartments=[i.compartments for i in infos] if config.organ_code else (),
        ).to(self.dev)  # fmt: skip
        if self.model.organ_codes is not None:  # each study's organ fit (QPlanar)
            with torch.no_grad():
                for s, info_s in enumerate(infos):
                    start = torch.as_tensor(info_s.organ_start, dtype=torch.float32)
                    self.model.organ_codes[s, : len(start)] = start.to(self.dev)
        self.representation = self.model
        step_module = _StepModule(self)
        if info.distributed:
            ids = [self.dev.index] if self.dev.type == "cuda" else None
            self.step_module: nn.Module = DistributedDataParallel(
                step_module, device_ids=ids, **_no_buffer_sync()
            )
        else:
            self.step_module = step_module
        codes = [self.model.codes.weight]
        if self.model.organ_codes is not None:
            codes.append(self.model.organ_codes)
        per_study = {"codes.weight", "organ_codes"}
        network = [
            p for n, p in self.model.named_parameters() if p.requires_grad and n not in per_study
        ]
        self.params = [*network, *codes]
        code_lr = config.code_lr or t.lr
        self.optimizer = torch.optim.Adam(
            [{"params": network, "lr": t.lr}, {"params": codes, "lr": code_lr}]
        )

    # -- resume ------------------------------------------------------------------------------
    def check_resume(self, payload: dict[str, Any], path: Path) -> dict[str, Any]:
        """``payload`` if it continues this run, else a ValueError naming ``path``."""
        if payload.get("kind") != COHORT_CHECKPOINT_KIND:
            raise ValueError(
                f"{path}: not a cohort training checkpoint (kind {payload.get('kind')!r})"
            )
        cohort = payload["cohort"]
        ids = [e.study_id for e in self.train_entries]
        if list(cohort["train_ids"]) != ids:
            raise ValueError(
                f"{path}: the checkpoint's training studies {list(cohort['train_ids'])} are not "
                f"this manifest's {ids}"
            )
        for sid, old, new in zip(ids, cohort["digests"], self.digests, strict=True):
            if old != new:
                raise ValueError(f"{path}: study {sid!r} changed since the checkpoint was made")
        render = ["views" if v else "lines" for v in self.views]
        saved_render = list(cohort.get("render", ["lines"] * len(ids)))  # older files: lines
        if saved_render != render:
            raise ValueError(
                f"{path}: the checkpoint rendered the studies as {saved_render}, this run as "
                f"{render}; set render to resume"
            )
        saved = payload["representation"]
        mine = self._representation()
        keys = ("field_config", "grid", "anatomy", "organ_code")
        saved = dict(saved)
        if saved.get("organ_code") is not None:  # files of before the anchor settings
            organ = dict(saved["organ_code"])
            names = organ.pop("compartments", [])
            saved["organ_code"] = {**OrganCodeConfig.from_dict(organ).to_dict(),
                                   "compartments": names}  # fmt: skip
        same = all(saved.get(k) == mine[k] for k in keys)
        if not same:
            raise ValueError(
                f"{path}: the checkpoint's architecture {saved['field_config']} differs from "
                f"this run's {mine['field_config']}"
            )
        names = ("seed", "holdout_fraction", "rays_per_step", "n_samples", "jitter", "render")
        require_same(path, payload["config"]["train"], self.train_cfg, names)
        saved_cohort = {"studies_per_step": 0, "group_steps": 1, **payload["config"]}
        require_same(path, saved_cohort, self.config, ("studies_per_step", "group_steps"))
        return payload

    def restore(self, payload: Mapping[str, Any]) -> None:
        self.heldout = [dict(h) for h in payload.get("heldout", [])]

    def rng_state(self) -> None:
        return None  # every draw is a function of (seed, step)

    def set_rng_state(self, state: None) -> None:
        pass

    # -- a step ------------------------------------------------------------------------------
    def draw(self, step: int) -> _Batch:
        """This rank's slice of the global batch of ``step``, with ray groups and jitter offsets."""
        t, info = self.train_cfg, self.info
        studies, positions = global_batch(
            t.seed, step, t.rays_per_step, self.n_lines,
            studies_per_step=self.config.studies_per_step, group_steps=self.config.group_steps,
        )  # fmt: skip
        lines = torch.empty_like(positions)
        keys = torch.empty_like(positions)
        for s in torch.unique(studies).tolist():
            sel = studies == s
            study = self.store.infos[s]
            lines[sel] = study.train_lines[positions[sel]]
            keys[sel] = study.line_keys[positions[sel]]
        offsets = _rank_within(studies * 2**21 + keys)
        b = t.rays_per_step // info.world_size
        mine = slice(info.rank * b, (info.rank + 1) * b)
        voxels = torch.zeros(1, dtype=torch.long)
        if t.l1_activity > 0:  # one supervision voxel per sample, from its own generator
            g = torch.Generator().manual_seed(_mix("cohort-voxels", t.seed, step))
            u = torch.rand(len(studies), generator=g, dtype=torch.float64)
            n_vox = torch.tensor([i.n_voxels for i in self.store.infos])[studies]
            voxels = torch.minimum((u * n_vox).long(), n_vox - 1)[mine]
        pair_u = pair_d = torch.zeros(0, 3, dtype=torch.float64)
        if t.tv_3d > 0 or t.ct_smoothness > 0:  # one point pair per sample, likewise
            g = torch.Generator().manual_seed(_mix("cohort-pairs", t.seed, step))
            pair_u, pair_d = (v[mine] for v in terms.draw_pairs(len(studies), g))
        return _Batch(
            step, studies[mine], lines[mine], keys[mine], offsets[mine], voxels, pair_u, pair_d
        )

    def loss(
        self, batch: _Batch, autocast: Callable[[], Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts = self.step_module(batch)  # DDP averages the gradients in the backward
        return loss, dict(zip(TERMS, parts, strict=True))

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Held-out pixels of training studies and code fits of held-out studies, shared out
        over the ranks (round robin) and gathered."""
        info, c, t = self.info, self.config, self.train_cfg
        self.model.eval()
        mine: list[tuple[str, int, dict[str, Any]]] = []
        n_train = min(c.val_train_studies, len(self.store))
        for s in range(info.rank, n_train, info.world_size):
            with torch.no_grad():
                loaded = self.store[s]
                field_s = self.model.study_field(s, self.levels[s], loaded.features, loaded.anchor)
                deviance, psnr = loaded.data.validate(
                    field_s, t.n_samples, render="views" if self.views[s] else "lines"
                )
            mine.append(("train", s, {"deviance": deviance, "psnr": psnr}))
        for v in range(info.rank, len(self.val_entries), info.world_size):
            mine.append(("heldout", v, self._fit_heldout(v)))
        self.model.train()
        gathered = sorted(
            (item for part in all_gather_objects(info, mine) for item in part),
            key=lambda item: (item[0], item[1]),
        )
        train_rows = [r for kind, _, r in gathered if kind == "train"]
        held = [r for kind, _, r in gathered if kind == "heldout"]
        out = {
            "train_val_deviance": _nanmean([r["deviance"] for r in train_rows]),
            "train_val_psnr": _nanmean([r["psnr"] for r in train_rows]),
            "heldout_deviance": _nanmean([r["deviance"] for r in held]),
            "heldout_psnr": _nanmean([r["psnr"] for r in held]),
            "heldout_organ_error": _nanmean(
                [r["organ_error"] for r in held if r["organ_error"] is not None]
            ),
        }
        self.heldout = held
        self.latest = {"train_val_psnr": out["train_val_psnr"], "heldout_psnr": out["heldout_psnr"]}
        return out

    def _fit_heldout(self, v: int) -> dict[str, Any]:
        entry = self.val_entries[v]
        study = read_entry(entry)
        failed = {"id": entry.study_id, "deviance": math.nan, "psnr": math.nan, "organ_error": None}
        if self.config.val_steps == 0:
            return failed
        cfg = dataclasses.replace(
            self.train_cfg, steps=self.config.val_steps, val_every=0, log_every=0,
            checkpoint_every=0, preview_every=0, deterministic=False, l1_activity=0.0,
        )  # fmt: skip  # a held-out study is fitted to its projections only
        field_ = self.model.prior_field(study=study)
        try:
            with _keep_rng():
                result = fit(field_, study, cfg, device=self.dev)
        except ValueError as error:  # e.g. no counts: report it, do not stop (or hang) the run
            return {**failed, "error": str(error)}
        activity = sample_on_grid(field_, study.grid).numpy()
        return {
            "id": entry.study_id,
            "deviance": result.val_deviance,
            "psnr": result.val_psnr,
            "organ_error": organ_activity_error(activity, study),
        }

    # -- outputs -----------------------------------------------------------------------------
    def _representation(self) -> dict[str, Any]:
        model = self.model
        organ = None
        if model.organ_code is not None:
            organ = {
                **model.organ_code.to_dict(),
                "compartments": [list(names) for names in model.organ_compartments],
            }
        return {
            "kind": "CohortModel",
            "grid": grid_to_dict(model.frame),
            "field_config": model.field_config.to_dict(),
            "anatomy": None if model.anatomy is None else model.anatomy.to_dict(),
            "organ_code": organ,
        }

    def checkpoint_extras(self) -> dict[str, Any]:
        return {
            "kind": COHORT_CHECKPOINT_KIND,
            "representation": self._representation(),
            "config": self.config.to_dict(),
            "cohort": {
                "train_ids": [e.study_id for e in self.train_entries],
                "train_paths": [str(e.path) for e in self.train_entries],
                "val_ids": [e.study_id for e in self.val_entries],
                "val_paths": [str(e.path) for e in self.val_entries],
                "digests": list(self.digests),
                "activity_levels": list(self.levels),
                "count_levels": list(self.count_levels),
                "used_3d_supervision": self.train_cfg.l1_activity > 0,
                "render": ["views" if v else "lines" for v in self.views],  # per study
                "collimator": list(self.notes),
            },
            "heldout": [dict(h) for h in self.heldout],
            "world_size": self.info.world_size,
        }

    def previews(self, step: int, out_dir: Path) -> None:
        pass  # ``preview_every`` does not apply to a cohort


# ----------------------------------------------------------------------------------------------
# Helpers


def _agree(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and give every rank its value, or raise its error on every rank."""
    outcome: tuple[str, Any]
    if info.is_main:
        try:
            outcome = ("ok", fn())
        except (ValueError, OSError, TypeError) as error:
            outcome = ("error", (type(error).__name__, str(error)))
    else:
        outcome = ("", None)
    outcome = broadcast_object(info, outcome)
    if outcome[0] == "error":
        name, message = outcome[1]
        kind = {"FileNotFoundError": FileNotFoundError, "FileExistsError": FileExistsError,
                "IsADirectoryError": IsADirectoryError, "TypeError": TypeError}.get(
            name, ValueError
        )  # fmt: skip
        raise kind(message)
    return outcome[1]


def _rank_within(codes: torch.Tensor) -> torch.Tensor:
    """For each element, how many earlier elements carry the same code."""
    order = torch.argsort(codes, stable=True)
    _, counts = torch.unique_consecutive(codes[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(codes)) - torch.repeat_interleave(starts, counts)
    out = torch.empty_like(within)
    out[order] = within
    return out


def _no_buffer_sync() -> dict[str, Any]:
    """DDP's option not to re-broadcast buffers every forward (they are constants here)."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:  # torch >= 2.13 (broadcast_buffers is deprecated)
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


@contextlib.contextmanager
def _keep_rng() -> Iterator[None]:
    """Restore torch's global RNG after a nested `fit` (which seeds it)."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)

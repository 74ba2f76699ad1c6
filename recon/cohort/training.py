"""`train_cohort`: train a shared emission network and one latent code per study on a cohort.

**Model and loss.** `recon.cohort.model.CohortModel`: the activity of training study ``s`` is
``level_s · softplus(MLP([enc(p̂), z_s]))``. Each step draws a global minibatch of
``config.train.rays_per_step`` samples; a sample is one detector line of one study (uniform over
the training studies, then uniform over that study's training lines; with AP/PA a line is
rendered in both views from the same field samples, `recon.nerf.rays.RayData`). The loss of a
step is the mean over the global batch of the single-study loss of `recon.nerf.training.fit`,

    ℓ(sample) = (poisson_nll − poisson_nll_saturated) / count_level_s        (per pixel mean)
              + latent_l2 · ‖z_s‖² + tv_ray · TV_ray / level_s,

so a one-study cohort trains like `fit`. With ``l1_activity`` > 0 each sample also draws one
random voxel of its study and adds ``l1_activity · |e_s − a_s| / level_s`` at that voxel, ``a_s``
the study's ``truth_activity`` (3D supervision of the *cohort*, e.g. phantoms or SPECT/CT-derived
activity; a new study reconstructed with the model as a prior still uses only its own
projections). ``tv_3d`` and ``ct_smoothness`` are not available here.

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

**Outputs (rank 0 only)** in ``out_dir``: ``log.csv``/``log.json`` (`COHORT_LOG_COLUMNS`),
``checkpoint-XXXXXX.pt`` and ``checkpoint-last.pt`` (weights-only checkpoints,
`recon.nerf.checkpoint`, ``kind = "cohort-checkpoint"``: the model with every code, the
optimiser, the history, the study ids and data digests); ``model_path``: the trained model
(``kind = "cohort-model"``, no optimiser state), the input of `recon.cohort.prior.fit_with_prior`.

**Interruption.** SIGINT or SIGTERM (Ctrl-C, ``scancel``, a pre-emption), or `request_stop`, in
any rank: all ranks agree at the end of the step in progress (the request travels with the
step's loss all-reduce), rank 0 writes a checkpoint of that step and every rank raises
`recon.nerf.training.TrainingInterrupted`. Resuming from it continues exactly. A second signal
interrupts at once (no checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import math
import os
import signal
import threading
import time
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
    all_reduce_sum,
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
    grid_to_dict,
)
from recon.cohort.prior import organ_activity_error
from recon.io import read_study
from recon.io.study import Study
from recon.nerf import losses
from recon.nerf.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    checkpoint_name,
    load_checkpoint,
    save_checkpoint,
)
from recon.nerf.config import TrainConfig
from recon.nerf.export import sample_on_grid
from recon.nerf.logs import write_step_logs
from recon.nerf.rays import RayData, study_digest
from recon.nerf.training import TrainingDiverged, TrainingInterrupted, fit, lr_at

__all__ = [
    "COHORT_LOG_COLUMNS",
    "CohortCallback",
    "CohortConfig",
    "CohortResult",
    "global_batch",
    "request_stop",
    "train_cohort",
]

#: Columns of ``log.csv`` / ``log.json``. ``data`` is the Poisson term, ``latent_l2`` and
#: ``tv_ray`` the unweighted regularisers; ``train_val_*``: held-out pixels of training studies;
#: ``heldout_*``: held-out studies after a code fit; ``samples_per_s``: lines per second since
#: the previous row (all ranks together).
COHORT_LOG_COLUMNS = (
    "step", "loss", "data", "latent_l2", "tv_ray", "l1_activity", "lr",
    "train_val_deviance", "train_val_psnr",
    "heldout_deviance", "heldout_psnr", "heldout_organ_error",
    "samples_per_s", "time_s",
)  # fmt: skip

#: ``callback(step, total_steps, metrics)`` after every step on every rank; ``metrics``: ``loss``
#: (global mean), ``lr``, ``rank``, ``world_size`` and the latest ``heldout_psnr`` and
#: ``train_val_psnr`` (NaN before the first validation).
CohortCallback = Callable[[int, int, Mapping[str, float]], None]

#: Seed offset of the initial codes' generator.
CODE_SEED_OFFSET = 2
_UNSUPPORTED = ("tv_3d", "ct_smoothness")
_STOP = threading.Event()


def request_stop() -> None:
    """Ask a running `train_cohort` (in this process) to stop after the current step.

    All ranks stop at the same step and rank 0 writes a checkpoint (the SIGINT/SIGTERM handlers
    call this).
    """
    _STOP.set()


@dataclass(frozen=True)
class CohortConfig:
    """Settings of a cohort training run.

    Parameters
    ----------
    train:
        Schedule, optimiser, regularisers and architecture (`recon.nerf.config.TrainConfig`;
        default `TrainConfig.cpu_default`). ``rays_per_step`` is the **global** batch (all
        ranks together), ``val_every``/``log_every``/``checkpoint_every`` apply as in `fit`;
        ``optimizer`` must be ``adam`` and ``amp`` ``off``; ``tv_3d`` and ``ct_smoothness`` must
        be 0 (``l1_activity`` needs every training study's ``truth_activity``);
        ``preview_every`` is ignored.
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
    """

    train: TrainConfig = field(default_factory=TrainConfig.cpu_default)
    code_lr: float | None = None
    code_init_std: float = 0.01
    val_fraction: float = 0.0
    val_steps: int = 100
    val_train_studies: int = 8
    backend: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        t = self.train
        if not isinstance(t, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(t).__name__}")
        if t.optimizer != "adam":
            raise ValueError("cohort training uses the adam optimizer (train.optimizer)")
        if t.amp != "off":
            raise ValueError("cohort training runs in full precision (train.amp must be 'off')")
        for name in _UNSUPPORTED:
            if getattr(t, name) > 0:
                raise ValueError(f"the {name} regulariser is not available in cohort training")
        if t.field.latent_dim < 1:
            raise ValueError("cohort training needs latent codes: field latent_dim must be >= 1")
        if self.code_lr is not None and not (math.isfinite(self.code_lr) and self.code_lr > 0):
            raise ValueError(f"code_lr must be > 0 (or None), got {self.code_lr!r}")
        if not (math.isfinite(self.code_init_std) and self.code_init_std >= 0):
            raise ValueError(f"code_init_std must be >= 0, got {self.code_init_std!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("val_steps", "val_train_studies"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
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
    _STOP.clear()
    with distributed_session(config.backend, config.device) as info:
        trainer = _CohortTrainer(manifest, config, info, out_dir, model_path, overwrite)
        trainer.start(resume)
        with _deterministic(config.train.deterministic), _stop_signals():
            return trainer.run(callback)


def _mix(*values: object) -> int:
    """A 63-bit seed from any values (stable across processes and runs)."""
    text = "/".join(str(v) for v in values).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def global_batch(
    seed: int, step: int, batch: int, n_lines: torch.Tensor
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

    Returns
    -------
    tuple of torch.Tensor
        ``(study [B], position [B])``: the study of each sample (uniform over the studies) and
        the position of its line among that study's training lines (uniform), sorted by study
        (stable, so the order of draws is kept within a study). Rank r of W takes
        ``[r·B/W, (r+1)·B/W)``.
    """
    g = torch.Generator().manual_seed(_mix("cohort-batch", seed, step))
    studies = torch.randint(len(n_lines), (batch,), generator=g)
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


class _StepModule(nn.Module):
    """The loss of a rank's slice of a step, as one module call (what DDP wraps)."""

    def __init__(
        self,
        model: CohortModel,
        data: list[RayData],
        levels: list[float],
        count_levels: list[float],
        config: TrainConfig,
        truth: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.data = data
        self.levels = levels
        self.count_levels = count_levels
        self.config = config
        self.truth = truth or []

    def forward(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        studies, lines = batch.studies.cpu(), batch.lines.cpu()
        keys, offsets = batch.keys.cpu(), batch.jitter_offset.cpu()
        n_local = len(studies)
        dev = self.model.codes.weight.device
        data_sum = torch.zeros((), device=dev)
        l2_sum = torch.zeros((), device=dev)
        tv_sum = torch.zeros((), device=dev)
        l1_sum = torch.zeros((), device=dev)
        for s in torch.unique(studies).tolist():
            in_s = studies == s
            data, level, count_level = self.data[s], self.levels[s], self.count_levels[s]
            code = self.model.code(s)

            def field(points: torch.Tensor, code: torch.Tensor = code, level: float = level):
                return self.model.conditioned(points, code) * level

            for key in torch.unique(keys[in_s]).tolist():
                sel = in_s & (keys == key)
                n = int(sel.sum())
                generator = None
                if c.jitter:
                    generator = torch.Generator().manual_seed(
                        _mix("cohort-jitter", c.seed, batch.step, s, key)
                    )
                    skip = int(offsets[sel][0])
                    if skip:  # the draws of the same rays' samples on lower ranks
                        torch.rand(skip, 1, generator=generator, dtype=torch.float64)
                rendered = data.render_lines(
                    field, lines[sel], n_samples=c.n_samples, jitter=c.jitter,
                    generator=generator, record=c.tv_ray > 0,
                )  # fmt: skip
                expected, counts = rendered.expected.float(), rendered.counts.float()
                nll = losses.poisson_nll(expected, counts, count_level)
                term = (nll - losses.poisson_nll_saturated(counts)) / count_level
                data_sum = data_sum + n * term
                if c.tv_ray > 0 and rendered.samples:
                    tv_sum = tv_sum + n * losses.tv_ray(rendered.samples[0].float(), level)
            if c.latent_l2 > 0:
                l2_sum = l2_sum + int(in_s.sum()) * losses.latent_l2(code)
            if c.l1_activity > 0:
                index = batch.voxels.cpu()[in_s].to(dev)
                points = _voxel_centres(data.geometry.grid, index)
                target = self.truth[s][index]
                l1 = losses.l1_activity(field(points).float(), target, level)
                l1_sum = l1_sum + int(in_s.sum()) * l1
        loss = data_sum + c.latent_l2 * l2_sum + c.tv_ray * tv_sum + c.l1_activity * l1_sum
        terms = torch.stack([data_sum, l2_sum, tv_sum, l1_sum]).detach() / n_local
        return loss / n_local, terms


class _CohortTrainer:
    """The state of one cohort run on one rank; `train_cohort` is its only user."""

    def __init__(
        self,
        manifest: Manifest,
        config: CohortConfig,
        info: DistInfo,
        out_dir: str | os.PathLike[str] | None,
        model_path: str | os.PathLike[str] | None,
        overwrite: bool,
    ) -> None:
        self.manifest, self.config, self.info = manifest, config, info
        t = config.train
        self.train_cfg = t
        self.dev = info.device
        if t.rays_per_step % info.world_size:
            raise ValueError(
                f"rays_per_step {t.rays_per_step} (the global batch) must be a multiple of the "
                f"number of processes {info.world_size}"
            )
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.model_path = None if model_path is None else Path(model_path)
        self.overwrite = overwrite
        _agree(info, self._check_outputs)
        if info.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)

        self.train_entries = manifest.train
        self.val_entries = manifest.val
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

    def _load_studies(self) -> None:
        """Read the studies and derive each training study's lines, levels and digest."""
        t = self.train_cfg
        self.data: list[RayData] = []
        self.levels: list[float] = []
        self.count_levels: list[float] = []
        self.digests: list[str] = []
        self.truth: list[torch.Tensor] = []
        grids = []
        for entry in self.train_entries:
            study = _read(entry.path, entry.study_id)
            data = RayData(study, holdout_fraction=t.holdout_fraction, seed=t.seed, device=self.dev)
            if len(data.train_lines) == 0:
                raise ValueError(f"{entry.path}: no training pixels (holdout_fraction leaves none)")
            try:
                self.levels.append(data.activity_level())
            except ValueError as error:
                raise ValueError(f"{entry.path}: {error}") from None
            self.count_levels.append(data.count_level())
            self.digests.append(study_digest(study))
            self.data.append(data)
            grids.append(study.grid)
            if t.l1_activity > 0:
                if study.truth_activity is None:
                    raise ValueError(
                        f"{entry.path}: l1_activity > 0 needs every training study's truth "
                        "activity, and this study has none"
                    )
                truth = torch.as_tensor(study.truth_activity, dtype=torch.float32)
                self.truth.append(truth.reshape(-1).to(self.dev))
        self.val_studies: list[Study] = [_read(e.path, e.study_id) for e in self.val_entries]
        self.grids = grids + [s.grid for s in self.val_studies]
        self.n_lines = torch.tensor([len(d.train_lines) for d in self.data])

    def _init_model(self) -> None:
        config, info, t = self.config, self.info, self.train_cfg
        codes_rng = torch.Generator().manual_seed(t.seed + CODE_SEED_OFFSET)
        self.model = CohortModel(
            cohort_frame(self.grids), t.field, len(self.data),
            code_init_std=config.code_init_std, generator=codes_rng,
        ).to(self.dev)  # fmt: skip
        step_module = _StepModule(
            self.model, self.data, self.levels, self.count_levels, t, self.truth
        )
        if info.distributed:
            ids = [self.dev.index] if self.dev.type == "cuda" else None
            self.step_module: nn.Module = DistributedDataParallel(
                step_module, device_ids=ids, **_no_buffer_sync()
            )
        else:
            self.step_module = step_module
        self.network_params = [
            p for n, p in self.model.named_parameters() if p.requires_grad and n != "codes.weight"
        ]
        self.params = [*self.network_params, self.model.codes.weight]
        self.code_lr_ratio = (config.code_lr or t.lr) / t.lr
        self.optimizer = torch.optim.Adam(
            [
                {"params": self.network_params, "lr": t.lr},
                {"params": [self.model.codes.weight], "lr": t.lr * self.code_lr_ratio},
            ]
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.losses: list[float] = []
        self.elapsed_before = 0.0
        self.checkpoint: Path | None = None
        self.checkpoint_step = -1
        self.heldout: list[dict[str, Any]] = []
        self.latest = {"train_val_psnr": math.nan, "heldout_psnr": math.nan}

    # -- outputs in the way ------------------------------------------------------------------
    def _check_outputs(self) -> None:
        overwrite = self.overwrite
        if self.model_path is not None:
            if self.model_path.is_dir():
                raise IsADirectoryError(f"{self.model_path}: is a folder, not a file")
            if not overwrite and self.model_path.exists():
                raise FileExistsError(
                    f"{self.model_path}: already exists; use --force (overwrite=True) to replace it"
                )
            if not self.model_path.parent.is_dir():
                raise FileNotFoundError(
                    f"{self.model_path}: folder {self.model_path.parent} does not exist"
                )

    # -- start -------------------------------------------------------------------------------
    def start(self, resume: str | os.PathLike[str] | None) -> None:
        if resume is None:
            _agree(self.info, self._check_fresh_folder)
            return
        path = Path(resume)
        payload = _agree(self.info, lambda: self._load_resume(path))
        self.model.load_state_dict(payload["model"])
        self.model.to(self.dev)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["step"])
        self.history = [dict(row) for row in payload["history"]]
        self.losses = [float(v) for v in payload["losses"]]
        self.elapsed_before = float(payload["elapsed_s"])
        self.checkpoint, self.checkpoint_step = path, self.step
        for row in reversed(self.history):
            if not math.isnan(row.get("heldout_psnr", math.nan)):
                self.latest["heldout_psnr"] = row["heldout_psnr"]
                break
        self.heldout = [dict(h) for h in payload.get("heldout", [])]

    def _check_fresh_folder(self) -> None:
        if self.out_dir is None or self.overwrite:
            return
        previous = [n for n in (LAST_CHECKPOINT, "log.csv") if (self.out_dir / n).exists()]
        if previous:
            raise FileExistsError(
                f"{self.out_dir}: holds a previous run ({', '.join(previous)}); resume from "
                f"{self.out_dir / LAST_CHECKPOINT} or use --force (overwrite=True) to start over"
            )

    def _load_resume(self, path: Path) -> dict[str, Any]:
        payload = load_checkpoint(path)
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
        saved = payload["representation"]
        mine = self._representation()
        if saved["field_config"] != mine["field_config"] or saved["grid"] != mine["grid"]:
            raise ValueError(
                f"{path}: the checkpoint's architecture {saved['field_config']} differs from "
                f"this run's {mine['field_config']}"
            )
        old = payload["config"]["train"]
        for name in ("seed", "holdout_fraction", "rays_per_step", "n_samples", "jitter"):
            if old.get(name) != getattr(self.train_cfg, name):
                raise ValueError(
                    f"{path}: the checkpoint used {name} = {old.get(name)!r}, this run "
                    f"{getattr(self.train_cfg, name)!r}; they must match to resume"
                )
        return payload

    # -- the loop ----------------------------------------------------------------------------
    def run(self, callback: CohortCallback | None) -> CohortResult:
        t = self.train_cfg
        self.t0 = time.perf_counter()
        first_step = self.step
        run_t0 = time.perf_counter()
        self.last_row = (self.step, self.elapsed())
        while self.step < t.steps:
            step = self.step + 1
            loss, terms, stop = self._train_step(step)
            self.step = step
            self.losses.append(loss)
            self._after_step(step, loss, terms, callback)
            if stop and step < t.steps:
                self._interrupt()
        run_time = time.perf_counter() - run_t0
        if self.out_dir is not None and self.checkpoint_step != self.step:
            self._write_checkpoint()
        self._write_model()
        barrier(self.info)
        n = self.step - first_step
        rate = n * t.rays_per_step / run_time if n and run_time > 0 else math.nan
        return self._result(rate)

    def _interrupt(self) -> None:
        path = None
        if self.out_dir is not None:
            path = self.checkpoint if self.checkpoint_step == self.step else None
            if path is None:
                path = self._write_checkpoint()
        barrier(self.info)
        raise TrainingInterrupted(self.step, path)

    def _train_step(self, step: int) -> tuple[float, dict[str, float], bool]:
        t, info = self.train_cfg, self.info
        lr = lr_at(t, step)
        self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.param_groups[1]["lr"] = lr * self.code_lr_ratio
        batch = self._batch(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms = self.step_module(batch)
        loss.backward()  # DDP averages the gradients over the ranks here
        if t.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        else:
            norm = torch.stack([p.grad.detach().norm() for p in self.params if p.grad is not None])
            norm = norm.norm()
        if not bool(torch.isfinite(norm)):  # the same on every rank: gradients are averaged
            where = self.checkpoint if self.checkpoint is not None else "no checkpoint written"
            raise TrainingDiverged(
                f"cohort training diverged at step {step}: the gradient norm is {float(norm)} "
                f"(lr {lr:.3g}); last good checkpoint: {where}. Lower the learning rate",
                step,
                self.checkpoint,
            )
        self.optimizer.step()
        local = torch.cat([loss.detach().reshape(1), terms, torch.tensor([float(_STOP.is_set())],
                          device=terms.device)])  # fmt: skip
        total = all_reduce_sum(info, local.double()).cpu()
        mean = total[:5] / info.world_size
        values = {"data": float(mean[1]), "latent_l2": float(mean[2]), "tv_ray": float(mean[3]),
                  "l1_activity": float(mean[4])}  # fmt: skip
        return float(mean[0]), values, bool(total[5] > 0)

    def _batch(self, step: int) -> _Batch:
        """This rank's slice of the global batch of ``step``, with ray groups and jitter offsets."""
        t, info = self.train_cfg, self.info
        studies, positions = global_batch(t.seed, step, t.rays_per_step, self.n_lines)
        lines = torch.empty_like(positions)
        keys = torch.empty_like(positions)
        for s in torch.unique(studies).tolist():
            sel = studies == s
            data = self.data[s]
            ln = data.train_lines[positions[sel]]
            lines[sel] = ln
            paired = (data.opposed[ln] >= 0).long()
            if t.n_samples is None:
                per_line = torch.tensor(data.samples_per_view)[data.view[ln]]
            else:
                per_line = torch.full_like(ln, int(t.n_samples))
            keys[sel] = paired * 2**20 + per_line
        offsets = _rank_within(studies * 2**21 + keys)
        voxels = torch.zeros(1, dtype=torch.long)
        if t.l1_activity > 0:  # one supervision voxel per sample, from its own generator
            g = torch.Generator().manual_seed(_mix("cohort-voxels", t.seed, step))
            u = torch.rand(len(studies), generator=g, dtype=torch.float64)
            n_vox = torch.tensor([len(a) for a in self.truth])[studies]
            voxels = torch.minimum((u * n_vox).long(), n_vox - 1)
        b = t.rays_per_step // info.world_size
        lo, hi = info.rank * b, (info.rank + 1) * b
        if t.l1_activity > 0:
            voxels = voxels[lo:hi]
        return _Batch(step, studies[lo:hi], lines[lo:hi], keys[lo:hi], offsets[lo:hi], voxels)

    def _after_step(
        self, step: int, loss: float, terms: dict[str, float], callback: CohortCallback | None
    ) -> None:
        t = self.train_cfg
        last = step == t.steps
        validated = _due(step, t.val_every) or last
        val: dict[str, float] = {}
        if validated:
            val = self._validate()
        if _due(step, t.log_every) or validated:
            now = self.elapsed()
            done, before = step - self.last_row[0], now - self.last_row[1]
            row = {"step": float(step), "loss": loss, **terms, "lr": lr_at(t, step), **val}
            row["samples_per_s"] = done * t.rays_per_step / before if before > 0 else math.nan
            row["time_s"] = now
            self.last_row = (step, now)
            self.history.append({k: float(row.get(k, math.nan)) for k in COHORT_LOG_COLUMNS})
            self._write_logs()
        if self.out_dir is not None and (_due(step, t.checkpoint_every) or last):
            self._write_checkpoint()
        if callback is not None:
            metrics = {"loss": loss, "lr": lr_at(t, step), "rank": float(self.info.rank),
                       "world_size": float(self.info.world_size), **self.latest}  # fmt: skip
            callback(step, t.steps, metrics)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    # -- validation --------------------------------------------------------------------------
    def _validate(self) -> dict[str, float]:
        """Held-out pixels of training studies and code fits of held-out studies, shared out
        over the ranks (round robin) and gathered."""
        info, c, t = self.info, self.config, self.train_cfg
        self.model.eval()
        mine: list[tuple[str, int, dict[str, Any]]] = []
        n_train = min(c.val_train_studies, len(self.data))
        for s in range(info.rank, n_train, info.world_size):
            with torch.no_grad():
                deviance, psnr = self.data[s].validate(
                    self.model.study_field(s, self.levels[s]), t.n_samples
                )
            mine.append(("train", s, {"deviance": deviance, "psnr": psnr}))
        for v in range(info.rank, len(self.val_studies), info.world_size):
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
        study, entry = self.val_studies[v], self.val_entries[v]
        t = self.train_cfg
        if self.config.val_steps == 0:
            return {"id": entry.study_id, "deviance": math.nan, "psnr": math.nan,
                    "organ_error": None}  # fmt: skip
        cfg = dataclasses.replace(
            t, steps=self.config.val_steps, val_every=0, log_every=0, checkpoint_every=0,
            preview_every=0, deterministic=False, l1_activity=0.0,
        )  # fmt: skip  # a held-out study is fitted to its projections only
        field_ = self.model.prior_field()
        try:
            with _keep_rng():
                result = fit(field_, study, cfg, device=self.dev)
        except ValueError as error:  # e.g. no counts: report it, do not stop (or hang) the run
            return {"id": entry.study_id, "deviance": math.nan, "psnr": math.nan,
                    "organ_error": None, "error": str(error)}  # fmt: skip
        activity = sample_on_grid(field_, study.grid).numpy()
        return {
            "id": entry.study_id,
            "deviance": result.val_deviance,
            "psnr": result.val_psnr,
            "organ_error": organ_activity_error(activity, study),
        }

    # -- outputs (rank 0) --------------------------------------------------------------------
    def _representation(self) -> dict[str, Any]:
        return {
            "kind": "CohortModel",
            "grid": grid_to_dict(self.model.frame),
            "field_config": self.model.field_config.to_dict(),
        }

    def _payload(self, kind: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": kind,
            "step": int(self.step),
            "representation": self._representation(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
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
            },
            "history": [dict(row) for row in self.history],
            "losses": list(self.losses),
            "heldout": [
                {k: (None if v is None else v) for k, v in h.items()} for h in self.heldout
            ],
            "elapsed_s": self.elapsed(),
            "world_size": self.info.world_size,
        }
        if kind == COHORT_CHECKPOINT_KIND:
            payload["optimizer"] = _to_cpu(self.optimizer.state_dict())
        return payload

    def _write_checkpoint(self) -> Path:
        assert self.out_dir is not None
        numbered = self.out_dir / checkpoint_name(self.step)
        if self.info.is_main:
            save_checkpoint(
                self._payload(COHORT_CHECKPOINT_KIND), numbered, self.out_dir / LAST_CHECKPOINT
            )
        self.checkpoint, self.checkpoint_step = numbered, self.step
        return numbered

    def _write_model(self) -> None:
        if self.model_path is not None and self.info.is_main:
            save_checkpoint(self._payload(COHORT_MODEL_KIND), self.model_path)

    def _write_logs(self) -> None:
        if self.out_dir is None or not self.info.is_main:
            return
        write_step_logs(self.out_dir, self.history, COHORT_LOG_COLUMNS)

    def _result(self, rate: float) -> CohortResult:
        return CohortResult(
            model=self.model,
            config=self.config,
            train_ids=[e.study_id for e in self.train_entries],
            val_ids=[e.study_id for e in self.val_entries],
            history=self.history,
            losses=self.losses,
            steps_done=self.step,
            samples_per_s=rate,
            elapsed_s=self.elapsed(),
            heldout=self.heldout,
            checkpoint=self.checkpoint,
            model_path=self.model_path,
            out_dir=self.out_dir,
            rank=self.info.rank,
            world_size=self.info.world_size,
            device=str(self.dev),
        )


# ----------------------------------------------------------------------------------------------
# Helpers


def _read(path: Path, study_id: str) -> Study:
    try:
        return read_study(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such study file (study {study_id!r})") from None


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


def _voxel_centres(grid: Any, flat_index: torch.Tensor) -> torch.Tensor:
    """Centres ``[N, 3]`` (x, y, z mm) of the voxels with flat indices into ``[Z, Y, X]``."""
    _, ny, nx = grid.shape
    dev = flat_index.device
    cz, cy, cx = (grid.centres_mm(a, dtype=torch.float32, device=dev) for a in range(3))
    k, j, i = flat_index // (ny * nx), (flat_index // nx) % ny, flat_index % nx
    return torch.stack([cx[i], cy[j], cz[k]], dim=1)


def _rank_within(codes: torch.Tensor) -> torch.Tensor:
    """For each element, how many earlier elements carry the same code."""
    order = torch.argsort(codes, stable=True)
    _, counts = torch.unique_consecutive(codes[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(codes)) - torch.repeat_interleave(starts, counts)
    out = torch.empty_like(within)
    out[order] = within
    return out


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's option not to re-broadcast buffers every forward (they are constants here)."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:  # torch >= 2.13 (broadcast_buffers is deprecated)
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _fmt(name: str, value: float) -> str:
    return str(int(value)) if name == "step" else f"{value:.9g}"


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


@contextlib.contextmanager
def _keep_rng() -> Iterator[None]:
    """Restore torch's global RNG after a nested `fit` (which seeds it)."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGINT/SIGTERM → `request_stop` (a second one interrupts at once), main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

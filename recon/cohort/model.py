"""The cohort model: one shared emission network and a table of per-study latent codes.

``CohortModel`` holds a `recon.nerf.field.EmissionField` (the shared network, unit ``scale``)
and an ``nn.Embedding`` with one latent code per training study (auto-decoder style: codes are
parameters, optimised with the network; there is no encoder). The activity of training study
``s`` at points ``p`` (x, y, z mm) is

    e_s(p) = level_s · softplus(MLP([encoding(p̂), z_s]))

where ``level_s`` is the study's data-derived activity level (`recon.nerf.rays.RayData
.activity_level`, fixed before training), so the network learns distributions relative to each
study's level and the absolute scale always comes from the study's own counts, as in single-study
fits. Points are normalised to the cohort's *frame* (`cohort_frame`), a box that covers every
study's grid, the same for all studies and for new studies reconstructed with the model as a
prior.

**Why the code table is replicated on every rank (not sharded).** Under
`torch.nn.parallel.DistributedDataParallel` the embedding weight ``[n_studies, D]`` is an ordinary
parameter with a dense gradient. A rank's minibatch touches a few rows; the rows it does not touch
have zero gradient. DDP all-reduces (averages) the whole gradient with the network's, so after
``backward`` every rank holds the gradient of the *global* batch for every code, the optimiser
steps are identical and the replicas stay equal, exactly as for the network's weights. The cost is
``n_studies × D`` floats per step (256 studies × 256 dims = 256 KiB), small next to pieNeRF's
0.5 M-weight network; memory per rank is the same. Sharding would only pay off beyond ~10⁵
studies and would need a second, sparse all-to-all exchange outside DDP (NCCL has no sparse
all-reduce; sparse embedding gradients in DDP work with gloo only and would need SparseAdam).

A trained model is saved as a weights-only checkpoint (`recon.nerf.checkpoint`, ``kind:
"cohort-model"``); `load_cohort_model` reads it (or any cohort training checkpoint) back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from recon.nerf.checkpoint import grid_from_dict, load_checkpoint
from recon.nerf.field import EmissionField, FieldConfig
from spectproj import ImageGrid

__all__ = [
    "COHORT_CHECKPOINT_KIND",
    "COHORT_MODEL_KIND",
    "CohortModel",
    "LoadedCohortModel",
    "cohort_frame",
    "load_cohort_model",
]

#: ``kind`` of a trained cohort model file (no optimiser state).
COHORT_MODEL_KIND = "cohort-model"
#: ``kind`` of a cohort training checkpoint (with the optimiser state, resumable).
COHORT_CHECKPOINT_KIND = "cohort-checkpoint"


def cohort_frame(grids: list[ImageGrid] | tuple[ImageGrid, ...]) -> ImageGrid:
    """The box the shared network normalises points to: covers every grid.

    If all grids are equal it is that grid. Otherwise it is the union of their boxes, with the
    largest shape along each axis and the spacing that fills the box (only its extent and
    centre matter to the network).
    """
    if not grids:
        raise ValueError("a cohort needs at least one study grid")
    first = grids[0]
    if all(g == first for g in grids):
        return first
    lo = [min(g.offset_mm[a] - g.extent_mm[a] / 2 for g in grids) for a in range(3)]
    hi = [max(g.offset_mm[a] + g.extent_mm[a] / 2 for g in grids) for a in range(3)]
    shape = tuple(max(g.shape[a] for g in grids) for a in range(3))
    return ImageGrid(
        shape=shape,  # type: ignore[arg-type]  # ImageGrid checks the length
        spacing_mm=tuple((hi[a] - lo[a]) / shape[a] for a in range(3)),  # type: ignore[arg-type]  # ImageGrid checks the length
        offset_mm=tuple((hi[a] + lo[a]) / 2 for a in range(3)),  # type: ignore[arg-type]  # ImageGrid checks the length
    )


class CohortModel(nn.Module):
    """A shared `EmissionField` and one latent code per training study.

    Parameters
    ----------
    frame:
        The box points are normalised to (`cohort_frame` of the studies' grids).
    field_config:
        Architecture of the shared network; ``latent_dim`` is the code size (>= 1).
    n_codes:
        Number of training studies.
    code_init_std:
        Codes start as N(0, code_init_std²) (DeepSDF's choice; 0 gives zero codes).
    generator:
        CPU generator of that draw (the network's weights use the global torch RNG).

    Attributes
    ----------
    field:
        The shared network (its own ``latent`` parameter is unused and frozen: every call passes
        a study's code instead, through `torch.func.functional_call`).
    codes:
        ``nn.Embedding(n_codes, latent_dim)``, replicated on every rank (module notes).
    """

    def __init__(
        self,
        frame: ImageGrid,
        field_config: FieldConfig,
        n_codes: int,
        *,
        code_init_std: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if field_config.latent_dim < 1:
            raise ValueError("a cohort model needs latent codes: field latent_dim must be >= 1")
        if isinstance(n_codes, bool) or not isinstance(n_codes, int) or n_codes < 1:
            raise ValueError(f"n_codes must be a positive integer, got {n_codes!r}")
        if not code_init_std >= 0:
            raise ValueError(f"code_init_std must be >= 0, got {code_init_std!r}")
        self.frame = frame
        self.field_config = field_config
        self.field = EmissionField(frame, field_config, scale=1.0)
        self.field.latent.requires_grad_(False)
        self.codes = nn.Embedding(n_codes, field_config.latent_dim)
        with torch.no_grad():
            init = torch.randn(n_codes, field_config.latent_dim, generator=generator)
            self.codes.weight.copy_(init * code_init_std)

    @property
    def n_codes(self) -> int:
        return int(self.codes.num_embeddings)

    def code(self, index: int) -> torch.Tensor:
        """The latent code ``[D]`` of training study ``index`` (differentiable)."""
        idx = torch.tensor([int(index)], device=self.codes.weight.device)
        return self.codes(idx)[0]

    def conditioned(self, points_mm: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """``softplus(MLP([encoding(p̂), code]))`` at points ``[..., 3]`` (unit scale)."""
        return functional_call(self.field, {"latent": code}, (points_mm,))

    def study_field(self, index: int, level: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
        """The activity field of training study ``index``: points ``[N, 3]`` → ``[N]``,
        ``level · conditioned(p, z_index)`` (differentiable in the network and the code)."""
        code = self.code(index)

        def field(points_mm: torch.Tensor) -> torch.Tensor:
            return self.conditioned(points_mm, code) * level

        return field

    def mean_code(self) -> torch.Tensor:
        """The mean ``[D]`` of the training codes (the starting code of a new study)."""
        return self.codes.weight.detach().mean(dim=0)

    def prior_field(
        self, code: torch.Tensor | None = None, scale: float = 1.0, *, train_network: bool = False
    ) -> EmissionField:
        """A stand-alone `EmissionField` with the shared network's weights and a code of its own.

        Parameters
        ----------
        code:
            Its latent code (default: `mean_code`).
        scale:
            Its ``scale`` buffer (the new study's activity level; `recon.nerf.training.fit`
            sets it from the data on a fresh start).
        train_network:
            Leave the network's weights trainable; otherwise only ``latent`` is.

        Returns
        -------
        EmissionField
            A copy on the CPU (the model is not changed); an ordinary single-study field, so
            `recon.nerf.training.fit`, `recon.nerf.export.to_result` and `load_field` apply.
        """
        field = EmissionField(self.frame, self.field_config, scale=float(scale))
        state = {k: v.detach().cpu() for k, v in self.field.state_dict().items()}
        state["scale"] = torch.tensor(float(scale))
        start = self.mean_code() if code is None else code.detach()
        state["latent"] = start.to(dtype=state["latent"].dtype).cpu().clone()
        field.load_state_dict(state)
        for name, p in field.named_parameters():
            p.requires_grad_(train_network or name == "latent")
        return field


@dataclass
class LoadedCohortModel:
    """A cohort model read from a file.

    Attributes
    ----------
    model:
        The `CohortModel` (CPU, eval mode).
    study_ids:
        Ids of the training studies, in code order.
    activity_levels:
        Each training study's activity level (its ``level_s``).
    payload:
        The whole file (config, history, ...), as read.
    path:
        Where it was read from.
    """

    model: CohortModel
    study_ids: list[str]
    activity_levels: list[float]
    payload: dict[str, Any]
    path: Path | None = None

    @property
    def step(self) -> int:
        return int(self.payload.get("step", 0))


def load_cohort_model(source: str | os.PathLike[str] | Mapping[str, Any]) -> LoadedCohortModel:
    """Read a cohort model file or a cohort training checkpoint (``weights_only=True``).

    Raises
    ------
    ValueError
        The file is not a cohort model (e.g. a single-study NeRF checkpoint), or its tensors do
        not fit the described architecture.
    FileNotFoundError
        No such file.
    """
    if isinstance(source, Mapping):
        payload, where = dict(source), "the cohort model"
    else:
        payload, where = load_checkpoint(source), os.fspath(source)
    kind = payload.get("kind")
    if kind not in (COHORT_MODEL_KIND, COHORT_CHECKPOINT_KIND):
        raise ValueError(
            f"{where}: not a cohort model (kind {kind!r}); train one with spect train-cohort"
        )
    rep = payload["representation"]
    field_config = FieldConfig(**dict(rep["field_config"]))
    cohort = payload["cohort"]
    ids = [str(s) for s in cohort["train_ids"]]
    model = CohortModel(grid_from_dict(rep["grid"]), field_config, len(ids), code_init_std=0.0)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as error:
        text = " ".join(str(error).split())[:300]
        raise ValueError(
            f"{where}: the stored tensors do not fit the architecture: {text}"
        ) from None
    model.eval()
    levels = [float(v) for v in cohort["activity_levels"]]
    path = None if isinstance(source, Mapping) else Path(source)
    return LoadedCohortModel(model, ids, levels, payload, path)

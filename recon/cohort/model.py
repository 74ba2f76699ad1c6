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

**Anatomy-conditioned cohorts.** With ``anatomy`` (an
`recon.nerf.anatomy_field.AnatomyFeatureConfig` whose vocabulary is the segment names of the
cohort), the shared network also takes each study's anatomy features at the point (μ/μ_water,
a segment embedding **shared by all studies**, a body indicator; `AnatomyFeatures`),

    e_s(p) = level_s · softplus(MLP([encoding(p̂), features_s(p), z_s])) · body_s(p),

so what it learns is uptake *given anatomy*, which can carry over to a body it has never seen.
Each study's volumes (`AnatomyFeatures` built by `anatomy_features_for_study` with the cohort's
vocabulary) are passed with its code; only the embedding is a parameter of the model. A new
study's prior field is then an `recon.nerf.anatomy_field.AnatomyField` on its own anatomy with
the shared weights.

**Organ-code cohorts.** With ``organ_code`` (an `recon.nerf.organ_field.OrganCodeConfig`; needs
``anatomy``) part of each study's code is explicit: the log-concentrations ``ℓ_{s,k}`` of its
compartments (segments and background, initialised from the study's organ fit, QPlanar), a row
of the table ``organ_codes`` ``[n_studies, K_max]``. The activity is the organ-anchored field's
(`recon.nerf.organ_field.anchored_activity`),

    e_s(p) = Σ_k e^{ℓ_{s,k}} m_{s,k}(p) · exp(B · tanh(n₀))
             + level_s · softplus(n₁ − 4) · body_s(p),
    n = MLP([encoding(p̂), features_s(p), z_s]),

so the network learns only what the anatomy does not say (within-organ modulation, activity
outside the compartments' pattern); its output layer starts at zero, so a fresh model *is* the
organ fits. Each study's compartments (`recon.nerf.organ_field.OrganAnchor`) are passed with its
features, like them; a new study's prior field is an `OrganAnchoredField` on its own anatomy,
its log-concentrations starting from its own organ fit. With ``organ_code.anchor = "residual"``
the anchor is the study's organs + residual fit (`recon.nerf.organ_field.ResidualAnchor`: the
refined compartments and the residual sources, each source a component of the code), and with
``organ_code.normalise`` the modulation is divided by its anchor-weighted mean over each
component (`anchor_log_concentration`), so every component's total is its code's.

A trained model is saved as a weights-only checkpoint (`recon.nerf.checkpoint`, ``kind:
"cohort-model"``); `load_cohort_model` reads it (or any cohort training checkpoint) back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from recon.io.study import Study
from recon.nerf.anatomy_field import (
    AnatomyFeatureConfig,
    AnatomyFeatures,
    AnatomyField,
    AnatomyFieldConfig,
    anatomy_features_for_study,
)
from recon.nerf.checkpoint import grid_from_dict, load_checkpoint
from recon.nerf.field import EmissionField, FieldConfig
from recon.nerf.organ_field import (
    Anchor,
    OrganAnchoredField,
    OrganCodeConfig,
    OrganFieldConfig,
    anchor_log_concentration,
    anchored_activity,
    organ_field_for_study,
)
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


class _SharedFeatures(nn.Module):
    """The shared network's features slot: the cohort's segment embedding and, during a call,
    one study's `AnatomyFeatures` volumes (`CohortModel.using`)."""

    def __init__(self, config: AnatomyFeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.n_segments, config.embedding_dim)
        self.current: AnatomyFeatures | None = None

    @property
    def out_features(self) -> int:
        return self.config.out_features

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        if self.current is None:
            raise RuntimeError("an anatomy-conditioned cohort network needs a study's anatomy")
        return self.current.forward_with(points_mm, self.embedding)


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
    anatomy:
        Anatomy features of the network's input (module notes); ``None``: none.
    organ_code:
        Organ-anchored activity (module notes; needs ``anatomy``); ``None``: the plain
        ``level · softplus(MLP)``.
    organ_compartments:
        With ``organ_code``: the compartment names of each study (``n_codes`` lists), in the
        order of its log-concentrations.

    Attributes
    ----------
    field:
        The shared network (its own ``latent`` parameter is unused and frozen: every call passes
        a study's code instead, through `torch.func.functional_call`).
    codes:
        ``nn.Embedding(n_codes, latent_dim)``, replicated on every rank (module notes).
    anatomy:
        The anatomy feature configuration (vocabulary), or ``None``.
    organ_code, organ_compartments:
        As given (``None`` and ``()`` without organ codes).
    organ_codes:
        ``[n_codes, K_max]`` log-concentrations (``K_max`` the most compartments of a study;
        row ``s`` uses its first ``len(organ_compartments[s])``), with organ codes; else
        ``None``.
    """

    def __init__(
        self,
        frame: ImageGrid,
        field_config: FieldConfig,
        n_codes: int,
        *,
        code_init_std: float = 0.01,
        generator: torch.Generator | None = None,
        anatomy: AnatomyFeatureConfig | None = None,
        organ_code: OrganCodeConfig | None = None,
        organ_compartments: Sequence[Sequence[str]] = (),
    ) -> None:
        super().__init__()
        if field_config.latent_dim < 1:
            raise ValueError("a cohort model needs latent codes: field latent_dim must be >= 1")
        if isinstance(n_codes, bool) or not isinstance(n_codes, int) or n_codes < 1:
            raise ValueError(f"n_codes must be a positive integer, got {n_codes!r}")
        if not code_init_std >= 0:
            raise ValueError(f"code_init_std must be >= 0, got {code_init_std!r}")
        if anatomy is not None and not isinstance(anatomy, AnatomyFeatureConfig):
            raise TypeError(
                f"anatomy must be an AnatomyFeatureConfig, got {type(anatomy).__name__}"
            )
        compartments = tuple(tuple(str(n) for n in names) for names in organ_compartments)
        if organ_code is not None:
            if not isinstance(organ_code, OrganCodeConfig):
                raise TypeError(
                    f"organ_code must be an OrganCodeConfig, got {type(organ_code).__name__}"
                )
            if anatomy is None:
                raise ValueError("organ codes need an anatomy-conditioned model (anatomy)")
            if len(compartments) != n_codes or not all(compartments):
                raise ValueError(
                    f"organ_compartments must name the compartments of each of the {n_codes} "
                    f"studies, got {len(compartments)} lists"
                )
        elif compartments:
            raise ValueError("organ_compartments needs organ_code")
        self.frame = frame
        self.field_config = field_config
        self.anatomy = anatomy
        self.organ_code = organ_code
        self.organ_compartments = compartments
        features = None if anatomy is None else _SharedFeatures(anatomy)
        outputs = 1 if organ_code is None else organ_code.outputs
        self.field = EmissionField(
            frame, field_config, scale=1.0, features=features, outputs=outputs
        )
        self.field.latent.requires_grad_(False)
        self.organ_codes: nn.Parameter | None = None
        if organ_code is not None:
            with torch.no_grad():  # zero output: a fresh model is its studies' organ fits
                self.field.output.weight.zero_()
                self.field.output.bias.zero_()
            k_max = max(len(names) for names in compartments)
            self.organ_codes = nn.Parameter(torch.zeros(n_codes, k_max))
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

    @contextlib.contextmanager
    def using(self, features: AnatomyFeatures | None) -> Iterator[None]:
        """Within the block the shared network sees ``features`` (a study's anatomy)."""
        slot = self.field.features
        if not isinstance(slot, _SharedFeatures):
            if features is not None:
                raise ValueError("this cohort model takes no anatomy features")
            yield
            return
        if features is None:
            raise ValueError("this cohort model is anatomy-conditioned: give the study's features")
        previous, slot.current = slot.current, features
        try:
            yield
        finally:
            slot.current = previous

    def conditioned(
        self,
        points_mm: torch.Tensor,
        code: torch.Tensor,
        features: AnatomyFeatures | None = None,
    ) -> torch.Tensor:
        """``softplus(MLP([encoding(p̂), (features(p),) code]))`` at points ``[..., 3]`` (unit
        scale), times the body indicator with anatomy features."""
        with self.using(features):
            values = functional_call(self.field, {"latent": code}, (points_mm,))
        if features is not None:
            values = values * features.inside(points_mm).to(values.dtype)
        return values

    def log_concentration(self, index: int) -> torch.Tensor:
        """The log-concentrations ``[K_s]`` of training study ``index`` (differentiable)."""
        if self.organ_codes is None:
            raise ValueError("this cohort model has no organ codes")
        return self.organ_codes[int(index), : len(self.organ_compartments[int(index)])]

    def anchor_log_concentration(
        self,
        code: torch.Tensor,
        features: AnatomyFeatures,
        anchor: Anchor,
        log_concentration: torch.Tensor,
    ) -> torch.Tensor:
        """The log-concentrations a study's anchor is read with: with ``organ_code.normalise``
        shifted so the modulation keeps every component's total
        (`recon.nerf.organ_field.anchor_log_concentration`, one network pass over the anchor's
        voxels), else ``log_concentration``."""
        if self.organ_code is None:
            raise ValueError("this cohort model has no organ codes")

        def raw(points: torch.Tensor) -> torch.Tensor:
            with self.using(features):
                return self.field.raw(points, latent=code)

        return anchor_log_concentration(anchor, log_concentration, raw, self.organ_code)

    def activity(
        self,
        points_mm: torch.Tensor,
        code: torch.Tensor,
        level: float,
        features: AnatomyFeatures | None = None,
        anchor: Anchor | None = None,
        log_concentration: torch.Tensor | None = None,
        *,
        normalised: bool = False,
    ) -> torch.Tensor:
        """A study's activity ``[...]`` at points ``[..., 3]``: ``level · conditioned(p, code)``,
        or with organ codes the organ-anchored activity (module notes) of the study's
        ``anchor`` and ``log_concentration``. ``normalised``: ``log_concentration`` is already
        `anchor_log_concentration`'s (a caller that evaluates many point sets of one study
        computes it once)."""
        if self.organ_code is None:
            return self.conditioned(points_mm, code, features) * level
        if features is None or anchor is None or log_concentration is None:
            raise ValueError(
                "an organ-code cohort model needs the study's features, anchor and "
                "log-concentrations"
            )
        if not normalised:
            log_concentration = self.anchor_log_concentration(
                code, features, anchor, log_concentration
            )
        with self.using(features):
            raw = self.field.raw(points_mm, latent=code)
        inside = features.inside(points_mm)
        values = anchored_activity(
            raw, anchor(points_mm, log_concentration), inside, level, self.organ_code
        )
        return values.to(points_mm.dtype)

    def study_field(
        self,
        index: int,
        level: float = 1.0,
        features: AnatomyFeatures | None = None,
        anchor: Anchor | None = None,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The activity field of training study ``index``: points ``[N, 3]`` → ``[N]``
        (`activity` with its code and, with organ codes, its log-concentrations; differentiable
        in the network and both; with ``normalise`` the anchor's shift is computed at each
        call)."""
        code = self.code(index)
        log_c = None if self.organ_codes is None else self.log_concentration(index)

        def field(points_mm: torch.Tensor) -> torch.Tensor:
            return self.activity(points_mm, code, level, features, anchor, log_c)

        return field

    def mean_code(self) -> torch.Tensor:
        """The mean ``[D]`` of the training codes (the starting code of a new study)."""
        return self.codes.weight.detach().mean(dim=0)

    def prior_field(
        self,
        code: torch.Tensor | None = None,
        scale: float = 1.0,
        *,
        train_network: bool = False,
        study: Study | None = None,
    ) -> EmissionField | AnatomyField | OrganAnchoredField:
        """A stand-alone field with the shared network's weights and a code of its own.

        Parameters
        ----------
        code:
            Its latent code (default: `mean_code`).
        scale:
            Its ``scale`` buffer (the new study's activity level; `recon.nerf.training.fit`
            sets it from the data on a fresh start).
        train_network:
            Leave the network's weights trainable; otherwise only ``latent`` is.
        study:
            The new study; required by an anatomy-conditioned model, whose prior field is an
            `AnatomyField` on the study's anatomy (with the cohort's vocabulary and the cohort
            frame's normalisation), or with organ codes an `OrganAnchoredField` whose
            log-concentrations start at the study's organ fit (trainable with the code).

        Returns
        -------
        EmissionField, AnatomyField or OrganAnchoredField
            A copy on the CPU (the model is not changed); an ordinary single-study field, so
            `recon.nerf.training.fit`, `recon.nerf.export.to_result` and `load_field` apply.
        """
        state = {k: v.detach().cpu() for k, v in self.field.state_dict().items()}
        state["scale"] = torch.tensor(float(scale))
        start = self.mean_code() if code is None else code.detach()
        state["latent"] = start.to(dtype=state["latent"].dtype).cpu().clone()
        field: EmissionField | AnatomyField | OrganAnchoredField
        if self.anatomy is None:
            field = EmissionField(self.frame, self.field_config, scale=float(scale))
            field.load_state_dict(state)
        else:
            if study is None:
                raise ValueError("an anatomy-conditioned cohort model needs the new study")
            if self.organ_code is None:
                features = anatomy_features_for_study(study, self.anatomy)
                config = AnatomyFieldConfig(field=self.field_config, features=features.config)
                field = AnatomyField(study.grid, config, features, scale=float(scale))
            else:
                organ = OrganFieldConfig(self.field_config, self.anatomy, self.organ_code)
                field = organ_field_for_study(study, organ, scale=float(scale))
            mine = field.network.state_dict()
            mine.update(
                {k: v for k, v in state.items() if k in mine and k.split(".")[0] != "features"}
            )
            mine["features.embedding.weight"] = state["features.embedding.weight"]
            field.network.load_state_dict(mine)  # the cohort frame's centre and extent included
        code_names = ("latent", "log_concentration")
        for name, p in field.named_parameters():
            p.requires_grad_(train_network or name.split(".")[-1] in code_names)
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
    anatomy = rep.get("anatomy")
    features = None if anatomy is None else AnatomyFeatureConfig.from_dict(anatomy)
    organ = rep.get("organ_code")  # absent in files of before organ codes
    organ_code = None
    compartments: list[list[str]] = []
    if organ is not None:
        organ = dict(organ)
        compartments = [list(names) for names in organ.pop("compartments")]
        organ_code = OrganCodeConfig.from_dict(organ)
    cohort = payload["cohort"]
    ids = [str(s) for s in cohort["train_ids"]]
    model = CohortModel(
        grid_from_dict(rep["grid"]), field_config, len(ids), code_init_std=0.0,
        anatomy=features, organ_code=organ_code, organ_compartments=compartments,
    )  # fmt: skip
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

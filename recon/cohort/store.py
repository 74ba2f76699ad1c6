"""The training studies of a cohort, held in memory all at once or read lazily through a cache.

`StudyStore` gives cohort training (`recon.cohort.training`) what it needs of each training
study. Two parts:

- **always in memory** (`StudyInfo`, a few numbers and two index arrays per study): the study's
  id and file, its activity and count levels, data digest, render mode, grid, and, for drawing
  batches, its training lines and their ray-group keys (8 bytes per training line: 64 KiB for a
  64² AP/PA study);
- **the data** (`LoadedStudy`: the `recon.nerf.rays.RayData` with counts, μ, projector, the
  flat truth for ``l1_activity``, and for an organ-code cohort the study's anchor,
  `recon.nerf.organ_field.study_anchor`), either held for every study (``cache_studies = 0``, the
  eager path) or read from the study file when a step needs it and kept in a
  least-recently-used cache of ``cache_studies`` studies (the lazy path, for cohorts larger
  than memory).

The first pass reads every study once (to compute the levels and digests); the lazy path then
drops the data again. An organs + residual anchor (``organ_anchor = "residual"``, a few
seconds of fitting per study) is made on the first pass only and kept in memory for the lazy
reloads (its non-zero entries, ~0.3 MB for a 32³ torso); an organ-fit anchor is remade on each
read. Both paths give identical data (a study file is read the same way each
time), so training gives the same model; the tests check it. To keep the cache from thrashing,
let each step draw from a few studies (`recon.cohort.training.CohortConfig.studies_per_step`,
``group_steps``), at most ``cache_studies`` of them.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from recon.cohort.manifest import ManifestEntry
from recon.io import read_study
from recon.io.study import Study
from recon.nerf.anatomy_field import (
    AnatomyFeatureConfig,
    AnatomyFeatures,
    anatomy_features_for_study,
)
from recon.nerf.config import TrainConfig
from recon.nerf.organ_field import ANCHORS, Anchor, study_anchor
from recon.nerf.rays import RayData, study_digest
from recon.nerf.training import study_physics
from spectproj import ImageGrid

__all__ = ["LoadedStudy", "StudyInfo", "StudyStore", "read_entry"]


def read_entry(entry: ManifestEntry) -> Study:
    """Read a manifest entry's study file (a missing file names the study)."""
    try:
        return read_study(entry.path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{entry.path}: no such study file (study {entry.study_id!r})"
        ) from None


@dataclass(frozen=True)
class StudyInfo:
    """What stays in memory of a training study (module notes).

    Attributes
    ----------
    level, count_level:
        Activity level (`RayData.activity_level`) and count level of the study.
    digest:
        `recon.nerf.rays.study_digest` of its data.
    views:
        Rendered as whole views with the collimator blur (else lines).
    note:
        One line on the collimator (`recon.nerf.training.study_physics`).
    grid:
        Its image grid.
    train_lines, line_keys:
        ``[Lt]`` training lines and their ray-group keys (paired · 2²⁰ + samples per line).
    n_voxels:
        Voxels of its truth (0 without ``l1_activity``).
    segment_names:
        Names of its anatomy's segments, in label order (empty without an anatomy).
    compartments, organ_start:
        For an organ-code cohort: the names of its anchor's components (segments, then
        background, then with the residual anchor its sources) and their initial
        log-concentrations ``ln c_k`` (activity unit), from the anchor of the first read
        (`recon.nerf.organ_field.study_anchor`); else empty.
    kept_anchor:
        The residual anchor of the first read (on the store's device), reused on every later
        read; else ``None``.
    """

    level: float
    count_level: float
    digest: str
    views: bool
    note: str
    grid: ImageGrid
    train_lines: torch.Tensor
    line_keys: torch.Tensor
    n_voxels: int
    segment_names: tuple[str, ...] = ()
    compartments: tuple[str, ...] = ()
    organ_start: tuple[float, ...] = ()
    kept_anchor: Anchor | None = None


@dataclass(frozen=True)
class LoadedStudy:
    """The data of a training study: its `RayData`, flat truth ``[Z·Y·X]`` (or ``None``), for
    an anatomy-conditioned cohort its anatomy features (cohort vocabulary), and for an
    organ-code cohort its compartments."""

    data: RayData
    truth: torch.Tensor | None
    features: AnatomyFeatures | None = None
    anchor: Anchor | None = None


class StudyStore:
    """Training studies of a cohort, eager or lazy (module notes).

    Parameters
    ----------
    entries:
        The training studies (manifest order = code order).
    config:
        The training settings (holdout fraction, seed, render, n_samples, l1_activity).
    device:
        Where the data go.
    cache_studies:
        0: hold every study; ``k >= 1``: hold at most ``k`` (least recently used dropped).
    anatomy:
        Build each study's anatomy features with this configuration, its vocabulary
        (``segment_names``) completed by the union of the studies' segment names in the order
        met; ``None``: none.
    organ_code:
        Fit each study's organs and hold its anchor (every study needs an anatomy); the fit of
        the first read gives `StudyInfo.organ_start`.
    organ_anchor:
        The anchor (`recon.nerf.organ_field.ANCHORS`): ``"organs"`` (QPlanar, remade on every
        read) or ``"residual"`` (organs + residual, made once, module notes).

    Attributes
    ----------
    infos:
        One `StudyInfo` per study.
    loads:
        Study files read for data since the first pass.
    max_held:
        The most studies held at once (the first pass included).
    anatomy:
        The completed anatomy feature configuration (``None`` without anatomy).
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        config: TrainConfig,
        device: torch.device,
        cache_studies: int = 0,
        anatomy: AnatomyFeatureConfig | None = None,
        organ_code: bool = False,
        organ_anchor: str = "organs",
    ) -> None:
        if organ_anchor not in ANCHORS:
            raise ValueError(f"organ_anchor must be one of {list(ANCHORS)}, got {organ_anchor!r}")
        if (
            isinstance(cache_studies, bool)
            or not isinstance(cache_studies, int)
            or cache_studies < 0
        ):
            raise ValueError(f"cache_studies must be an integer >= 0, got {cache_studies!r}")
        self.entries = tuple(entries)
        self.config = config
        self.device = device
        self.cache_studies = cache_studies
        self.organ_code = bool(organ_code)
        self.organ_anchor = organ_anchor
        self._held: OrderedDict[int, LoadedStudy] = OrderedDict()
        self.loads = 0
        self.max_held = 0
        self.infos: list[StudyInfo] = []
        self.anatomy: AnatomyFeatureConfig | None = None
        for s in range(len(self.entries)):
            loaded, info = self._load(s)
            self.infos.append(info)
            self._keep(s, loaded)
        if anatomy is not None:
            names = list(anatomy.segment_names)
            for info in self.infos:
                names += [n for n in info.segment_names if n not in names]
            self.anatomy = dataclasses.replace(anatomy, segment_names=tuple(names))
            for s, loaded in list(self._held.items()):
                self._held[s] = self._with_features(s, loaded)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def held(self) -> int:
        """Studies whose data are in memory now."""
        return len(self._held)

    def __getitem__(self, s: int) -> LoadedStudy:
        """The data of study ``s`` (read from its file if not held)."""
        if s in self._held:
            self._held.move_to_end(s)
            return self._held[s]
        loaded, info = self._load(s)
        if info.compartments != self.infos[s].compartments:
            raise ValueError(
                f"{self.entries[s].path}: its compartments changed since the first read "
                f"({list(self.infos[s].compartments)} → {list(info.compartments)})"
            )
        self.loads += 1
        loaded = self._with_features(s, loaded)
        self._keep(s, loaded)
        return loaded

    def _with_features(self, s: int, loaded: LoadedStudy) -> LoadedStudy:
        if self.anatomy is None:
            return loaded
        try:
            features = anatomy_features_for_study(loaded.data.study, self.anatomy)
        except ValueError as error:
            raise ValueError(f"{self.entries[s].path}: {error}") from None
        features = features.to(self.device)
        return dataclasses.replace(loaded, features=features)

    def _keep(self, s: int, loaded: LoadedStudy) -> None:
        self._held[s] = loaded
        self._held.move_to_end(s)
        if self.cache_studies:
            while len(self._held) > self.cache_studies:
                self._held.popitem(last=False)
        self.max_held = max(self.max_held, len(self._held))

    def _load(self, s: int) -> tuple[LoadedStudy, StudyInfo]:
        entry, t = self.entries[s], self.config
        study = read_entry(entry)
        try:
            physics = study_physics(study, t, "study")
        except ValueError as error:
            raise ValueError(f"{entry.path}: {error}") from None
        data = RayData(
            study, holdout_fraction=t.holdout_fraction, seed=t.seed, device=self.device,
            collimator=physics.response,
        )  # fmt: skip
        if len(data.train_lines) == 0:
            raise ValueError(f"{entry.path}: no training pixels (holdout_fraction leaves none)")
        try:
            level = data.activity_level()
        except ValueError as error:
            raise ValueError(f"{entry.path}: {error}") from None
        anchor: Anchor | None = None
        compartments: tuple[str, ...] = ()
        start: tuple[float, ...] = ()
        kept: Anchor | None = None
        earlier = self.infos[s] if s < len(self.infos) else None
        if self.organ_code and earlier is not None and earlier.kept_anchor is not None:
            kept, compartments, start = (
                earlier.kept_anchor,
                earlier.compartments,
                earlier.organ_start,
            )
            anchor = kept.to(self.device)
        elif self.organ_code:
            try:
                made = study_anchor(study, self.organ_anchor, device=self.device)
            except ValueError as error:
                raise ValueError(f"{entry.path}: organ code: {error}") from None
            anchor = made.anchor.to(self.device)
            compartments = made.names
            start = tuple(float(v) for v in made.log_concentration)
            kept = made.anchor if self.organ_anchor == "residual" else None
        truth = None
        if t.l1_activity > 0:
            if study.truth_activity is None:
                raise ValueError(
                    f"{entry.path}: l1_activity > 0 needs every training study's truth "
                    "activity, and this study has none"
                )
            truth = torch.as_tensor(study.truth_activity, dtype=torch.float32)
            truth = truth.reshape(-1).to(self.device)
        lines = data.train_lines
        paired = (data.opposed[lines] >= 0).long()
        if t.n_samples is None:
            per_line = torch.tensor(data.samples_per_view)[data.view[lines]]
        else:
            per_line = torch.full_like(lines, int(t.n_samples))
        info = StudyInfo(
            level=level, count_level=data.count_level(), digest=study_digest(study),
            views=physics.render == "views", note=physics.note, grid=data.geometry.grid,
            train_lines=lines.clone(), line_keys=paired * 2**20 + per_line,
            n_voxels=0 if truth is None else int(truth.numel()),
            segment_names=()
            if study.anatomy is None
            else tuple(study.anatomy.names[k] for k in sorted(study.anatomy.names)),
            compartments=compartments, organ_start=start, kept_anchor=kept,
        )  # fmt: skip
        return LoadedStudy(data, truth, anchor=anchor), info

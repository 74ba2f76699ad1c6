"""Organ and lesion errors of every method on phantom variants with the flaws of clinical data.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_anatomy.py [--size 64] [--timing-size 128] [--quick]
                                                 [--nerf-steps N] [--write-docs]
                                                 [--results FILE] [--reuse METHOD ...]
                                                 [--population N] [--population-only]
                                                 [--fine-size N] [--fine-only]
                                                 [--no-stress] [--stress-only]

Each case is a Lu-177 DOTATATE torso (`recon.data.phantoms.simulate_variant`) simulated on a grid
twice
as fine as the study's (no inverse crime), AP/PA with attenuation and the MEGP collimator blur,
2e6 counts per view, with: ±20 % smooth uptake heterogeneity inside the organs, lesions the
segmentation does not contain (moved by up to 15 mm and resized by up to ±30 %, seeded),
scatter (25 % of the primary counts, given to every method as the known background), and one
kind of segmentation error per case (one-voxel shifts, dilation, erosion). No setting of any
method was tuned on these cases.

Methods: MLEM in the body (50 iterations), the conjugate view over the anatomy's segments, the
organ fit (QPlanar), organs + residual, and the anatomy-conditioned NeRF (`--quick` leaves the
NeRF out). Truth: each structure's activity summed over its own sub-voxels on the simulation grid
(the study's ``truth_activity_mbq`` provenance). Organ error: liver, spleen and both kidneys.
Lesion error: the lesions of >= 5 mL; "found" means a residual source within 2 voxels in-plane
(x, z) of the lesion's centre (the issue's criterion; the depth error of each found lesion is
reported beside it). "Other sources": reported lesions (sources not counted in an organ) that lie
within 2 voxels in-plane of no lesion of the phantom (of any size): false lesions.

The timing section times the organ fit and organs + residual on one ``--timing-size``³ case on
this machine (2 torch threads). ``--write-docs`` puts the tables into ``docs/anatomy.md`` between
``<!-- bench-anatomy:begin -->`` and ``<!-- bench-anatomy:end -->``: nothing there is typed by
hand. Every full run keeps the per-case scores in ``--results``
(``benchmarks/results/anatomy.json``); ``--reuse METHOD`` takes a method that did not change
from there instead of running it again (the NeRF takes most of the time), and the table names
the run each reused row comes from.

The fine-grid section (``--fine-size N``, default 128; ``--fine-only`` runs nothing else) runs
the organ fit and organs + residual on the same five cases at N³ (3.125 mm voxels at 128³):
a method's scales must not be tied to one voxel size.

The population section (``--population N``, default 6; ``--population-only`` runs nothing else)
runs the organ fit and organs + residual on N anatomies drawn from the phantom population
(`recon.data.phantoms.population`, Lu-177 DOTATATE, seed `POPULATION_SEED`): bodies, organ
sizes, poses and uptakes, lesion sites and uptakes, CT numbers and segmentation errors that no
choice of the method was made on. Its lesions are scored like the cases' when their drawn
concentration is at least `VISIBLE_CONTRAST` times their host's; fainter ones are listed with
their contrast (below it the method counts a lesion's activity in its organ, by design).

The stress section (on by default, ``--no-stress`` leaves it out, ``--stress-only`` runs
nothing else) changes one thing of the standard case at a time (`STRESS`: counts, scatter,
the scale and amount of the uneven uptake, a larger segmentation shift, a finer grid, the
Tc-99m torso) and runs the organ fit and organs + residual on three cases of each, one per
segmentation error of `STRESS_ERRORS`, with seeds no choice of the method was made on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.anatomy import OrgansConfig, reconstruct_organs  # noqa: E402
from recon.anatomy.quantify import structure_truth_mbq  # noqa: E402
from recon.anatomy.reconstruct import LESION_CONTRAST, reconstruct_conjugate  # noqa: E402
from recon.data.phantoms import FIRST_LESION_LABEL, TorsoPhantom  # noqa: E402
from recon.data.phantoms.variants import PhantomVariant, simulate_variant, vary_lesions  # noqa: E402
from recon.io import Result, Study  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import write_docs, write_record  # noqa: E402

DOCS = ROOT / "docs" / "anatomy.md"
#: Population members for the unseen-anatomy table: a seed no choice of the method was made on.
POPULATION_SEED = 2027

#: The stress section: each condition changes one thing of the standard case (Lu-177 DOTATATE,
#: 64³, 2e6 counts per view, 25 % scatter, ±20 % heterogeneity at 30 mm); each runs on the
#: segmentation errors of `STRESS_ERRORS`, with seeds from `STRESS_SEED` (used nowhere else).
#: A condition is ``(name, simulation settings, variant overrides)``; the settings may name
#: ``preset`` (``"tc99m"``: the Tc-99m torso, simulated at 140 keV with LEHR), ``size`` and
#: ``counts_per_view``.
STRESS: tuple[tuple[str, dict[str, object], dict[str, object]], ...] = (
    ("standard case", {}, {}),
    ("5e5 counts per view", {"counts_per_view": 5e5}, {}),
    ("1e7 counts per view", {"counts_per_view": 1e7}, {}),
    ("no scatter", {}, {"scatter_fraction": 0.0}),
    ("40 % scatter", {}, {"scatter_fraction": 0.4}),
    ("heterogeneity at 15 mm", {}, {"heterogeneity_mm": 15.0}),
    ("heterogeneity ±30 %", {}, {"heterogeneity_rms": 0.3}),
    ("segmentation shifted 2 voxels", {}, {"seg_shift_vox": (0, 0, 2)}),
    ("96³ grid (4.2 mm)", {"size": 96}, {}),
    ("Tc-99m torso", {"preset": "tc99m"}, {}),
)
STRESS_ERRORS: tuple[dict[str, object], ...] = (
    {"seg_random_shift": True},
    {"seg_shift_vox": (0, 0, 1)},
    {"seg_erode_vox": 1},
)
STRESS_SEED = 101
#: The methods of the fine-grid, population and stress sections.
ORGAN_METHODS: tuple[tuple[str, OrgansConfig], ...] = (
    ("organ fit", OrgansConfig(residual=False)),
    ("organs + residual", OrgansConfig()),
)
#: A lesion is visible against its host when its concentration is at least this multiple of the
#: host's (`recon.anatomy.reconstruct.LESION_CONTRAST`: below, its counts belong to the organ).
VISIBLE_CONTRAST = LESION_CONTRAST
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
MIN_LESION_ML = 5.0
NERF = "anatomy-conditioned NeRF"
METHODS = ("MLEM in the body", "conjugate view", "organ fit", "organs + residual", NERF)
RESULTS = ROOT / "benchmarks" / "results" / "anatomy.json"

#: The cases: a name and the segmentation error (all share the other flaws).
CASES: tuple[tuple[str, dict[str, object]], ...] = (
    ("random 1-voxel shift per organ", {"seg_random_shift": True, "seed": 11}),
    ("whole segmentation shifted 1 voxel (x)", {"seg_shift_vox": (0, 0, 1), "seed": 12}),
    ("segments dilated 1 voxel", {"seg_dilate_vox": 1, "seed": 13}),
    ("segments eroded 1 voxel", {"seg_erode_vox": 1, "seed": 14}),
    (
        "necrotic lesions, random shifts",
        {"necrotic_lesions": True, "seg_random_shift": True, "seed": 15},
    ),
)
COMMON: dict[str, object] = {
    "heterogeneity_rms": 0.2,
    "unsegmented_lesions": True,
    "lesion_jitter_mm": 15.0,
    "lesion_size_jitter": 0.3,
    "scatter_fraction": 0.25,
}


@dataclass
class Score:
    """Errors (%) of one method on one case."""

    organ_errors: dict[str, float] = field(default_factory=dict)
    lesion_errors: dict[str, float] = field(default_factory=dict)
    lesions_found: dict[str, bool | None] = field(default_factory=dict)
    depth_errors_mm: dict[str, float] = field(default_factory=dict)
    other_sources: int | None = None
    seconds: float = math.nan
    #: |error| / the table's sd (its total, and its count part only), per organ and per found
    #: lesion: how many sds off the method was by its own account.
    organ_z: dict[str, tuple[float, float]] = field(default_factory=dict)
    lesion_z: dict[str, tuple[float, float]] = field(default_factory=dict)


def case_study(size: int, overrides: dict[str, object]) -> tuple[Study, PhantomVariant]:
    variant = PhantomVariant(**{**COMMON, **overrides})  # type: ignore[arg-type]
    study = simulate_variant(TorsoPhantom.lu177_dotatate(), variant, size=size)
    return study, variant


def truth_of(study: Study) -> dict[str, float]:
    """Each structure's exact activity (MBq), as `spect quantify` takes it."""
    return structure_truth_mbq(study)


def large_lesions(
    variant: PhantomVariant, phantom: TorsoPhantom | None = None
) -> dict[str, tuple[float, float, float]]:
    """Lesions of >= 5 mL of ``phantom`` (default the Lu-177 DOTATATE torso) as ``variant``
    moves and resizes them: name → centre (x, y, z) mm."""
    config = vary_lesions(phantom or TorsoPhantom.lu177_dotatate(), variant)
    names = config.label_names()
    out = {}
    for k, lesion in enumerate(config.lesions):
        if lesion.volume_ml >= MIN_LESION_ML:
            z, y, x = lesion.centre_mm
            name = names[FIRST_LESION_LABEL + k]
            out[name] = (x, y, z)
    return out


def torso_contrast(phantom: TorsoPhantom, name: str) -> float:
    """A torso lesion's concentration over its host's (the liver for ``lesion_liver_*``, else
    the soft-tissue background)."""
    host = phantom.liver if name.startswith("lesion_liver") else phantom.body
    return phantom.concentration(name) / host


def score_voxels(study: Study, result: Result, lesions: dict[str, object]) -> Score:
    """Activity inside each anatomy segment and inside each truth lesion's mask."""
    truth = truth_of(study)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    activity = np.asarray(result.activity, dtype=np.float64)
    anatomy = study.anatomy
    assert anatomy is not None
    score = Score()
    for organ in ORGANS:
        mbq = float(activity[anatomy.mask(organ)].sum()) * voxel_ml * 1e-6
        score.organ_errors[organ] = 100.0 * (mbq / truth[organ] - 1.0)
    labels = np.asarray(study.labels)
    for name in lesions:
        value = next(v for v, n in study.label_names.items() if n == name)
        mbq = float(activity[labels == value].sum()) * voxel_ml * 1e-6
        score.lesion_errors[name] = 100.0 * (mbq / truth[name] - 1.0)
        score.lesions_found[name] = None
    return score


def score_table(
    study: Study, result: Result, lesions: dict[str, tuple[float, float, float]]
) -> Score:
    """The method's own organ table, and its sources matched to the lesions."""
    truth = truth_of(study)
    table = {row["name"]: row for row in result.parameters["organ_table"]}  # type: ignore[union-attr]
    sources = result.parameters.get("sources") or []
    score = Score()
    for organ in ORGANS:
        score.organ_errors[organ] = 100.0 * (table[organ]["activity_mbq"] / truth[organ] - 1.0)
        score.organ_z[organ] = z_scores(table[organ], truth[organ])
    dz, _, dx = study.grid.spacing_mm

    def in_plane(source: dict[str, object], x: float, z: float) -> float:
        sx, _, sz = source["centre_mm"]  # type: ignore[misc]
        return math.hypot((sx - x) / dx, (sz - z) / dz)

    for name, (x, y, z) in lesions.items():
        near = [(in_plane(s, x, z), s) for s in sources]  # type: ignore[union-attr]
        near = [pair for pair in near if pair[0] <= 2.0]
        best = min(near, key=lambda pair: pair[0])[1] if near else None
        mbq = float(best["activity_mbq"]) if best is not None else 0.0  # type: ignore[arg-type]
        score.lesion_errors[name] = 100.0 * (mbq / truth[name] - 1.0)
        score.lesions_found[name] = best is not None
        if best is not None:
            score.depth_errors_mm[name] = float(best["centre_mm"][1]) - y  # type: ignore[index]
            score.lesion_z[name] = z_scores(best, truth[name])
    every = list(all_lesions(study).values())
    score.other_sources = sum(
        1
        for s in sources  # type: ignore[union-attr]
        if not any(in_plane(s, x, z) <= 2.0 for x, _, z in every)
    )
    return score


def z_scores(row: dict[str, Any], truth_mbq: float) -> tuple[float, float]:
    """|activity − truth| of a table row in units of its sd: the total, and the count part."""
    miss = abs(float(row["activity_mbq"]) - truth_mbq)
    total, counts = float(row["activity_sd_mbq"]), float(row["activity_sd_counts_mbq"])
    return miss / total if total > 0 else math.inf, miss / counts if counts > 0 else math.inf


def coverage_cells(scored: list[tuple[Score, dict[str, float]]]) -> str:
    """How often the truth lies within the method's reported sd over cases (markdown cells):
    organs within 1 sd, within 2 sd, within 2 count sds; the same for the found lesions."""

    def cells(z: list[tuple[float, float]]) -> str:
        if not z:
            return "– | – | –"
        n = len(z)
        one, two = (sum(t <= k for t, _ in z) for k in (1.0, 2.0))
        counts = sum(c <= 2.0 for _, c in z)
        return f"{one}/{n} | {two}/{n} | {counts}/{n}"

    organs = [z for s, _ in scored for z in s.organ_z.values()]
    lesions = [z for s, _ in scored for z in s.lesion_z.values()]
    return f"{cells(organs)} | {cells(lesions)}"


COVERAGE_HEADER = (
    "organs within 1 sd | within 2 sd | within 2 count sds | lesions within 1 sd | within 2 sd "
    "| within 2 count sds |"
)


def all_lesions(study: Study) -> dict[str, tuple[float, float, float]]:
    """Every lesion of the phantom (any size) that holds a voxel of the study's labels: name →
    centre of mass (x, y, z) mm."""
    labels = np.asarray(study.labels)
    centres = [np.asarray(study.grid.centres_mm(a)) for a in range(3)]
    out = {}
    for value, name in study.label_names.items():
        where = np.nonzero(labels == value)
        if str(name).startswith("lesion") and where[0].size:
            z, y, x = (float(centres[a][idx].mean()) for a, idx in enumerate(where))
            out[str(name)] = (x, y, z)
    return out


def _radius_mm(study: Study, name: str) -> float:
    value = next(v for v, n in study.label_names.items() if n == name)
    volume = float((np.asarray(study.labels) == value).sum()) * study.grid.voxel_volume_mm3
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


def run_mlem(study: Study) -> Result:
    from recon.algorithms.mlem import EMConfig, em_reconstruct
    from recon.support import resolve_support

    mask, _ = resolve_support(study, "body")
    em = em_reconstruct(
        torch.as_tensor(study.projections),
        study.geometry(),
        EMConfig(iterations=50),
        mu=torch.as_tensor(study.mu_per_mm),
        collimator=study.collimator_response(),
        background=None if study.background is None else torch.as_tensor(study.background),
        count_scale=study.acquisition.count_scale,
        mask=torch.as_tensor(mask),
    )
    return Result(em.activity.detach().numpy().astype(np.float32), study.grid, "mlem")


def run_nerf(study: Study, steps: int) -> Result:
    from recon.nerf.anatomy_field import AnatomyFieldConfig, anatomy_field_for_study
    from recon.nerf.config import TrainConfig
    from recon.nerf.export import sample_on_grid
    from recon.nerf.training import fit

    config = TrainConfig.cpu_default()
    config = TrainConfig.from_dict({"steps": steps, "holdout_fraction": 0.0}, base=config)
    field_model = anatomy_field_for_study(study, AnatomyFieldConfig(field=config.field))
    outcome = fit(field_model, study, config)
    volume = sample_on_grid(outcome.representation, study.grid)
    return Result(np.asarray(volume, dtype=np.float32), study.grid, "anatomy-nerf")


def run_case(
    size: int, name: str, overrides: dict[str, object], nerf_steps: int, skip: set[str]
) -> dict[str, Score]:
    """Every method (but those in ``skip``) on one case."""
    study, variant = case_study(size, overrides)
    lesions = large_lesions(variant)

    def conjugate() -> Score:
        score = score_table(study, reconstruct_conjugate(study), {})
        score.lesion_errors = {n: -100.0 for n in lesions}
        score.lesions_found = {n: None for n in lesions}
        return score

    methods = {
        "MLEM in the body": lambda: score_voxels(study, run_mlem(study), lesions),
        "conjugate view": conjugate,
        "organ fit": lambda: score_table(
            study, reconstruct_organs(study, config=OrgansConfig(residual=False)).result, lesions
        ),
        "organs + residual": lambda: score_table(study, reconstruct_organs(study).result, lesions),
    }
    if nerf_steps > 0:
        methods[NERF] = lambda: score_voxels(study, run_nerf(study, nerf_steps), lesions)
    scores: dict[str, Score] = {}
    for method, run in methods.items():
        if method in skip:
            continue
        t0 = time.perf_counter()
        scores[method] = run()
        scores[method].seconds = time.perf_counter() - t0
    print(
        f"  {name}: "
        + "; ".join(
            f"{m} {np.mean(np.abs(list(s.organ_errors.values()))):.1f} %" for m, s in scores.items()
        ),
        flush=True,
    )
    return scores


def reused_scores(
    path: Path, methods: list[str], size: int, nerf_steps: int
) -> tuple[dict[str, dict[str, Score]], dict[str, str]]:
    """Scores of ``methods`` per case from an earlier run's results file, and when each method
    was measured."""
    record = json.loads(path.read_text(encoding="utf-8"))
    if (record["size"], record["nerf_steps"]) != (size, nerf_steps):
        raise SystemExit(
            f"{path}: measured at size {record['size']} with {record['nerf_steps']} NeRF steps, "
            f"not {size} / {nerf_steps}: run those methods again"
        )
    out: dict[str, dict[str, Score]] = {}
    for case, _ in CASES:
        stored = record["cases"].get(case, {})
        missing = [m for m in methods if m not in stored]
        if missing:
            raise SystemExit(f"{path}: case {case!r} has no scores of {missing}")
        out[case] = {m: Score(**stored[m]) for m in methods}
    return out, {m: str(record["measured"].get(m, record["date"])) for m in methods}


def summary_table(all_scores: list[dict[str, Score]]) -> str:
    methods = list(all_scores[0])
    lines = [
        "| method | mean \\|organ error\\| | largest \\|organ error\\| | mean \\|lesion error\\| "
        "(≥ 5 mL) | lesions within ±30 % | lesions found | mean \\|depth error\\| of found "
        "lesions | other sources (false lesions) | time per case |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in methods:
        organ = [abs(v) for s in all_scores for v in s[m].organ_errors.values()]
        lesion = [abs(v) for s in all_scores for v in s[m].lesion_errors.values()]
        found = [f for s in all_scores for f in s[m].lesions_found.values()]
        within = sum(1 for v in lesion if v <= 30.0)
        found_text = (
            "–" if all(f is None for f in found) else f"{sum(bool(f) for f in found)}/{len(found)}"
        )
        depth = [abs(v) for s in all_scores for v in s[m].depth_errors_mm.values()]
        depth_text = f"{np.mean(depth):.0f} mm" if depth else "–"
        others = [s[m].other_sources for s in all_scores]
        others_text = "–" if any(o is None for o in others) else str(sum(others))  # type: ignore[misc]
        seconds = np.mean([s[m].seconds for s in all_scores])
        lines.append(
            f"| {m} | {np.mean(organ):.1f} % | {np.max(organ):.1f} % | {np.mean(lesion):.0f} % "
            f"| {within}/{len(lesion)} | {found_text} | {depth_text} | {others_text} "
            f"| {seconds:.1f} s |"
        )
    return "\n".join(lines)


def detail_table(cases: list[str], all_scores: list[dict[str, Score]]) -> str:
    lines = [
        "| case | method | liver | spleen | kidney L | kidney R | lesions (≥ 5 mL) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for case, scores in zip(cases, all_scores, strict=True):
        for m, s in scores.items():
            e = s.organ_errors
            lesions = ", ".join(
                f"{n.removeprefix('lesion_')} {v:+.0f} %"
                + ("" if s.lesions_found[n] is not False else " (not found)")
                + (f" (depth {s.depth_errors_mm[n]:+.0f} mm)" if n in s.depth_errors_mm else "")
                for n, v in s.lesion_errors.items()
            )
            lines.append(
                f"| {case} | {m} | {e['liver']:+.1f} % | {e['spleen']:+.1f} % | "
                f"{e['kidney_left']:+.1f} % | {e['kidney_right']:+.1f} % | {lesions} |"
            )
    return "\n".join(lines)


def timing(size: int) -> str:
    study, _ = case_study(size, dict(CASES[0][1]))
    t0 = time.perf_counter()
    reconstruct_organs(study, config=OrgansConfig(residual=False))
    organ_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reconstruct_organs(study)
    residual_s = time.perf_counter() - t0
    return (
        f"| study | organ fit | organs + residual |\n| --- | ---: | ---: |\n"
        f"| {size}³, AP/PA, MEGP blur, torch threads {torch.get_num_threads()} | "
        f"{organ_s:.2f} s | {residual_s:.1f} s |"
    )


def population_case(index: int, size: int) -> tuple[Study, dict[str, tuple[float, ...]],
                                                    dict[str, float]]:  # fmt: skip
    """Member ``index`` of the Lu-177 DOTATATE population for `POPULATION_SEED`: the study, its
    lesions of >= 5 mL (name → centre (x, y, z) mm) and each one's contrast (its concentration
    over its host structure's, both as drawn)."""
    from recon.data.phantoms.population import PopulationConfig, sample_torso, simulate_sample

    sample = sample_torso(PopulationConfig(tracer="lu177-dotatate"), POPULATION_SEED, index)
    study = simulate_sample(sample, size=size)
    names = sample.phantom.label_names()
    where = all_lesions(study)  # centres of mass on the study grid (x, y, z)
    centres, contrast = {}, {}
    for k, lesion in enumerate(sample.phantom.lesions):
        name = names[FIRST_LESION_LABEL + k]
        if lesion.volume_ml < MIN_LESION_ML or name not in where:
            continue
        host = name.split("_", 2)[-1]  # lesion_<k>_<host>
        centres[name] = where[name]
        contrast[name] = lesion.concentration / float(getattr(sample.phantom, host))
    return study, centres, contrast


def lesion_columns(scored: list[tuple[Score, dict[str, float]]]) -> str:
    """The lesion columns of a method over cases (each its `Score` and its lesions' contrasts):
    visible lesions within ±30 %, found, their mean |error|, other sources (markdown cells)."""
    visible = [(s, n) for s, c in scored for n in s.lesion_errors if c[n] >= VISIBLE_CONTRAST]
    errors = [abs(s.lesion_errors[n]) for s, n in visible]
    found = sum(bool(s.lesions_found[n]) for s, n in visible)
    others = sum(s.other_sources or 0 for s, _ in scored)
    mean_err = f"{np.mean(errors):.0f} %" if errors else "–"
    return (
        f"{sum(e <= 30.0 for e in errors)}/{len(errors)} | {found}/{len(errors)} | {mean_err} "
        f"| {others}"
    )


def population(size: int, members: int) -> str:
    """The organ fit and organs + residual on ``members`` population anatomies: summary and
    per-member tables (markdown)."""
    rows: dict[str, list[tuple[Score, dict[str, float]]]] = {m: [] for m, _ in ORGAN_METHODS}
    for index in range(members):
        study, lesions, contrast = population_case(index, size)
        for method, config in ORGAN_METHODS:
            t0 = time.perf_counter()
            score = score_table(study, reconstruct_organs(study, config=config).result, lesions)
            score.seconds = time.perf_counter() - t0
            rows[method].append((score, contrast))
        print(f"  population member {index}: done", flush=True)
    lines = [
        "| method | mean \\|organ error\\| | largest \\|organ error\\| | visible lesions "
        f"(≥ 5 mL, contrast ≥ {VISIBLE_CONTRAST:g}) within ±30 % | found | their mean \\|error\\| "
        "| other sources (false lesions) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, scored in rows.items():
        organ = [abs(v) for s, _ in scored for v in s.organ_errors.values()]
        lines.append(
            f"| {method} | {np.mean(organ):.1f} % | {np.max(organ):.1f} % "
            f"| {lesion_columns(scored)} |"
        )
    detail = [
        "| member | liver | spleen | kidney L | kidney R | lesions (≥ 5 mL): error, contrast |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for index, (score, contrast) in enumerate(rows["organs + residual"]):
        e = score.organ_errors
        lesions = (
            ", ".join(
                f"{n.removeprefix('lesion_')} {v:+.0f} % ({contrast[n]:.1f}:1"
                + ("" if score.lesions_found[n] else ", not found")
                + ")"
                for n, v in score.lesion_errors.items()
            )
            or "none"
        )
        detail.append(
            f"| {index} | {e['liver']:+.1f} % | {e['spleen']:+.1f} % | {e['kidney_left']:+.1f} % "
            f"| {e['kidney_right']:+.1f} % | {lesions} |"
        )
    coverage = [
        "The truth within each method's sd (count and model parts) and within its count part:",
        "",
        f"| method | {COVERAGE_HEADER}",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {method} | {coverage_cells(scored)} |" for method, scored in rows.items()),
    ]
    return (
        "\n".join(lines)
        + "\n\n"
        + "\n".join(coverage)
        + "\n\nOrgans + residual per member:\n\n"
        + "\n".join(detail)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="study grid (voxels per axis)")
    parser.add_argument("--timing-size", type=int, default=128, help="grid of the timing case")
    parser.add_argument("--nerf-steps", type=int, default=1500, help="anatomy NeRF steps")
    parser.add_argument("--quick", action="store_true", help="two cases, no NeRF, no timing")
    parser.add_argument("--write-docs", action="store_true", help="update docs/anatomy.md")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="per-case scores of every method (JSON)"
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="METHOD",
        help="take this method's scores from --results instead of running it (a method that "
        "did not change since; the tables say so)",
    )
    parser.add_argument(
        "--population",
        type=int,
        default=6,
        metavar="N",
        help=f"also run the organ fit and organs + residual on N anatomies of the phantom "
        f"population (seed {POPULATION_SEED}; 0: none)",
    )
    parser.add_argument("--population-only", action="store_true", help="only the population table")
    parser.add_argument(
        "--fine-size",
        type=int,
        default=128,
        metavar="N",
        help="also run the organ fit and organs + residual on the five cases at N³ (0: no)",
    )
    parser.add_argument("--fine-only", action="store_true", help="only the fine-grid table")
    parser.add_argument(
        "--stress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the organ fit and organs + residual under each condition of STRESS",
    )
    parser.add_argument("--stress-only", action="store_true", help="only the stress table")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.population_only or args.fine_only or args.stress_only:
        if args.fine_only:
            write_fine(args)
        if args.population_only:
            write_population(args)
        if args.stress_only:
            write_stress(args)
        return
    cases = CASES[:2] if args.quick else CASES
    nerf_steps = 0 if args.quick else args.nerf_steps
    reused: dict[str, dict[str, Score]] = {}
    measured: dict[str, str] = {}
    reused_note = ""
    if args.reuse:
        reused, measured = reused_scores(args.results, args.reuse, args.size, nerf_steps)
        reused_note = (
            " Rows taken from earlier runs of this script (`--reuse`): "
            + "; ".join(f"{m}, measured {measured[m]}" for m in args.reuse)
            + "."
        )
    t_start = time.perf_counter()
    all_scores = []
    for name, overrides in cases:
        scores = run_case(args.size, name, overrides, nerf_steps, set(args.reuse))
        order = [m for m in METHODS if m in scores or m in reused.get(name, {})]
        merged = {**scores, **reused.get(name, {})}
        all_scores.append({m: merged[m] for m in order})
    summary = summary_table(all_scores)
    detail = detail_table([c[0] for c in cases], all_scores)
    timing_table = "" if args.quick else timing(args.timing_size)
    stamp = time.strftime("%Y-%m-%d")
    block = (
        f"Measured by `benchmarks/bench_anatomy.py` on {stamp} ({len(cases)} cases at "
        f"{args.size}³, {time.perf_counter() - t_start:.0f} s in all on this machine's 2 CPU "
        f"cores).{reused_note}\n\n{summary}\n\nPer case (signed errors; lesions: the ≥ 5 mL "
        f"ones):\n\n{detail}\n"
    )
    if timing_table:
        block += f"\nTiming at {args.timing_size}³:\n\n{timing_table}\n"
    print("\n" + block)
    if not args.quick:
        record = {
            "size": args.size,
            "nerf_steps": nerf_steps,
            "date": stamp,
            "measured": {m: measured.get(m, stamp) for m in METHODS},
            "cases": {
                case: {m: asdict(score) for m, score in scores.items()}
                for (case, _), scores in zip(cases, all_scores, strict=True)
            },
        }
        write_record(args.results, record, overwrite=True)
        print(f"wrote {args.results}")
    if args.write_docs:
        write_docs({"anatomy": block}, DOCS)
        print(f"wrote the tables into {DOCS}")
    if not args.quick:
        write_fine(args)
        write_population(args)
        write_stress(args)


def fine_grid(size: int) -> str:
    """The organ fit and organs + residual on the five cases at ``size``³ (markdown table)."""
    lines = [
        "| case | method | liver | spleen | kidney L | kidney R | lesions (≥ 5 mL) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    organ: dict[str, list[float]] = {m: [] for m, _ in ORGAN_METHODS}
    lesion: list[float] = []
    for name, overrides in CASES:
        study, variant = case_study(size, dict(overrides))
        lesions = large_lesions(variant)
        for method, config in ORGAN_METHODS:
            score = score_table(study, reconstruct_organs(study, config=config).result, lesions)
            e = score.organ_errors
            organ[method] += [abs(v) for v in e.values()]
            if method == "organs + residual":
                lesion += [abs(v) for v in score.lesion_errors.values()]
                text = ", ".join(
                    f"{n.removeprefix('lesion_')} {v:+.0f} %"
                    + ("" if score.lesions_found[n] else " (not found)")
                    for n, v in score.lesion_errors.items()
                )
                lines.append(
                    f"| {name} | {method} | {e['liver']:+.1f} % | {e['spleen']:+.1f} % | "
                    f"{e['kidney_left']:+.1f} % | {e['kidney_right']:+.1f} % | {text} |"
                )
        print(f"  {name} at {size}³: done", flush=True)
    fit, both = organ["organ fit"], organ["organs + residual"]
    summary = (
        f"Over the five cases: organ fit {np.mean(fit):.1f} % mean / {np.max(fit):.1f} % largest "
        f"organ error; organs + residual {np.mean(both):.1f} % / {np.max(both):.1f} %, lesions "
        f"{np.mean(lesion):.0f} % mean, {sum(v <= 30.0 for v in lesion)}/{len(lesion)} within "
        "±30 %."
    )
    return summary + "\n\n" + "\n".join(lines)


def stress_case(
    settings: dict[str, object], overrides: dict[str, object], seed: int
) -> tuple[Study, dict[str, tuple[float, float, float]], dict[str, float]]:
    """One case of a stress condition: the study, its lesions of >= 5 mL (name → centre
    (x, y, z) mm) and each one's contrast against its host."""
    settings = dict(settings)
    tc99m = settings.pop("preset", None) == "tc99m"
    phantom = TorsoPhantom.tc99m() if tc99m else TorsoPhantom.lu177_dotatate()
    size = int(settings.pop("size", 64))  # type: ignore[call-overload]
    variant = PhantomVariant(**{**COMMON, **overrides, "seed": seed})  # type: ignore[arg-type]
    study = simulate_variant(phantom, variant, size=size, **settings)  # type: ignore[arg-type]
    lesions = large_lesions(variant, phantom)
    moved = vary_lesions(phantom, variant)
    return study, lesions, {n: torso_contrast(moved, n) for n in lesions}


def stress() -> str:
    """The organ fit and organs + residual under each condition of `STRESS` (markdown table)."""
    lines = [
        r"| condition | organ fit: mean / largest \|organ error\| | organs + residual: mean "
        f"/ largest | visible lesions (≥ 5 mL, contrast ≥ {VISIBLE_CONTRAST:g}) within ±30 % "
        r"| found | their mean \|error\| | other sources (false lesions) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    coverage = [
        "Organs + residual: the truth within the table's sd (its count and model parts, "
        "`recon.anatomy.uncertainty`) and within its count part alone:",
        "",
        f"| condition | {COVERAGE_HEADER}",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    every: list[tuple[Score, dict[str, float]]] = []
    every_fit: list[tuple[Score, dict[str, float]]] = []
    seed = STRESS_SEED
    for name, settings, overrides in STRESS:
        scored: dict[str, list[tuple[Score, dict[str, float]]]] = {m: [] for m, _ in ORGAN_METHODS}
        for errors_kind in STRESS_ERRORS:
            study, lesions, contrast = stress_case(settings, {**errors_kind, **overrides}, seed)
            seed += 1
            for method, config in ORGAN_METHODS:
                result = reconstruct_organs(study, config=config).result
                scored[method].append((score_table(study, result, lesions), contrast))
        fit, both = (
            [abs(v) for s, _ in scored[m] for v in s.organ_errors.values()] for m in scored
        )
        lines.append(
            f"| {name} | {np.mean(fit):.1f} % / {np.max(fit):.1f} % | {np.mean(both):.1f} % / "
            f"{np.max(both):.1f} % | {lesion_columns(scored['organs + residual'])} |"
        )
        residual = scored["organs + residual"]
        coverage.append(f"| {name} | {coverage_cells(residual)} |")
        every.extend(residual)
        every_fit.extend(scored["organ fit"])
        print(f"  {name}: done", flush=True)
    coverage.append(f"| **all conditions** | {coverage_cells(every)} |")
    coverage.append(f"| all conditions, organ fit | {coverage_cells(every_fit)} |")
    return "\n".join(lines) + "\n\n" + "\n".join(coverage)


def write_stress(args: argparse.Namespace) -> None:
    """The stress table (``--stress``)."""
    if args.stress:
        what = (
            f"{len(STRESS)} conditions, {len(STRESS_ERRORS)} cases each, seeds from {STRESS_SEED}"
        )
        write_section(args, "anatomy-stress", what, stress)


def write_fine(args: argparse.Namespace) -> None:
    """The fine-grid table (``--fine-size``)."""
    if args.fine_size > 0:
        what = f"the five cases at {args.fine_size}³"
        write_section(args, "anatomy-fine", what, lambda: fine_grid(args.fine_size))


def write_population(args: argparse.Namespace) -> None:
    """The population table (``--population``)."""
    if args.population > 0:
        what = (
            f"{args.population} members of the population for seed {POPULATION_SEED} at "
            f"{args.size}³"
        )
        write_section(
            args, "anatomy-population", what, lambda: population(args.size, args.population)
        )


def write_section(
    args: argparse.Namespace, name: str, what: str, tables: Callable[[], str]
) -> None:
    """Measure a section's tables, print them, and with ``--write-docs`` put them into block
    ``name`` of docs/anatomy.md."""
    t_start = time.perf_counter()
    body = tables()
    block = (
        f"Measured by `benchmarks/bench_anatomy.py` on {time.strftime('%Y-%m-%d')} ({what}, "
        f"{time.perf_counter() - t_start:.0f} s in all on this machine's 2 CPU cores).\n\n"
        f"{body}\n"
    )
    print("\n" + block)
    if args.write_docs:
        write_docs({name: block}, DOCS)
        print(f"wrote block {name} into {DOCS}")


if __name__ == "__main__":
    main()

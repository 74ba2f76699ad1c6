"""Does an anatomy-conditioned cohort prior carry over to anatomies it has never seen?

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_cohort_prior.py [--size 32] [--train-sizes 8,32]
        [--cohort-steps 300] [--fit-steps 200] [--l1 0.05] [--workers 2] [--json FILE]
        [--write-docs]

**Data.** A phantom population (`recon.data.phantoms.population`, Lu-177 DOTATATE, ``--seed``):
every member is an anatomy of its own (body, organ sizes, positions, rotations, uptake, lesions,
heterogeneity, segmentation errors, synthetic CT), simulated AP/PA from a grid twice as fine
(MEGP blur, 1–4e6 counts per view). The split is **by anatomy**: members ``0 … n_test − 1`` are
the test set, the next ``n_val`` validate the cohort training, the rest train; a training set of
size N is the first N training members (so the 8 are inside the 32). The imported patient-15
phantom (`recon.io.patient15.patient15_study`, never in training; skipped without
``/work/shared/data``) is a second test: Poisson counts at 2e6 per view, its organs (liver,
spleen, kidneys) as the segmentation, its three tumours unsegmented.

**Methods**, each given only the test study (projections, μ/CT, segmentation), with the same
step budget ``--fit-steps`` for every NeRF:

* single-study NeRF: the anatomy-conditioned NeRF from scratch (`recon.nerf.anatomy_field`,
  the cohort's architecture);
* organs + residual (`recon.anatomy.reconstruct_organs`, its defaults);
* organ fit (QPlanar): `reconstruct_organs` without the residual, the reference of the organ
  code (its anchor);
* prior (code): the anatomy-conditioned cohort model, only the new study's latent code fitted
  (`recon.cohort.fit_with_prior`);
* prior + fine-tune: half the steps on the code, then every weight at a tenth of the rate;
* prior (organ code) and prior (organ code) + fine-tune: the same with the organ-code cohort
  model (`CohortConfig.organ_code`): the code is the study's organ log-concentrations, started
  at its organ fit, and the latent code (``--organ-bound``, ``--no-organ-residual``);
* prior (residual anchor) and + fine-tune: the organ-code cohort anchored on each study's
  organs + residual fit (`CohortConfig.organ_anchor` ``"residual"``: refined compartments and
  residual sources, each source a component of the code), its modulation normalised per
  component (``--anchor-normalise``) and without the residual head (``--anchor-head``),
  ``B = --anchor-bound``; the reference for it is *organs + residual, volume*, the anchor itself
  scored like the NeRFs, on its activity volume.

The cohort models are anatomy-conditioned (`CohortConfig.anatomy`), trained with 3D
supervision (``l1_activity = --l1`` on the training phantoms' truth; 0 turns it off, recorded in
the record), reading their studies lazily (``cache_studies``) with ``studies_per_step``. The
cohorts are trained, and the test studies evaluated, in ``--workers`` processes of one thread.

**Scores.** Organ error: activity in each segment of the study's segmentation (liver, spleen,
kidneys) against the true activity of the organ; the mean |error| over organs and test studies.
Lesion error: lesions of ≥ 5 mL (patient 15: its three tumours), activity in the true lesion mask
(organs + residual: its matched residual source), mean |error|. Every method is scored on its
activity volume (`score_voxels`) except organs + residual, scored on its own table
(`score_table`: organ activities with the sources counted in, lesions from its sources). The
residual-anchor rows are scored both ways: on their volume, and (rows marked ``table``) on the
same kind of table (`code_table`).

``--reuse FILE`` keeps the rows of the cohort kinds of an earlier record that this run does not
train (``--kinds``), and its throughput, and says so in the docs block; the references are
always measured in the run. ``--no-single-nerf`` skips that reference (for validation runs).

``--val-only`` evaluates the validation members instead of the test members and skips patient 15
and the throughput: the run for choosing settings (never the test anatomies).

**Throughput**: lines per second per process of the anatomy-conditioned cohort training at 1
and 2 processes (gloo, one thread each, the ``torchrun`` code path), same global batch.

``--write-docs`` writes the tables into ``docs/cohorts.md`` between
``<!-- bench-cohort-prior:begin -->`` and ``<!-- bench-cohort-prior:end -->`` and the figure
``docs/images/cohort-prior.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_anatomy import Score, score_table, score_voxels  # noqa: E402
from bench_cohort import run_processes  # noqa: E402

from recon.anatomy import OrgansConfig, reconstruct_organs  # noqa: E402
from recon.anatomy.organ_fit import mbq_per_unit_ml  # noqa: E402
from recon.cohort import CohortConfig, Manifest, fit_with_prior, train_cohort  # noqa: E402
from recon.cohort.manifest import ManifestEntry  # noqa: E402
from recon.cohort.model import load_cohort_model  # noqa: E402
from recon.data.phantoms import FIRST_LESION_LABEL  # noqa: E402
from recon.data.phantoms.population import (  # noqa: E402
    PopulationConfig,
    PopulationSample,
    sample_torso,
    simulate_sample,
)
from recon.io import Anatomy, Result, Study, read_study, write_study  # noqa: E402
from recon.nerf.anatomy_field import AnatomyFieldConfig, anatomy_field_for_study  # noqa: E402
from recon.nerf.config import TrainConfig  # noqa: E402
from recon.nerf.export import sample_on_grid  # noqa: E402
from recon.nerf.field import FieldConfig  # noqa: E402
from recon.nerf.organ_field import OrganAnchoredField  # noqa: E402
from recon.nerf.training import fit  # noqa: E402

BEGIN, END = "<!-- bench-cohort-prior:begin -->", "<!-- bench-cohort-prior:end -->"
FIGURE = ROOT / "docs" / "images" / "cohort-prior.png"
PATIENT15 = Path("/work/shared/data/lu177_dotatate_patient15")
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
MIN_LESION_ML = 5.0
QPLANAR = "organ fit (QPlanar)"
RESIDUAL_VOLUME = "organs + residual, volume"
SINGLE = ("single-study NeRF", "organs + residual", QPLANAR)
#: The cohort models: kind → (row label of the code fit, of the fine-tune), each with ", N=n".
KINDS = {
    "anatomy": ("prior (code)", "prior + fine-tune"),
    "organ code": ("prior (organ code)", "prior (organ code) + fine-tune"),
    "residual anchor": ("prior (residual anchor)", "prior (residual anchor) + fine-tune"),
}
#: Settings a reused record must share with this run (`--reuse`).
SAME_FOR_REUSE = (
    "size", "train_sizes", "n_test", "n_val", "cohort_steps", "fit_steps", "batch",
    "studies_per_step", "group_steps", "val_steps", "l1", "seed",
)  # fmt: skip


def train_settings(args: argparse.Namespace, steps: int) -> TrainConfig:
    """The NeRF settings of the cohort, the prior fits and the single-study fits."""
    return TrainConfig(
        steps=steps, rays_per_step=args.batch, n_samples=32, lr=5e-3, lr_schedule="cosine",
        lr_min=2.5e-4, val_every=0, log_every=0, checkpoint_every=0, preview_every=0,
        latent_l2=1e-4, seed=args.seed, holdout_fraction=0.0,
        field=FieldConfig(
            encoding="hashgrid", latent_dim=16, hash_levels=8, hash_features=2,
            hash_log2_size=15, hash_base_resolution=8, hash_finest_resolution=128,
            hash_mlp_depth=2, hash_mlp_width=32,
        ),
    )  # fmt: skip


# -- data ----------------------------------------------------------------------------------------


def population_studies(
    args: argparse.Namespace, folder: Path
) -> tuple[list[Path], list[Path], list[Path], list[PopulationSample]]:
    """Write the test, validation and training members; their paths and the samples of the
    test and validation members (in that order)."""
    config = PopulationConfig(tracer="lu177-dotatate")
    n_train = max(args.train_sizes)
    total = args.n_test + args.n_val + n_train
    paths, samples = [], []
    for k in range(total):
        sample = sample_torso(config, args.seed, k)
        path = folder / f"p{k:04d}.h5"
        write_study(path, simulate_sample(sample, size=args.size))
        paths.append(path)
        samples.append(sample)
    test, val = paths[: args.n_test], paths[args.n_test : args.n_test + args.n_val]
    return test, val, paths[args.n_test + args.n_val :], samples[: args.n_test + args.n_val]


def lesion_centres(study: Study, sample: PopulationSample | None) -> dict[str, tuple[float, ...]]:
    """Lesions of >= 5 mL (name → centre (x, y, z) mm): population members from their
    description, patient 15 from its tumours' masks."""
    out: dict[str, tuple[float, ...]] = {}
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    labels = np.asarray(study.labels)
    for value, name in study.label_names.items():
        is_lesion = value >= FIRST_LESION_LABEL if sample is not None else "tumour" in name
        if not is_lesion:
            continue
        mask = labels == value
        if not mask.any():  # a small lesion may hold no voxel's majority
            continue
        if sample is not None:
            lesion = sample.phantom.lesions[value - FIRST_LESION_LABEL]
            if lesion.volume_ml < MIN_LESION_ML:
                continue
        elif mask.sum() * voxel_ml < MIN_LESION_ML:
            continue
        idx = np.argwhere(mask).mean(axis=0)
        z, y, x = (float(study.grid.centres_mm(a)[0]) + idx[a] * study.grid.spacing_mm[a]
                   for a in range(3))  # fmt: skip
        out[name] = (x, y, z)
    return out


def patient15(args: argparse.Namespace) -> Study | None:
    """Patient 15 with Poisson counts (2e6 per view), its organs as the segmentation."""
    if not PATIENT15.is_dir():
        return None
    from recon.io.patient15 import patient15_study

    study = patient15_study(PATIENT15)
    scale = 2e6 / float(study.projections.sum(axis=(1, 2)).mean())
    rng = np.random.default_rng(args.seed)
    counts = rng.poisson(study.projections * scale).astype(np.float32)
    per_unit = dataclasses.replace(
        study.acquisition, duration_s=1.0, sensitivity_cps_per_mbq=1.0
    ).count_scale  # counts per line integral at 1 cps/MBq for 1 s
    acq = dataclasses.replace(
        study.acquisition, duration_s=1.0, sensitivity_cps_per_mbq=scale / per_unit
    )  # so that count_scale = scale: the counts and the model agree
    labels = np.asarray(study.labels)
    organs = {v: n for v, n in study.label_names.items() if n in ORGANS}
    seg = np.where(np.isin(labels, list(organs)), labels, 0).astype(np.uint8)
    body = np.asarray(study.mu_per_mm) > 0
    anatomy = Anatomy(labels=seg, names=organs, body=body, source="patient-15 organs")
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    truth = np.asarray(study.truth_activity, dtype=np.float64)
    mbq = {
        n: float(truth[labels == v].sum()) * voxel_ml * 1e-6 for v, n in study.label_names.items()
    }
    provenance = {**study.provenance, "truth_activity_mbq": json.dumps(mbq)}
    return dataclasses.replace(
        study, projections=counts, acquisition=acq, anatomy=anatomy, provenance=provenance
    )


# -- methods -------------------------------------------------------------------------------------


def single_nerf(study: Study, train: TrainConfig) -> Result:
    field = anatomy_field_for_study(study, AnatomyFieldConfig(field=train.field))
    outcome = fit(field, study, train)
    volume = sample_on_grid(outcome.representation, study.grid)
    return Result(np.asarray(volume, dtype=np.float32), study.grid, "anatomy-nerf")


def prior_fit(
    study: Study, model: Path, train: TrainConfig, fine_tune: bool, exact: bool = False
) -> tuple[Result, Any]:
    """The prior fit's volume as a `Result`, and the fit (`PriorFitResult`). ``exact``: the
    residual anchor's normalisation on every voxel (``normalise_sample = None``, the reference
    of the sampled one the cohort was trained with)."""
    loaded = load_cohort_model(model)
    organ = loaded.model.organ_code
    if exact and organ is not None:
        loaded.model.organ_code = dataclasses.replace(organ, normalise_sample=None)
    outcome = fit_with_prior(study, loaded, fine_tune=fine_tune, config=train)
    volume = sample_on_grid(outcome.representation, study.grid)
    result = Result(np.asarray(volume, dtype=np.float32), study.grid, "nerf")
    return result, outcome


def prior_settings(args: argparse.Namespace, select: str) -> TrainConfig:
    """The prior fits' settings with ``select``: ``"best_holdout"`` holds out
    ``--fit-holdout`` of the pixels to choose the state on, ``"last"`` holds out none."""
    holdout = args.fit_holdout if select == "best_holdout" else 0.0
    return dataclasses.replace(
        train_settings(args, args.fit_steps), select=select, holdout_fraction=holdout,
        val_every=args.fit_val_every if select == "best_holdout" else 0,
    )  # fmt: skip


def normalise_error(field: OrganAnchoredField) -> float:
    """Largest |total / code's total − 1| (%) over the field's components: what the normalised
    modulation (sampled or exact) fails to preserve."""
    acts, code = field.component_activities(), field.code_activities()
    return max(abs(acts[n] / code[n] - 1.0) * 100.0 for n in code if code[n] > 0)


def code_table(study: Study, field: OrganAnchoredField, organs: Result) -> Result:
    """The organ and source table of a residual-anchored prior fit, in the format of organs +
    residual's (`score_table` reads it): each compartment's and source's activity from the
    field (`OrganAnchoredField.component_activities`: with the normalised modulation exactly
    its code's), the sources counted in an organ, and the lesions, as ``organs`` (the same
    study's organs + residual result, which made the field's anchor) has them."""
    acts = field.component_activities()
    to_mbq = mbq_per_unit_ml(study.activity_unit)
    params = organs.parameters or {}
    names = [n for n in field.config.compartments if not n.startswith("source ")]
    if names != list(params["compartments"]):
        raise RuntimeError(f"the anchor's compartments {names} are not the result's")

    def source(row: dict[str, Any]) -> float:  # "source_3" → the field's "source 3"
        return acts.get(str(row["name"]).replace("_", " "), 0.0) * to_mbq  # 0: not in it

    organs_mbq = {n: acts[n] * to_mbq for n in names}
    for row in params.get("uptake_sources", []):
        organs_mbq[row["counted_in"]] += source(row)
    table = [{"name": n, "activity_mbq": v} for n, v in organs_mbq.items()]
    sources = [{**row, "activity_mbq": source(row)} for row in params.get("sources", [])]
    return Result(
        organs.activity, study.grid, "nerf", parameters={"organ_table": table, "sources": sources}
    )


def evaluate(
    study: Study, lesions: dict[str, tuple[float, ...]], models: dict[str, dict[int, Path]],
    args: argparse.Namespace, exact_check: bool = False,
) -> tuple[dict[str, Score], dict[str, float]]:  # fmt: skip
    """Scores of every method on ``study``, and the normalisation error (%, `normalise_error`)
    of each residual-anchor fit. ``exact_check``: also the first residual-anchor code fit with
    the exact normalisation (row ``…, exact normalisation``: its time is the reference)."""
    train = train_settings(args, args.fit_steps)
    scores: dict[str, Score] = {}
    norm: dict[str, float] = {}

    def timed(name: str, run: Any, table: bool = False) -> None:
        t0 = time.perf_counter()
        result = run()
        scores[name] = (score_table if table else score_voxels)(study, result, lesions)
        scores[name].seconds = time.perf_counter() - t0

    if not args.no_single_nerf:
        timed("single-study NeRF", lambda: single_nerf(study, train))
    t0 = time.perf_counter()
    organs = reconstruct_organs(study).result
    seconds = time.perf_counter() - t0
    scores["organs + residual"] = score_table(study, organs, lesions)
    scores[RESIDUAL_VOLUME] = score_voxels(study, organs, lesions)  # the residual anchor
    scores["organs + residual"].seconds = scores[RESIDUAL_VOLUME].seconds = seconds
    timed(QPLANAR, lambda: reconstruct_organs(study, config=OrgansConfig(residual=False)).result)
    runs = [
        (kind, n, model, label, tune, select, False)
        for kind, by_size in models.items()
        for n, model in by_size.items()
        for select in args.selects
        for label, tune in zip(KINDS[kind], (False, True), strict=True)
    ]
    if exact_check and "residual anchor" in models:
        n, model = min(models["residual anchor"].items())
        label = KINDS["residual anchor"][0]
        runs.append(("residual anchor", n, model, label, False, args.selects[0], True))
    for kind, n, model, label, tune, select, exact in runs:
        t0 = time.perf_counter()
        result, outcome = prior_fit(study, model, prior_settings(args, select), tune, exact)
        field = outcome.representation
        tag = "" if len(args.selects) == 1 else f" [{select}]"
        tag += ", exact normalisation" if exact else ""
        name = f"{label}{tag}, N={n}"
        scores[name] = score_voxels(study, result, lesions)
        scores[name].seconds = time.perf_counter() - t0
        if kind == "residual anchor":  # also its own table, like organs + residual
            table = code_table(study, field, organs)
            scores[f"{label}{tag}, table, N={n}"] = score_table(study, table, lesions)
            scores[f"{label}{tag}, table, N={n}"].seconds = scores[name].seconds
            norm[name] = normalise_error(field)
        steps = outcome.prior["selected_steps"]
        norm[f"selected steps: {name}"] = steps["fine-tune" if tune else "code"]
    return scores, norm


def _evaluate_file(
    path: Path, sample: PopulationSample | None, models: dict[str, dict[int, Path]],
    args: argparse.Namespace,
) -> tuple[dict[str, Score], dict[str, float]]:  # fmt: skip
    """`evaluate` of a population member's file (in a worker process)."""
    torch.set_num_threads(1)
    study = read_study(path)
    return evaluate(study, lesion_centres(study, sample), models, args)


def _evaluate_patient15(
    models: dict[str, dict[int, Path]], args: argparse.Namespace
) -> tuple[dict[str, Score], dict[str, float]] | None:
    torch.set_num_threads(1)
    study = patient15(args)
    if study is None:
        return None
    return evaluate(study, lesion_centres(study, None), models, args, exact_check=args.exact_check)


def cohort_config(args: argparse.Namespace, kind: str, n: int) -> CohortConfig:
    """The settings of the cohort model of ``kind`` with ``n`` training anatomies."""
    settings = dataclasses.replace(
        train_settings(args, args.cohort_steps), l1_activity=args.l1, holdout_fraction=0.1
    )
    residual = kind == "residual anchor"
    return CohortConfig(
        train=settings, anatomy=True, val_steps=args.val_steps, val_train_studies=2,
        cache_studies=min(n, args.studies_per_step), group_steps=args.group_steps,
        studies_per_step=min(n, args.studies_per_step),
        organ_code=kind in ("organ code", "residual anchor"),
        organ_bound=args.anchor_bound if residual else args.organ_bound,
        organ_residual=args.anchor_head if residual else not args.no_organ_residual,
        organ_anchor="residual" if residual else "organs",
        organ_normalise=residual and args.anchor_normalise,
        organ_normalise_sample=args.normalise_sample or None,
    )  # fmt: skip


def _train_one(
    kind: str, n: int, train: list[Path], val: list[Path], folder: Path,
    args: argparse.Namespace,
) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Train the cohort model of ``kind`` on the first ``n`` training members (in a worker)."""
    torch.set_num_threads(1)
    manifest = Manifest(
        tuple(ManifestEntry(p.stem, p, "train") for p in train[:n])
        + tuple(ManifestEntry(p.stem, p, "val") for p in val)
    )
    path = folder / f"model-{kind.replace(' ', '-')}-{n}.pt"
    t0 = time.perf_counter()
    result = train_cohort(manifest, cohort_config(args, kind, n), model_path=path, overwrite=True)
    info = {
        "seconds": time.perf_counter() - t0,
        "lines_per_s": result.samples_per_s,
        "study_reads": result.study_reads,
        "max_studies_held": result.max_studies_held,
        "heldout_organ_error": [h.get("organ_error") for h in result.heldout],
        "used_3d_supervision": args.l1 > 0,
    }
    return path, info


def train_models(
    args: argparse.Namespace, train: list[Path], val: list[Path], folder: Path, pool: Any
) -> tuple[dict[str, dict[int, Path]], dict[str, dict[str, Any]]]:
    jobs = {
        (kind, n): pool.submit(_train_one, kind, n, train, val, folder, args)
        for kind in args.kinds
        for n in args.train_sizes
    }
    models: dict[str, dict[int, Path]] = {kind: {} for kind in args.kinds}
    info: dict[str, dict[str, Any]] = {}
    for (kind, n), job in jobs.items():
        path, row = job.result()
        models[kind][n] = path
        info[f"{kind}, N={n}"] = row
        print(f"  cohort {kind} N={n}: {row['seconds']:.0f} s, {row['lines_per_s']:.0f} lines/s, "
              f"val organ error {row['heldout_organ_error']}", flush=True)  # fmt: skip
    return models, info


def throughput(args: argparse.Namespace, train: list[Path]) -> list[dict[str, Any]]:
    n = min(8, len(train))
    manifest = Manifest(tuple(ManifestEntry(p.stem, p, "train") for p in train[:n]))
    settings = train_settings(args, args.warmup + args.timed_steps)
    config = CohortConfig(
        train=settings, anatomy=True, val_steps=0, val_train_studies=0, backend="gloo",
        device="cpu",
    )  # fmt: skip
    rows = []
    for world in (1, 2):
        stamps = run_processes(manifest, config, world, None, 1)["stamps"]
        step_s = statistics.median(np.diff(stamps)[args.warmup - 1 :].tolist())
        rows.append({
            "processes": world, "global_batch": args.batch, "step_ms": 1e3 * step_s,
            "lines_per_s": args.batch / step_s,
            "lines_per_s_per_process": args.batch / step_s / world,
        })  # fmt: skip
        print(f"  {world} process(es): {1e3 * step_s:.0f} ms/step", flush=True)
    return rows


# -- report ----------------------------------------------------------------------------------------


def summarise(scores: list[dict[str, Score]]) -> dict[str, dict[str, float]]:
    out = {}
    for method in scores[0]:
        organ = [abs(v) for s in scores for v in s[method].organ_errors.values()]
        lesion = [abs(v) for s in scores for v in s[method].lesion_errors.values()]
        out[method] = {
            "organ_mean_abs": float(np.mean(organ)),
            "organ_max_abs": float(np.max(organ)),
            "lesion_mean_abs": float(np.mean(lesion)) if lesion else math.nan,
            "n_lesions": len(lesion),
            "seconds": float(np.mean([s[method].seconds for s in scores])),
        }
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = [
        "| method | mean \\|organ error\\| | largest \\|organ error\\| | mean \\|lesion error\\| "
        "(≥ 5 mL) | time per study |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m, s in summary.items():
        lesion = (
            "–"
            if math.isnan(s["lesion_mean_abs"])
            else f"{s['lesion_mean_abs']:.0f} % ({s['n_lesions']})"
        )
        lines.append(
            f"| {m} | {s['organ_mean_abs']:.1f} % | {s['organ_max_abs']:.1f} % | {lesion} "
            f"| {s['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def figure(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = record["settings"]["train_sizes"]
    panels = [("held-out anatomies", record["held_out"])]
    if record.get("patient15"):
        panels.append(("patient 15", record["patient15"]))
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    styles = {
        "prior (code)": ("o--", "tab:blue"),
        "prior + fine-tune": ("s-", "tab:blue"),
        "prior (organ code)": ("o--", "tab:purple"),
        "prior (organ code) + fine-tune": ("s-", "tab:purple"),
        "prior (residual anchor)": ("o--", "tab:orange"),
        "prior (residual anchor) + fine-tune": ("s-", "tab:orange"),
        "prior (residual anchor), table": ("o--", "tab:brown"),
        "prior (residual anchor) + fine-tune, table": ("s-", "tab:brown"),
    }
    references = list(zip(SINGLE, ("tab:red", "tab:green", "tab:gray"), strict=True))
    references.append((RESIDUAL_VOLUME, "tab:olive"))
    for row, (title, summary) in enumerate(panels):
        for col, key in enumerate(("organ_mean_abs", "lesion_mean_abs")):
            ax = axes[row][col]
            for label, (style, colour) in styles.items():
                rows = [summary.get(f"{label}, N={n}") for n in sizes]
                if all(r is not None for r in rows):
                    ax.plot(sizes, [r[key] for r in rows], style, color=colour, label=label)
            for name, colour in references:
                if name in summary:
                    ax.axhline(summary[name][key], color=colour, ls=":", label=name)
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.set_xlabel("training anatomies N")
            what = "organs" if col == 0 else "lesions ≥ 5 mL"
            ax.set_ylabel(f"mean |error| (%), {what}")
            ax.set_title(title)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def block(record: dict[str, Any]) -> str:
    s = record["settings"]
    held = table(record["held_out"])
    organ = ""
    if "organ code" in s.get("kinds", ()):
        head = "no residual head" if s["no_organ_residual"] else "with the residual head"
        organ = f", organ code B = {s['organ_bound']} {head}"
    if "residual anchor" in s.get("kinds", ()):
        head = "with the residual head" if s["anchor_head"] else "no residual head"
        norm = "not normalised"
        if s["anchor_normalise"]:
            sample = s.get("normalise_sample")  # records of before: exact
            on = f"on {sample} voxels of each" if sample else "on every voxel"
            norm = f"normalised per component (means {on})"
        organ += f", residual anchor B = {s['anchor_bound']} {norm}, {head}"
        select = s.get("select", "last")
        if select == "best_holdout":
            organ += (
                f"; its prior fits return their state with the lowest held-out deviance "
                f"({s['fit_holdout'] * 100:.0f} % of the pixels held out, validated every "
                f"{s['fit_val_every']} steps and at the start)"
            )
        elif select != "last":
            organ += f"; its prior fits with select = {select}"
    text = (
        f"Measured by `benchmarks/bench_cohort_prior.py` on {record['date']} ({s['n_test']} "
        f"held-out anatomies at {s['size']}³; cohorts of {', '.join(map(str, s['train_sizes']))} "
        f"training anatomies, {s['cohort_steps']} steps of {s['batch']} lines, 3D supervision "
        f"l1 = {s['l1']}{organ}; every NeRF fit {s['fit_steps']} steps; "
        f"{record['total_s']:.0f} s in all on this machine's 2 shared CPU cores, "
        f"{s.get('workers', 1)} processes of one thread).\n\n"
        f"{reused_note(record)}"
        f"![Mean organ and lesion errors against the number of training anatomies]"
        f"(images/cohort-prior.png)\n\nHeld-out anatomies:\n\n{held}\n"
    )
    if record.get("patient15"):
        text += f"\nPatient 15 (never in training):\n\n{table(record['patient15'])}\n"
    elif record.get("scored") == "validation":
        text += "\nPatient 15: not evaluated (a validation run).\n"
    else:
        text += "\nPatient 15: skipped (no /work/shared/data on this machine).\n"
    errors = record.get("normalise_error_pct")
    if errors and (errors.get("held_out_max") or errors.get("patient15")):
        held = list(errors.get("held_out_max", {}).values())
        p15 = errors.get("patient15") or {}
        text += (
            "\nNormalisation error of the residual-anchor fits, the largest |component total / "
            "its code's − 1| over the components (`component_activities` against "
            "`code_activities`): "
            + (f"held-out anatomies up to {max(held):.3f} %" if held else "")
            + ("; patient 15 " + ", ".join(f"{v:.3f} % ({m})" for m, v in p15.items())
               if p15 else "")
            + ".\n"
        )  # fmt: skip
    rows = record.get("throughput") or []
    if rows:
        text += (
            "\nAnatomy-conditioned cohort training, lines per second (global batch "
            f"{rows[0]['global_batch']}, gloo, 1 thread per process):\n\n"
            "| processes | step | lines/s (all) | lines/s per process |\n"
            "| ---: | ---: | ---: | ---: |\n"
        )
    for r in rows:
        text += (
            f"| {r['processes']} | {r['step_ms']:.0f} ms | {r['lines_per_s']:.0f} "
            f"| {r['lines_per_s_per_process']:.0f} |\n"
        )
    return text


def reused_note(record: dict[str, Any]) -> str:
    """A sentence on the rows taken from an earlier record (``--reuse``), or nothing."""
    reused = record.get("reused")
    if not reused or not reused["kinds"]:
        return ""
    labels = ", ".join(f"{KINDS[k][0]} / + fine-tune" for k in reused["kinds"])
    what = " and the throughput" if reused["throughput"] else ""
    commit = f", commit {reused['commit']}" if reused.get("commit") else ""
    return (
        f"The rows {labels}{what} are taken from the record of {reused['date']}{commit} (same "
        "settings, same test members; not rerun); every other row, the references included, "
        "was measured in this run.\n\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train-sizes", default="8,32")
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--n-val", type=int, default=2)
    p.add_argument("--cohort-steps", type=int, default=300)
    p.add_argument("--fit-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--studies-per-step", type=int, default=8)
    p.add_argument("--group-steps", type=int, default=10)
    p.add_argument("--val-steps", type=int, default=50)
    p.add_argument("--l1", type=float, default=0.05, help="3D supervision weight (0: off)")
    p.add_argument("--kinds", default="anatomy,organ code", help="cohort models to train")
    p.add_argument("--organ-bound", type=float, default=0.7, help="B of the organ code")
    p.add_argument("--no-organ-residual", action="store_true")
    p.add_argument("--anchor-bound", type=float, default=0.7, help="B of the residual anchor")
    p.add_argument(
        "--anchor-head", action=argparse.BooleanOptionalAction, default=False,
        help="residual anchor: the network's residual head",
    )  # fmt: skip
    p.add_argument(
        "--anchor-normalise", action=argparse.BooleanOptionalAction, default=True,
        help="residual anchor: the modulation keeps every component's total",
    )  # fmt: skip
    p.add_argument(
        "--normalise-sample", type=int, default=4096,
        help="residual anchor: voxels per component of the normalising means (0: all, exact)",
    )  # fmt: skip
    p.add_argument(
        "--select", default="last",
        help="prior fits: the state returned, last or best_holdout (comma list: rows of each)",
    )  # fmt: skip
    p.add_argument(
        "--fit-holdout", type=float, default=0.1,
        help="prior fits with best_holdout: the fraction of pixels held out to choose on",
    )  # fmt: skip
    p.add_argument(
        "--fit-val-every", type=int, default=10,
        help="prior fits with best_holdout: validate (a candidate state) every so many steps",
    )  # fmt: skip
    p.add_argument(
        "--exact-check", action=argparse.BooleanOptionalAction, default=True,
        help="patient 15: also the first residual-anchor code fit with the exact normalisation",
    )  # fmt: skip
    p.add_argument("--no-single-nerf", action="store_true", help="skip that reference")
    p.add_argument(
        "--reuse", type=Path, default=None,
        help="a record whose rows of the kinds not in --kinds (and throughput) are kept",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--no-patient15", action="store_true")
    p.add_argument("--val-only", action="store_true", help="score the validation members")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--from-json", type=Path, default=None, help="render a saved record")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    args.train_sizes = sorted(int(v) for v in str(args.train_sizes).split(","))
    args.kinds = [k.strip() for k in str(args.kinds).split(",") if k.strip()]
    args.selects = [v.strip() for v in str(args.select).split(",") if v.strip()]
    bad = sorted(set(args.selects) - {"last", "best_holdout"}) or not args.selects
    if bad:
        p.error(f"--select: expected last and/or best_holdout, got {args.select!r}")
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        p.error(f"--kinds: unknown {unknown}; known: {sorted(KINDS)}")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as tmp,
        ProcessPoolExecutor(args.workers, mp_context=spawn) as pool,
    ):
        folder = Path(tmp)
        print("simulating the population ...", flush=True)
        test, val, train, samples = population_studies(args, folder)
        rates: list[dict[str, Any]] = []
        args.throughput_now = not (args.val_only or args.reuse is not None)
        if args.throughput_now:
            print("throughput ...", flush=True)
            rates = throughput(args, train)
        print("training the cohort models ...", flush=True)
        models, cohort_info = train_models(args, train, val, folder, pool)
        scored = val if args.val_only else test
        scored_samples = samples[len(test) :] if args.val_only else samples[: len(test)]
        print(f"evaluating {len(scored)} {'validation' if args.val_only else 'test'} "
              "anatomies ...", flush=True)  # fmt: skip
        jobs = [
            pool.submit(_evaluate_file, path, sample, models, args)
            for path, sample in zip(scored, scored_samples, strict=True)
        ]
        p15_job = None
        if not (args.no_patient15 or args.val_only):
            p15_job = pool.submit(_evaluate_patient15, models, args)
        held = []
        norm_errors: dict[str, list[float]] = {}
        selected: dict[str, list[float]] = {}
        for path, job in zip(scored, jobs, strict=True):
            scores, norm = job.result()
            held.append(scores)
            for m, v in norm.items():
                if m.startswith("selected steps: "):
                    selected.setdefault(m.removeprefix("selected steps: "), []).append(v)
                else:
                    norm_errors.setdefault(m, []).append(v)
            print(f"  {path.stem}: " + "; ".join(
                f"{m} {np.mean(np.abs(list(s.organ_errors.values()))):.1f} %"
                for m, s in held[-1].items()), flush=True)  # fmt: skip
        p15_out = None if p15_job is None else p15_job.result()
        p15_scores, p15_all = (None, {}) if p15_out is None else p15_out
        p15_norm = {m: v for m, v in p15_all.items() if not m.startswith("selected steps: ")}
        p15_selected = {
            m.removeprefix("selected steps: "): v
            for m, v in p15_all.items()
            if m.startswith("selected steps: ")
        }
        p15_summary = None if p15_scores is None else summarise([p15_scores])
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "from_json", "write_docs")}
    record = {
        "benchmark": "cohort-prior",
        "date": time.strftime("%Y-%m-%d"),
        "settings": json.loads(json.dumps(settings, default=str)),
        "scored": "validation" if args.val_only else "test",
        "held_out": summarise(held),
        "held_out_per_study": [
            {m: {"organs": s.organ_errors, "lesions": s.lesion_errors} for m, s in sc.items()}
            for sc in held
        ],
        "patient15": p15_summary,
        "normalise_error_pct": {
            "held_out_max": {m: max(v) for m, v in norm_errors.items()},
            "patient15": p15_norm,
        },
        "selected_steps": {"held_out": selected, "patient15": p15_selected},
        "cohorts": cohort_info,
        "throughput": rates,
        "torch_threads": torch.get_num_threads(),
        "total_s": time.perf_counter() - t_start,
    }
    return record if args.reuse is None else with_reused(record, args)


def with_reused(record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``record`` with the rows of the cohort kinds it did not run (and the throughput) taken
    from the record ``args.reuse``, whose settings must agree (`SAME_FOR_REUSE`)."""
    old = json.loads(args.reuse.read_text(encoding="utf-8"))
    mismatch = [k for k in SAME_FOR_REUSE if old["settings"].get(k) != record["settings"][k]]
    if mismatch or old.get("scored") != record["scored"]:
        raise SystemExit(f"--reuse {args.reuse}: other settings {mismatch or ['scored']}")
    kinds = [k for k in old["settings"]["kinds"] if k not in args.kinds]
    labels = [f"{label}, N={n}" for k in kinds for label in KINDS[k] for n in args.train_sizes]

    def merged(new: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
        out = {m: v for m, v in new.items() if not m.startswith("prior")}
        out.update({m: before[m] for m in labels if m in before})
        out.update({m: v for m, v in new.items() if m.startswith("prior")})
        return out

    record["held_out"] = merged(record["held_out"], old["held_out"])
    record["held_out_per_study"] = [
        merged(new, before)
        for new, before in zip(record["held_out_per_study"], old["held_out_per_study"],
                               strict=True)
    ]  # fmt: skip
    if record["patient15"] and old.get("patient15"):
        record["patient15"] = merged(record["patient15"], old["patient15"])
    record["cohorts"] = {
        **{k: v for k, v in old["cohorts"].items() if k.split(",")[0] in kinds},
        **record["cohorts"],
    }
    if not record["throughput"]:
        record["throughput"] = old.get("throughput", [])
    record["reused"] = {
        "record": str(args.reuse), "date": old["date"], "kinds": kinds,
        "throughput": not args.throughput_now,
    }  # fmt: skip
    record["settings"]["kinds"] = [*kinds, *args.kinds]
    return record


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.from_json is not None:
        record = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        record = measure(args)
        if args.json is not None:
            args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    text = block(record)
    print("\n" + text)
    if args.write_docs and record.get("scored") == "validation":
        raise SystemExit("--write-docs: this record scores the validation members, not the test")
    if args.write_docs:
        figure(record, FIGURE)
        page = ROOT / "docs" / "cohorts.md"
        doc = page.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(doc):
            raise SystemExit(f"{page}: markers {BEGIN} ... {END} not found")
        page.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", doc), encoding="utf-8")
        print(f"wrote {page} and {FIGURE}")


if __name__ == "__main__":
    main()

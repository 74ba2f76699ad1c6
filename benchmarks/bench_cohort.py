"""Cohort training: data-parallel throughput (1 vs 2 processes) and the benefit of the prior.

Two measurements, in one run, on a cohort of simulated torso studies (AP/PA, ``--size``³ voxels,
organ concentrations drawn log-uniformly within ±50 % of the Tc-99m defaults, lesion
concentrations and the body size varied too; every phantom a different seed):

1. **Throughput** of `recon.cohort.train_cohort` with the same global batch in
   * 1 process × 1 torch thread,
   * 1 process × 2 threads,
   * 2 processes × 1 thread each (`torch.multiprocessing.spawn`, gloo over 127.0.0.1, exactly
     the code path ``torchrun`` takes: the processes join through the ``RANK``/``WORLD_SIZE``/
     ``MASTER_*`` variables).
   Figure: lines (samples) per second over the global batch, from the median step time over
   the steps after ``--warmup`` (rank 0's clock; each step ends with an all-reduce, so all ranks
   move together). With ``--device cuda``: 1 process vs one process per GPU (NCCL).
2. **The prior's benefit.** Two cohort models are trained (2 processes) on the training
   phantoms: one on their projections only, one also with 3D supervision (``l1_activity``
   ``--l1`` on each phantom's true activity, as pieNeRF's optional L1 term). Then each held-out
   phantom is reconstructed from its own projections only, with the same step budget ``K``
   (``--budgets``) and the same settings, by
   * NeRF from scratch (`recon.nerf.training.fit`, the cohort's architecture, a fresh field),
   * each cohort prior, code only (`recon.cohort.prior.fit_with_prior`),
   * each cohort prior, code then fine-tuning (half the steps each),
   and, for reference, by 2-view MLEM (``--mlem-iterations``). Figure: the organ-activity error
   ``|A_est − A_true| / A_true`` of each organ (MBq in the labelled voxels,
   `recon.evaluation.metrics
   .organ_errors`), averaged over the 9 organs (body, lungs, liver, spleen, both kidneys, spine,
   bladder, heart) and over the held-out phantoms; lesions are reported apart.

Run (about 40 minutes on 2 cores; ``--quick``: about 5)::

    .venv/bin/python benchmarks/bench_cohort.py
    .venv/bin/python benchmarks/bench_cohort.py --json cohort.json
    .venv/bin/python benchmarks/bench_cohort.py --device cuda        # on a GPU machine
    .venv/bin/python benchmarks/bench_cohort.py --write-docs \
        --from-json benchmarks/results/cohort.json

The options, the record (``--json``) and the tables of ``docs/performance.md`` (``--write-docs``)
are handled by ``_report.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (
    add_common_options,
    check_common_options,
    log,
    markdown_table,
    run_benchmark,
)
from _timing import QuietGate, machine_info, other_processes_load, usable_cores

from recon.algorithms.mlem import EMConfig, em_reconstruct
from recon.cohort import (
    CohortConfig,
    Manifest,
    fit_with_prior,
    load_cohort_model,
    train_cohort,
)
from recon.data.phantoms.torso import (
    LABELS,
    TorsoPhantom,
    default_grid,
    default_lesions,
    make_torso,
)
from recon.data.simulate import simulate_acquisition
from recon.evaluation.metrics import organ_errors
from recon.io import read_study, write_study
from recon.nerf.config import TrainConfig
from recon.nerf.export import sample_on_grid
from recon.nerf.field import EmissionField, FieldConfig
from recon.nerf.training import fit
from spectproj import ParallelGeometry

ORGANS = tuple(LABELS)


# -- the cohort --------------------------------------------------------------------------------


def make_cohort(folder: Path, n_train: int, n_val: int, size: int, seed: int) -> Manifest:
    """Write ``n_train + n_val`` simulated studies and return their manifest."""
    rng = np.random.default_rng(seed)
    base = TorsoPhantom()
    grid = default_grid(size)
    train, val = [], []
    for k in range(n_train + n_val):

        def vary(value: float) -> float:
            return float(value * np.exp(rng.uniform(np.log(0.5), np.log(1.5))))

        config = dataclasses.replace(
            base.with_concentrations(**{o: vary(getattr(base, o)) for o in ORGANS}),
            body_width_mm=float(base.body_width_mm * rng.uniform(0.95, 1.05)),
            body_depth_mm=float(base.body_depth_mm * rng.uniform(0.95, 1.05)),
            lesions=default_lesions(tuple(vary(les.concentration) for les in base.lesions)),  # type: ignore[arg-type]
        )
        phantom = make_torso(grid, config=config)
        study = simulate_acquisition(
            phantom, ParallelGeometry.ap_pa(grid, radius_mm=250.0), total_counts=1e6,
            scatter_fraction=0.1, seed=seed * 1000 + k,
        )  # fmt: skip
        path = folder / f"phantom{k:02d}.h5"
        write_study(path, study, overwrite=True)
        (train if k < n_train else val).append(path)
    return Manifest.from_paths(train, val)


def train_settings(args: argparse.Namespace, steps: int, batch: int) -> TrainConfig:
    """The NeRF settings used everywhere (cohort, prior and from-scratch fits)."""
    return TrainConfig(
        steps=steps, rays_per_step=batch, n_samples=32, lr=5e-3, lr_schedule="cosine",
        lr_min=2.5e-4, val_every=0, log_every=0, checkpoint_every=0, preview_every=0,
        latent_l2=1e-4, seed=args.seed,
        field=FieldConfig(
            encoding="hashgrid", latent_dim=args.latent_dim, hash_levels=8, hash_features=2,
            hash_log2_size=15, hash_base_resolution=8, hash_finest_resolution=128,
            hash_mlp_depth=2, hash_mlp_width=32,
        ),
    )  # fmt: skip


# -- throughput --------------------------------------------------------------------------------


def _timed_run(
    manifest: Manifest, config: CohortConfig, out: Path | None, threads: int
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    stamps: list[float] = []

    def callback(step: int, total: int, metrics: Any) -> None:
        stamps.append(time.perf_counter())

    result = train_cohort(manifest, config, model_path=out, overwrite=True, callback=callback)
    return {"stamps": stamps, "world_size": result.world_size, "rank": result.rank}


def _spawn_worker(
    rank: int, world: int, port: int, manifest: Manifest, config: CohortConfig,
    out: str | None, record: str,
) -> None:  # fmt: skip
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
    )  # fmt: skip
    run = _timed_run(manifest, config, None if out is None else Path(out), threads=1)
    if rank == 0:
        Path(record).write_text(json.dumps(run), encoding="utf-8")


def run_processes(
    manifest: Manifest, config: CohortConfig, world: int, out: Path | None, threads: int = 1
) -> dict[str, Any]:
    """Train with ``world`` processes (spawned, env:// like torchrun) or in this process."""
    if world == 1:
        return _timed_run(manifest, config, out, threads)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "rank0.json"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(
            _spawn_worker,
            args=(world, port, manifest, config, None if out is None else str(out), str(record)),
            nprocs=world, join=True,
        )  # fmt: skip
        return json.loads(record.read_text())


def throughput(manifest: Manifest, args: argparse.Namespace, log: Any) -> list[dict[str, Any]]:
    """Each setup ``--repeats`` times, the setups interleaved round by round; per run the median
    step time after the warm-up, per setup the best run (the least disturbed by other processes
    on a shared machine) and the median of the runs."""
    steps = args.warmup + args.timed_steps
    train = train_settings(args, steps, args.batch)
    config = CohortConfig(
        train=train, val_steps=0, val_train_studies=0, device=args.device,
        backend="nccl" if args.device == "cuda" else "gloo",
    )  # fmt: skip
    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda":
        setups = [(1, 1)] + ([(n_gpus, 1)] if n_gpus > 1 else [])
    else:
        setups = [(1, 1), (1, 2), (2, 1)]
    runs: dict[tuple[int, int], list[tuple[float, float | None]]] = {s: [] for s in setups}
    gate = QuietGate(args.max_quiet_wait)
    for rnd in range(args.repeats):
        for world, threads in setups:
            gate.wait()
            others = other_processes_load()
            stamps = run_processes(manifest, config, world, None, threads)["stamps"]
            step_s = statistics.median(np.diff(stamps)[args.warmup - 1 :].tolist())
            runs[(world, threads)].append((step_s, others))
            load = "?" if others is None else f"{others:.1f}"
            log(
                f"  round {rnd + 1}: {world} process(es) × {threads} thread(s): "
                f"{1e3 * step_s:.1f} ms/step, {args.batch / step_s:.0f} lines/s "
                f"(other processes at start: {load} cores)"
            )
    rows = []
    for (world, threads), results in runs.items():
        best = min(r[0] for r in results)
        median = statistics.median(r[0] for r in results)
        rows.append(
            {
                "processes": world,
                "threads_per_process": threads,
                "global_batch": args.batch,
                "best_step_ms": 1e3 * best,
                "median_step_ms": 1e3 * median,
                "samples_per_s": args.batch / best,
                "samples_per_s_median": args.batch / median,
                "runs_step_ms": [1e3 * r[0] for r in results],
                "others_load_cores": [r[1] for r in results],
            }
        )
    log(f"  rounds that started with others busy: {gate.rounds_busy} of {gate.rounds}")
    return rows


# -- the prior's benefit -----------------------------------------------------------------------


def organ_table(activity: np.ndarray, study: Any) -> dict[str, float]:
    rows = organ_errors(
        activity, study.truth_activity, study.labels, study.label_names,
        study.grid.voxel_volume_mm3 * 1e-3, study.activity_unit,
    )  # fmt: skip
    return {r.name: abs(r.relative_error) for r in rows if r.relative_error is not None}


def summarise(errors: dict[str, float]) -> dict[str, float]:
    organs = [v for k, v in errors.items() if k in ORGANS]
    lesions = [v for k, v in errors.items() if k not in ORGANS]
    return {
        "organs": float(np.mean(organs)),
        "lesions": float(np.mean(lesions)) if lesions else math.nan,
        **{k: errors[k] for k in ("liver", "spleen", "kidney_left", "kidney_right") if k in errors},
    }


def prior_benefit(
    manifest: Manifest, folder: Path, args: argparse.Namespace, log: Any
) -> dict[str, Any]:
    """Train the cohort model(s), then reconstruct each held-out phantom every way."""
    train = train_settings(args, args.cohort_steps, args.batch)
    world = 1 if args.device == "cuda" else 2
    cohorts: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in args.cohorts:
        l1 = args.l1 if name == "3D" else 0.0
        config = CohortConfig(
            train=dataclasses.replace(train, l1_activity=l1), val_steps=0, val_train_studies=0,
            device=args.device, backend="nccl" if args.device == "cuda" else "gloo",
        )  # fmt: skip
        model_path = folder / f"cohort-{name}.pt"
        t0 = time.perf_counter()
        run_processes(manifest, config, world, model_path)
        seconds[name] = time.perf_counter() - t0
        cohorts[name] = load_cohort_model(model_path)
        log(
            f"  cohort ({name}): {len(manifest.train)} studies, {args.cohort_steps} steps, "
            f"{world} processes, {seconds[name]:.0f} s"
        )
    torch.set_num_threads(args.threads[-1] if args.threads else usable_cores())
    per_study: list[dict[str, Any]] = []
    for entry in manifest.val:
        study = read_study(entry.path)
        rows: dict[str, Any] = {"study": entry.study_id}
        mlem = mlem_activity(study, args.mlem_iterations, args.device)
        rows[f"MLEM {args.mlem_iterations} it."] = summarise(organ_table(mlem, study))

        def score(representation: Any) -> dict[str, float]:
            volume = sample_on_grid(representation, study.grid).numpy()  # noqa: B023
            return summarise(organ_table(volume, study))  # noqa: B023

        for budget in args.budgets:
            settings = dataclasses.replace(train, steps=budget, rays_per_step=args.batch)
            torch.manual_seed(args.seed)
            field = EmissionField(study.grid, settings.field)
            rows[f"scratch, {budget} steps"] = score(
                fit(field, study, settings, device=args.device).representation
            )
            for name, loaded in cohorts.items():
                code = fit_with_prior(study, loaded, config=settings, device=args.device)
                rows[f"prior ({name} cohort), code, {budget} steps"] = score(code.representation)
                tuned = fit_with_prior(
                    study, loaded, fine_tune=True, config=settings, device=args.device
                )
                rows[f"prior ({name} cohort), code + fine-tune, {budget} steps"] = score(
                    tuned.representation
                )
        per_study.append(rows)
        log(
            f"  {entry.study_id}: "
            + "; ".join(f"{k} {100 * v['organs']:.1f} %" for k, v in rows.items() if k != "study")
        )
    methods = [k for k in per_study[0] if k != "study"]
    mean = {
        m: {q: float(np.nanmean([r[m][q] for r in per_study])) for q in per_study[0][m]}
        for m in methods
    }
    return {"cohort_seconds": seconds, "per_study": per_study, "mean": mean}


def mlem_activity(study: Any, iterations: int, device: str) -> np.ndarray:
    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=torch.float32, device=device)

    em = em_reconstruct(
        t(study.projections), study.geometry(), EMConfig(iterations=iterations),  # type: ignore[arg-type]
        mu=t(study.mu_per_mm), background=t(study.background),
        count_scale=study.acquisition.count_scale,
    )  # fmt: skip
    return em.activity.cpu().numpy()


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(
        p,
        repeats_default=3,
        repeats_help="runs of each setup (throughput; default 3)",
        quiet_wait_default_s=60.0,
    )
    p.add_argument("--size", type=int, default=32, help="voxels per axis (default 32)")
    p.add_argument("--train-studies", type=int, default=12)
    p.add_argument("--val-studies", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=1024, help="global lines per step")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (throughput)")
    p.add_argument("--timed-steps", type=int, default=30, help="timed steps (throughput)")
    p.add_argument("--cohort-steps", type=int, default=1500, help="cohort training steps")
    p.add_argument("--budgets", type=int, nargs="+", default=[50, 300], help="steps per new study")
    p.add_argument("--mlem-iterations", type=int, default=20)
    p.add_argument(
        "--cohorts", nargs="+", choices=["projections", "3D"], default=["projections", "3D"],
        help="cohort models to compare: trained on projections only, and with 3D supervision "
        "(l1_activity on the training phantoms' truth)",
    )  # fmt: skip
    p.add_argument("--l1", type=float, default=0.1, help="l1_activity weight of the 3D cohort")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--part", choices=["all", "throughput", "prior"], default="all",
        help="run only one of the two measurements",
    )  # fmt: skip
    args = p.parse_args(argv)
    check_common_options(p, args)
    if args.quick:
        args.size, args.train_studies, args.val_studies = 24, 6, 2
        args.timed_steps, args.cohort_steps, args.budgets = 10, 200, [50]
        args.repeats = 1
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the cohort and run the chosen parts; the run's record."""
    report: dict[str, Any] = {
        "benchmark": "cohort",
        "script": "benchmarks/bench_cohort.py",
        "machine": machine_info(torch.device(args.device)),
        "settings": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        manifest = make_cohort(folder, args.train_studies, args.val_studies, args.size, args.seed)
        log(f"cohort of {len(manifest.entries)} {args.size}³ studies in "
            f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
        if args.part in ("all", "throughput"):
            log("throughput (same global batch):")
            report["throughput"] = throughput(manifest, args, log)
        if args.part in ("all", "prior"):
            log("the prior's benefit (organ-activity error of held-out phantoms):")
            report["prior"] = prior_benefit(manifest, folder, args, log)
    return report


def _method(key: str) -> tuple[str, str]:
    """A prior-table key such as ``"prior (3D cohort), code, 50 steps"`` → (method, K steps)."""
    name, _, last = key.rpartition(", ")
    if name and last.endswith(" steps"):
        name = "NeRF from scratch" if name == "scratch" else name
        return name, last.removesuffix(" steps")
    return key, "–"


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


def render(record: Mapping[str, Any]) -> dict[str, str]:
    """The docs blocks of one record: the throughput table and/or the prior's-benefit table."""
    blocks = {}
    rows = record.get("throughput")
    if rows:
        base = rows[0]["samples_per_s"]
        blocks["cohort-throughput"] = "\n".join(
            markdown_table(
                ["processes × threads", "ms / step (best)", "lines / s (best)", "vs 1 × 1",
                 "lines / s (median of runs)"],
                (
                    [f"{r['processes']} × {r['threads_per_process']}", f"{r['best_step_ms']:.1f}",
                     f"{r['samples_per_s']:,.0f}".replace(",", " "),
                     f"{r['samples_per_s'] / base:.2f}×",
                     f"{r['samples_per_s_median']:,.0f}".replace(",", " ")]
                    for r in rows
                ),
                "lrrrr",
            )
        )  # fmt: skip
    mean = record.get("prior", {}).get("mean")
    if mean:
        blocks["cohort-prior"] = "\n".join(
            markdown_table(
                ["reconstruction", "K steps", "organs (mean)", "liver", "spleen", "kidney L",
                 "kidney R", "lesions"],
                (
                    [*_method(key), _pct(q.get("organs")), _pct(q.get("liver")),
                     _pct(q.get("spleen")), _pct(q.get("kidney_left")),
                     _pct(q.get("kidney_right")), _pct(q.get("lesions"))]
                    for key, q in mean.items()
                ),
                "lrrrrrrr",
            )
        )  # fmt: skip
    return blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and args.from_json is None and not torch.cuda.is_available():
        log("--device cuda: no CUDA device here")
        return 2
    return run_benchmark(args, "cohort", measure, render)


if __name__ == "__main__":
    sys.exit(main())

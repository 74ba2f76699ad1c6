"""Speed and quality of the NeRF reconstruction (`recon.nerf`), against the prototype and MLEM.

Three parts (``--part speed|quality|all``; ``all`` by default):

**speed** — the time of one full training step (draw the lines, render them, Poisson loss,
backward, gradient clipping, Adam: ``recon.training.loop.Trainer._train_step``, exactly what
``fit`` runs each step), median over a few steps after a warm-up, for several models, interleaved
round by round. On the CPU (``--device cpu``) at the original prototype's configuration: a
128×128 AP/PA study (the torso on the 128³ default grid), 13 000 lines per step, 32 samples per
ray. One of our AP/PA lines is rendered in both views from one set of samples, so 13 000 lines
give 13 000 AP and 13 000 PA pixels per step: the prototype's 13 000 rays *per view*, with half
the field evaluations (416 000 samples per step instead of 832 000). Models:

- frequency encoding (10 bands), 8×256 ReLU MLP with a skip at layer 4, 128-d latent (the
  prototype's network), in float32 and with ``cpu_bf16``; target ≥ 3× the prototype's ~50 s;
- hash grid (16 levels × 2 features, 2¹⁷ entries per level, resolutions 16–256), 2×64 MLP,
  128-d latent, float32 and ``cpu_bf16``; target ≥ 30×; plus, for reference, the hash grid of
  ``FieldConfig``'s defaults (2¹⁹ entries, resolutions 16–512).

The prototype cannot run here (it needs CUDA); its ~50 s per step on this 2-core CPU is the
issue's figure. With ``--device cuda`` the part times pieNeRF's size instead (16 384 lines per
step, 32 samples, 8×256 MLP with a 256-d latent, and the hash grid), reports steps/s, samples/s and
the peak memory (``torch.cuda.max_memory_allocated``).

**quality** — one seeded AP/PA study of the torso on the 64³ default grid (Tc-99m, attenuation,
Poisson noise, 2·10⁶ expected counts over both views, no collimator blur or scatter, so every
method models the data exactly). NeRF with ``TrainConfig.cpu_default()`` (the wall time of the
whole ``fit`` is the "64³ AP/PA study in under 2 minutes on 2 cores" check, timed with 2 torch
threads and with 1), 2-view MLEM at 50 and 200 iterations and at its best iteration by NRMSE
(an oracle: it needs the truth), all without and with the body outline (μ > 0) as support, and
the conjugate-view organ activities (``background="body"``). Metrics from
``recon.evaluation.metrics.evaluate_volume``: NRMSE in the body and in the whole volume, PSNR,
SSIM, the
total-activity error and every organ's activity error.

Every timed round first waits (``--max-quiet-wait``, default 20 s) until other processes on the
machine are idle, and the load other processes put on the machine during each timed step is
recorded (``/proc/stat``), since the development machines are shared.

Run from the repository root::

    .venv/bin/python benchmarks/bench_nerf.py                      # everything (~15 min)
    .venv/bin/python benchmarks/bench_nerf.py --quick              # smoke run
    .venv/bin/python benchmarks/bench_nerf.py --part speed --json nerf-speed.json
    .venv/bin/python benchmarks/bench_nerf.py --device cuda        # on a GPU
    .venv/bin/python benchmarks/bench_nerf.py --from-json benchmarks/results/nerf.json --write-docs

The options, the record (``--json``) and the tables of ``docs/performance.md`` (``--write-docs``)
are handled by ``_report.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from _report import (
    add_common_options,
    check_common_options,
    fmt_met,
    log,
    markdown_table,
    run_benchmark,
)
from _timing import (
    CpuMark,
    QuietGate,
    load_average,
    machine_info,
    others_load_between,
    synchronize,
    usable_cores,
)

from recon.io.study import Study
from recon.nerf.config import TrainConfig
from recon.nerf.field import EmissionField, FieldConfig

#: The issue's figure for the original prototype on this 2-core CPU (s per training step).
PROTOTYPE_STEP_S = 50.0
#: The prototype's rays per view per step, samples per ray, latent size.
PROTOTYPE_RAYS_PER_VIEW = 13_000
PROTOTYPE_SAMPLES = 32
PROTOTYPE_LATENT = 128
#: Field evaluations per prototype step: it renders each view's rays separately.
PROTOTYPE_SAMPLES_PER_STEP = 2 * PROTOTYPE_RAYS_PER_VIEW * PROTOTYPE_SAMPLES
#: Minimum speed-up per step over the prototype, by encoding (CPU), and on a GPU.
CPU_TARGETS = {"frequency": 3.0, "hashgrid": 30.0}
GPU_TARGET = 10.0
#: The CPU-default fit of a 64³ AP/PA study must take less than this (s).
CPU_DEFAULT_LIMIT_S = 120.0

#: A timed step counts as quiet when other processes used less than this many cores meanwhile;
#: the targets are judged on the median of the quiet steps when there are at least MIN_QUIET.
QUIET_LOAD = 0.25
MIN_QUIET = 3

QUALITY_COUNTS = 2.0e6
QUALITY_SEED = 2024
MLEM_ITERATIONS = (50, 200)

# -- models -------------------------------------------------------------------------------------


def frequency_field(latent: int) -> FieldConfig:
    """The prototype's network: 10 bands, 8×256 ReLU MLP, skip at layer 4."""
    return FieldConfig(encoding="frequency", n_frequencies=10, latent_dim=latent)


def hash_field(latent: int, log2_size: int = 17, finest: int = 256) -> FieldConfig:
    """16 levels × 2 features from resolution 16, a 2×64 MLP."""
    return FieldConfig(
        encoding="hashgrid",
        latent_dim=latent,
        hash_levels=16,
        hash_features=2,
        hash_log2_size=log2_size,
        hash_base_resolution=16,
        hash_finest_resolution=finest,
        hash_mlp_depth=2,
        hash_mlp_width=64,
    )


@dataclass(frozen=True)
class SpeedCase:
    """One model timed in the speed part."""

    name: str
    encoding: str  # "frequency" or "hashgrid": which target applies
    field: FieldConfig
    cpu_bf16: bool = False
    amp: str = "off"
    target: bool = True  # judged against the target (False: a reference row)


def speed_cases(device: torch.device, quick: bool) -> tuple[list[SpeedCase], int]:
    """The models and lines per step of the speed part on ``device``."""
    if device.type == "cuda":
        latent = 256
        cases = [
            SpeedCase("frequency 8×256, fp32", "frequency", frequency_field(latent)),
            SpeedCase(
                "frequency 8×256, AMP bf16", "frequency", frequency_field(latent), amp="bf16"
            ),
            SpeedCase("hash grid 2¹⁹, 2×64, fp32", "hashgrid", hash_field(latent, 19, 512)),
            SpeedCase(
                "hash grid 2¹⁹, 2×64, AMP bf16", "hashgrid", hash_field(latent, 19, 512), amp="bf16"
            ),
        ]
        return cases, 16_384
    latent = PROTOTYPE_LATENT
    cases = [
        SpeedCase("frequency 8×256, fp32", "frequency", frequency_field(latent)),
        SpeedCase("frequency 8×256, cpu_bf16", "frequency", frequency_field(latent), True),
        SpeedCase("hash grid 2¹⁷, 2×64, fp32", "hashgrid", hash_field(latent)),
        SpeedCase("hash grid 2¹⁷, 2×64, cpu_bf16", "hashgrid", hash_field(latent), True),
    ]
    if not quick:
        cases.append(
            SpeedCase(
                "hash grid 2¹⁹ (FieldConfig defaults), fp32",
                "hashgrid",
                hash_field(latent, 19, 512),
                target=False,
            )
        )
    return cases, PROTOTYPE_RAYS_PER_VIEW


# -- studies ------------------------------------------------------------------------------------


def torso_study(size: int, total_counts: float, seed: int) -> Study:
    """The torso (Tc-99m) on ``default_grid(size)``, AP/PA with attenuation and Poisson noise."""
    from recon.data.phantoms import NUCLIDES, default_grid, make_torso
    from recon.data.simulate import simulate_acquisition
    from spectproj import ParallelGeometry

    grid = default_grid(size)
    phantom = make_torso(grid, NUCLIDES["Tc-99m"])
    geometry = ParallelGeometry.ap_pa(grid, radius_mm=250.0)
    return simulate_acquisition(
        phantom, geometry, total_counts=total_counts, isotope="Tc-99m", seed=seed
    )


def seeded_field(study: Study, config: FieldConfig, seed: int) -> EmissionField:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmissionField(study.grid, config)


# -- speed --------------------------------------------------------------------------------------


@dataclass
class SpeedRow:
    """The timing of one model."""

    name: str
    encoding: str
    precision: str
    threads: int
    parameters: int
    lines_per_step: int
    samples_per_step: int
    step_s: list[float]
    others_load: list[float | None]
    peak_memory_gib: float | None = None
    target: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def quiet_s(self) -> list[float]:
        """The steps during which other processes used less than `QUIET_LOAD` cores."""
        return [
            t
            for t, load in zip(self.step_s, self.others_load, strict=True)
            if load is not None and load < QUIET_LOAD
        ]

    @property
    def judged_s(self) -> float:
        """The time the target is judged on: the median of the quiet steps when there are at
        least `MIN_QUIET` of them, else the median of all."""
        quiet = self.quiet_s
        return statistics.median(quiet) if len(quiet) >= MIN_QUIET else self.median_s

    @property
    def min_s(self) -> float:
        return min(self.step_s)

    @property
    def samples_per_s(self) -> float:
        return self.samples_per_step / self.judged_s

    @property
    def speedup(self) -> float:
        """The prototype's time per step / ours (CPU only: the issue's 50 s)."""
        return PROTOTYPE_STEP_S / self.judged_s

    @property
    def target_met(self) -> bool | None:
        return None if self.target is None else self.speedup >= self.target

    @property
    def median_others_load(self) -> float | None:
        known = [v for v in self.others_load if v is not None]
        return statistics.median(known) if known else None

    def summary(self) -> dict[str, Any]:
        """The figures the table shows (a record keeps them beside the samples)."""
        quiet = self.quiet_s
        return {
            "quiet_median_s": statistics.median(quiet) if quiet else None,
            "quiet_steps": len(quiet),
            "median_s": self.median_s,
            "min_s": self.min_s,
            "judged_s": self.judged_s,
            "samples_per_s": self.samples_per_s,
            "speedup": self.speedup,
            "target_met": self.target_met,
            "median_others_load": self.median_others_load,
        }


def make_trainer(study: Study, case: SpeedCase, lines: int, device: torch.device) -> Any:
    """A started ``Trainer`` (what ``fit`` builds) for one speed case."""
    from recon.nerf.training import _trainer

    config = dataclasses.replace(
        TrainConfig.gpu_default(),
        steps=10**6,
        rays_per_step=lines,
        n_samples=PROTOTYPE_SAMPLES,
        cpu_bf16=case.cpu_bf16,
        amp=case.amp,
        field=case.field,
    )
    rep = seeded_field(study, case.field, seed=0).to(device)
    trainer, objective = _trainer(rep, study, config, device)
    objective.start(init_scale=True)
    return trainer


def run_speed(
    args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> tuple[list[SpeedRow], dict[str, Any]]:
    cases, lines = speed_cases(device, args.quick)
    if args.only:
        cases = [c for c in cases if any(text in c.name for text in args.only)]
    if args.quick:  # a smoke run: a tenth of the lines
        lines //= 10
    size = 128
    log(f"speed: {size}³ torso, AP/PA {size}×{size}, {lines} lines × {PROTOTYPE_SAMPLES} samples")
    study = torso_study(size, QUALITY_COUNTS, QUALITY_SEED)
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    runs = [(c, t) for c in cases for t in thread_counts]  # every model at every thread count
    trainers = [make_trainer(study, c, lines, device) for c, _ in runs]
    warmup, repeats = (1, 2) if args.quick else (1, args.repeats)
    steps = [0] * len(runs)
    peak: list[float | None] = [None] * len(runs)

    def step(k: int) -> None:
        torch.set_num_threads(runs[k][1])
        steps[k] += 1
        trainers[k]._train_step(steps[k])

    for k, (c, threads) in enumerate(runs):  # warm-up one at a time (peak memory on a GPU)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            log(f"  warm-up: {c.name}, {threads} thread(s)")
            step(k)
        synchronize(device)
        if device.type == "cuda":
            peak[k] = torch.cuda.max_memory_allocated(device) / 2**30
    gate = QuietGate(max_wait_s=args.max_quiet_wait)
    times: list[list[float]] = [[] for _ in runs]
    loads: list[list[float | None]] = [[] for _ in runs]
    order = list(range(len(runs)))
    for rnd in range(repeats):
        shift = rnd % len(order)
        for k in order[shift:] + order[:shift]:
            gate.wait()
            synchronize(device)
            m0 = CpuMark.now()
            step(k)
            synchronize(device)
            m1 = CpuMark.now()
            times[k].append(m1.wall - m0.wall)
            loads[k].append(others_load_between(m0, m1))
            log(
                f"  round {rnd + 1}/{repeats}: {runs[k][0].name}, {runs[k][1]} thread(s): "
                f"{times[k][-1]:.3f} s, others' load {_load(loads[k][-1])}"
            )
    torch.set_num_threads(max(thread_counts))
    rows = []
    for k, (c, threads) in enumerate(runs):
        n_params = sum(p.numel() for p in trainers[k].objective.representation.parameters())
        precision = "bf16 autocast" if c.cpu_bf16 or c.amp == "bf16" else "fp32"
        rows.append(
            SpeedRow(
                name=c.name,
                encoding=c.encoding,
                precision=precision,
                threads=threads,
                parameters=n_params,
                lines_per_step=lines,
                samples_per_step=lines * PROTOTYPE_SAMPLES,
                step_s=times[k],
                others_load=loads[k],
                peak_memory_gib=peak[k],
                target=(CPU_TARGETS[c.encoding] if device.type == "cpu" and c.target else None),
            )
        )
    details = {
        "grid": f"{size}³ default_grid (3.125 mm)",
        "detector": f"{size}×{size}, AP + PA",
        "lines_per_step": lines,
        "pixels_per_step": 2 * lines,
        "samples_per_ray": PROTOTYPE_SAMPLES,
        "warmup_steps": warmup,
        "timed_steps": repeats,
        "quiet_wait_s": round(gate.waited_s, 1),
        "rounds": gate.rounds,
        "rounds_started_busy": gate.rounds_busy,
        "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    return rows, details


def format_speed(rows: list[dict[str, Any]], device_type: str) -> list[str]:
    """The speed table of a record's rows (``SpeedRow`` fields and its ``summary()``)."""
    if device_type == "cuda":
        return markdown_table(
            ["model", "precision", "params", "ms / step", "steps / s", "samples / s",
             "peak GiB", "others' CPU load"],
            (
                [r["name"], r["precision"], f"{r['parameters']:,}", f"{1e3 * r['judged_s']:.1f}",
                 f"{1 / r['judged_s']:.2f}", f"{r['samples_per_s']:,.0f}",
                 f"{r['peak_memory_gib'] or 0:.2f}", _load(r["median_others_load"])]
                for r in rows
            ),
            "llrrrrrr",
        )  # fmt: skip

    def target(r: dict[str, Any]) -> str:
        if r["target"] is None:
            return "(reference)"
        return f"≥ {r['target']:g}×: {fmt_met(r['target_met'])}"

    def quiet(r: dict[str, Any]) -> str:
        if r["quiet_median_s"] is None:
            return "— (0)"
        return f"{r['quiet_median_s']:.2f} ({r['quiet_steps']})"

    return markdown_table(
        ["model", "threads", "params", "s / step: quiet steps (n)", "all steps", "min",
         "samples / s", f"vs prototype {PROTOTYPE_STEP_S:g} s", "target", "others' load"],
        (
            [r["name"], r["threads"], f"{r['parameters']:,}", quiet(r), f"{r['median_s']:.2f}",
             f"{r['min_s']:.2f}", f"{r['samples_per_s']:,.0f}", f"{r['speedup']:.1f}×",
             target(r), _load(r["median_others_load"])]
            for r in rows
        ),
        "lrrrrrrrlr",
    )  # fmt: skip


def _load(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


# -- CPU default and quality --------------------------------------------------------------------


@dataclass
class FitRun:
    """One NeRF fit with ``cpu_default``."""

    label: str
    threads: int
    support: bool
    wall_s: float
    train_s: float
    steps: int
    others_load: float | None
    val_psnr: float
    val_deviance: float
    volume: np.ndarray = field(repr=False)


def run_fit(
    study: Study,
    config: TrainConfig,
    *,
    threads: int,
    support: bool,
    device: torch.device,
    gate: QuietGate,
) -> FitRun:
    from recon.demo import SupportedField
    from recon.nerf.export import sample_on_grid
    from recon.nerf.training import fit

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gate.wait()
        m0 = CpuMark.now()
        rep: torch.nn.Module = seeded_field(study, config.field, seed=QUALITY_SEED)
        if support:
            rep = SupportedField(rep, torch.as_tensor(study.mu_per_mm) > 0)
        fitted = fit(rep, study, config, device=device)
        synchronize(device)
        m1 = CpuMark.now()
        volume = sample_on_grid(fitted.representation, study.grid).numpy()
    finally:
        torch.set_num_threads(before)
    return FitRun(
        label=f"NeRF cpu_default{', body support' if support else ''}",
        threads=threads,
        support=support,
        wall_s=m1.wall - m0.wall,
        train_s=fitted.elapsed_s,
        steps=fitted.steps_done,
        others_load=others_load_between(m0, m1),
        val_psnr=fitted.val_psnr,
        val_deviance=fitted.val_deviance,
        volume=volume,
    )


def run_mlem(
    study: Study, support: bool, iterations: int, device: torch.device
) -> dict[str, tuple[np.ndarray, int, float]]:
    """MLEM volumes at `MLEM_ITERATIONS` and at the iteration of least body NRMSE (oracle)."""
    from recon.algorithms.mlem import EMConfig, em_reconstruct
    from recon.evaluation.metrics import nrmse

    counts = torch.as_tensor(study.projections, dtype=torch.float32, device=device)
    mu = torch.as_tensor(study.mu_per_mm, dtype=torch.float32, device=device)
    body = study.labels > 0
    truth = study.truth_activity
    kept: dict[int, np.ndarray] = {}
    best: list[Any] = [math.inf, 0, None]
    t0 = time.perf_counter()

    def callback(it: int, activity: torch.Tensor, ll: float) -> None:
        x = activity.detach().cpu().numpy()
        err = nrmse(x, truth, body)
        if err < best[0]:
            best[:] = [err, it, x.copy()]
        if it in MLEM_ITERATIONS:
            kept[it] = x.copy()

    em_reconstruct(
        counts,
        study.geometry(),
        EMConfig(iterations=iterations),
        mu=mu,
        count_scale=study.acquisition.count_scale,
        mask=(mu > 0) if support else None,
        callback=callback,
    )
    elapsed = time.perf_counter() - t0
    suffix = ", body support" if support else ""
    out = {f"MLEM {it} it.{suffix}": (kept[it], it, elapsed) for it in sorted(kept)}
    out[f"MLEM best = {best[1]} it. (oracle){suffix}"] = (best[2], best[1], elapsed)
    return out


def run_quality(
    args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> dict[str, Any]:
    from recon.algorithms.conjugate_view import conjugate_view_quantification
    from recon.evaluation.metrics import evaluate_volume

    size = 64
    log(f"quality: {size}³ torso, AP/PA, {QUALITY_COUNTS:.0e} counts, seed {QUALITY_SEED}")
    study = torso_study(size, QUALITY_COUNTS, QUALITY_SEED)
    config = TrainConfig.cpu_default()
    if args.quick:
        config = dataclasses.replace(config, steps=60)
    gate = QuietGate(max_wait_s=args.max_quiet_wait)
    # The quality figures come from the fits with the first thread count.
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    plan = [(t, False) for t in thread_counts] + [(thread_counts[0], True)]
    if args.quick:
        plan = plan[:1]
    fits: list[FitRun] = []
    for threads, support in plan:
        log(f"  NeRF cpu_default, {threads} thread(s), support={support}")
        run = run_fit(study, config, threads=threads, support=support, device=device, gate=gate)
        log(f"    {run.wall_s:.1f} s (training {run.train_s:.1f} s), others' load "
            f"{_load(run.others_load)}")  # fmt: skip
        fits.append(run)
    volumes: dict[str, np.ndarray] = {}
    for run in fits:
        if run.threads == thread_counts[0]:
            volumes.setdefault(run.label, run.volume)
    iterations = 60 if args.quick else max(MLEM_ITERATIONS)
    mlem_s: dict[str, float] = {}
    for support in (False, True) if not args.quick else (False,):
        log(f"  MLEM {iterations} iterations, support={support}")
        for name, (vol, _, elapsed) in run_mlem(study, support, iterations, device).items():
            volumes[name] = vol
            mlem_s[name] = elapsed

    truth, labels, names = study.truth_activity, study.labels, study.label_names
    metrics = {
        name: evaluate_volume(vol, truth, labels, names, study.grid, unit=study.activity_unit)
        for name, vol in volumes.items()
    }
    conjugate = conjugate_view_quantification(study, background="body")
    return {
        "study": {
            "grid": f"{size}³ default_grid ({study.grid.spacing_mm[0]:g} mm)",
            "total_counts": float(study.projections.sum(dtype=np.float64)),
            "seed": QUALITY_SEED,
        },
        "config": config.to_dict(),
        "fits": [{k: v for k, v in dataclasses.asdict(r).items() if k != "volume"} for r in fits],
        "quiet_wait_s": round(gate.waited_s, 1),
        "rounds_started_busy": gate.rounds_busy,
        "mlem_s": mlem_s,
        "metrics": metrics,
        "conjugate_view": [dataclasses.asdict(row) for row in conjugate],
    }


def format_fits(quality: Mapping[str, Any]) -> list[str]:
    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    return markdown_table(
        ["fit", "torch threads", "steps", "wall s (whole `fit`)", "training loop s",
         f"< {CPU_DEFAULT_LIMIT_S:g} s", "others' load", "held-out PSNR dB", "deviance / pixel"],
        (
            [r["label"], r["threads"], r["steps"], seconds(r["wall_s"]), seconds(r["train_s"]),
             fmt_met(r["wall_s"] < CPU_DEFAULT_LIMIT_S), _load(r["others_load"]),
             f"{r['val_psnr']:.1f}", f"{r['val_deviance']:.2f}"]
            for r in quality["fits"]
        ),
        "lrrrrlrrr",
    )  # fmt: skip


def format_quality(quality: Mapping[str, Any]) -> list[str]:
    def ssim(m: Mapping[str, Any]) -> str:
        return "—" if m["ssim"] is None else f"{m['ssim']:.3f}"

    return markdown_table(
        ["method", "NRMSE body", "NRMSE volume", "PSNR dB", "SSIM", "total activity error",
         "activity outside body"],
        (
            [name, f"{m['nrmse_body']:.3f}", f"{m['nrmse']:.3f}", f"{m['psnr_db']:.1f}", ssim(m),
             _pct(m["total_activity"]["relative_error"]),
             _pct(m.get("activity_outside", {}).get("fraction"), signed=False)]
            for name, m in quality["metrics"].items()
        ),
        "lrrrrrr",
    )  # fmt: skip


def format_organs(quality: Mapping[str, Any]) -> list[str]:
    metrics: Mapping[str, Mapping[str, Any]] = quality["metrics"]
    # a method without organ figures (e.g. one left out of a published table) has no column
    methods = [
        m for m in metrics if any(o["relative_error"] is not None for o in metrics[m]["organs"])
    ]
    conj = {row["name"]: row for row in quality["conjugate_view"]}
    first = next(iter(metrics.values()))["organs"]
    rows = []
    for k, organ in enumerate(first):
        cells = [_pct(metrics[m]["organs"][k]["relative_error"]) for m in methods]
        cv = conj.get(organ["name"])
        cells.append(_pct(cv["relative_error"]) if cv else "—")
        rows.append([organ["name"], _mbq(organ["true_mbq"]), *cells])
    return markdown_table(
        ["organ", "true MBq", *methods, "conjugate view"], rows, "lr" + "r" * (len(methods) + 1)
    )


def _mbq(value: float) -> str:
    return f"{value:.2f}" if value >= 0.01 else f"{value:.1g}"


def _pct(value: float | None, signed: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:+.1f} %" if signed else f"{100 * value:.1f} %"


# -- main ---------------------------------------------------------------------------------------


def render(record: Mapping[str, Any]) -> dict[str, str]:
    """The docs blocks of one record: the speed table and/or the fit, quality and organ tables."""
    blocks = {}
    if "speed" in record:
        device_type = str(record["machine"].get("device", "cpu")).split(":")[0]
        blocks["nerf-speed"] = "\n".join(format_speed(record["speed"]["rows"], device_type))
    if "quality" in record:
        quality = record["quality"]
        blocks["nerf-fits"] = "\n".join(format_fits(quality))
        blocks["nerf-quality"] = "\n".join(format_quality(quality))
        blocks["nerf-organs"] = "\n".join(format_organs(quality))
    return blocks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(
        parser, repeats_default=5, repeats_help="timed steps per model", quiet_wait_default_s=20.0
    )
    parser.add_argument("--part", default="all", choices=("speed", "quality", "all"))
    parser.add_argument(
        "--only",
        action="append",
        help="time only the models whose name contains this text (repeatable)",
    )
    args = parser.parse_args(argv)
    check_common_options(parser, args)
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen parts; the run's record."""
    device = torch.device(args.device)
    if args.threads is None:
        args.threads = sorted({1, usable_cores()})
    torch.set_num_threads(max(args.threads))
    report: dict[str, Any] = {
        "benchmark": "nerf",
        "script": "benchmarks/bench_nerf.py",
        "machine": machine_info(device),
        "load_average_start": load_average(),
        "settings": vars(args),
    }
    log(f"timed with {args.threads} threads; load average at start "
        f"{_load(report['load_average_start'])}")  # fmt: skip
    if args.part in ("speed", "all"):
        rows, details = run_speed(args, device, log)
        report["speed"] = {
            "rows": [dataclasses.asdict(r) | r.summary() for r in rows],
            **details,
        }
        log(
            f"speed per training step: {details['lines_per_step']} lines = "
            f"{details['pixels_per_step']} AP+PA pixels, {PROTOTYPE_SAMPLES} samples per ray; "
            f"median of {details['timed_steps']} after {details['warmup_steps']} warm-up; "
            f"{details['rounds_started_busy']} of {details['rounds']} steps started while others "
            f"were busy; a step is quiet when others used < {QUIET_LOAD} cores, and samples/s "
            f"and the speed-up use the median of the quiet steps when there are at least "
            f"{MIN_QUIET}, else of all"
        )
    if args.part in ("quality", "all"):
        report["quality"] = run_quality(args, device, log)
    report["load_average_end"] = load_average()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and args.from_json is None and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    return run_benchmark(args, "nerf", measure, render)


if __name__ == "__main__":
    sys.exit(main())

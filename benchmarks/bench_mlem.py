"""Speed of one MLEM / OSEM iteration in ``spect`` vs PyTomography 3.4.0, with a cross-check.

What it measures, in one run, float32, torch threads = all usable cores, attenuation on, no PSF:

* MLEM, 120 views over 360° of a 64³ volume (4.8 mm voxels);
* MLEM, AP/PA (β = 0 and 180) of a 128³ volume (2.4 mm voxels);
* OSEM with 8 subsets, 120 views of 64³.

Per-iteration time. Each package reconstructs the same counts with ``--iterations`` (default 5)
iterations, and the reconstruction's own per-iteration callback records a timestamp. The
per-iteration time (s/iter) is the median of the intervals between successive timestamps, pooled
over the timed rounds: the steady cost of one iteration, one-off setup excluded. Their mean
equals ``(time of N iterations − time of 1 iteration) / (N − 1)``. The one-off cost of each
package is the time of the whole call minus N × s/iter (measured as the call's time up to the
first callback, plus the short tail after the last one, minus one s/iter).

* PyTomography: ``MLEM(PoissonLogLikelihood(H, g))(N, callback=…)`` (``OSEM(…)(N, 8, …)`` for
  subsets; the last subset of each iteration is stamped), ``H`` a ``SPECTSystemMatrix`` with a
  ``SPECTAttenuationTransform`` built beforehand. Each call first computes ``Hᵀ1`` (per subset),
  so its first iteration costs FP + 2 BP; that is its one-off cost. An iteration is FP + BP +
  the update.
* spect: ``recon.algorithms.mlem.em_reconstruct(counts, geometry, EMConfig(N, subsets), mu=mu,
  count_scale=1, callback=…)``. Its one-off cost is the setup: building the ``SPECTProjector``
  operators (which cache the attenuation factors), the sensitivity images and the uniform start
  image. An iteration is FP + BP + the update, and it records the Poisson log-likelihood in
  ``EMResult.log_likelihood``. With one subset that reuses the forward projection that starts
  the next iteration (the callback of iteration k comes after that projection, and the last
  iteration adds one projection, counted in the one-off cost); with subsets it costs one full
  forward projection per iteration, which is also timed on its own.

As a check on the callback method, PyTomography's ``PoissonLogLikelihood.compute_gradient`` (one
FP + one BP) is also timed directly. The two packages' runs are interleaved round by round, and
each round first waits (``--max-quiet-wait``, default 30 s) until other processes on the machine
are idle (``benchmarks/_timing.py``). The machine's CPU counters also tell how busy other
processes were during each sample: the figures are medians over the samples during which they
used less than 0.25 cores (over the whole reconstruction or round where a sample is too short to
judge), or over all samples where fewer than 3 qualify; the output says how many were quiet.

Cross-check: both start from a uniform image and run N iterations on the same noise-free counts
(PyTomography's forward projection of a smooth phantom, scaled to a realistic total; ``--poisson``
draws seeded Poisson counts instead). PyTomography's model is ``g = H f`` with ``H`` summing
voxel values along a ray; ours is ``y = count_scale · A x`` with ``A`` a line integral in mm, so
``A = d · H`` (``d`` = voxel size in mm, layouts converted). MLEM is invariant under rescaling of
the system matrix (``x ← x · Aᵀ(y / Ax) / Aᵀ1``), and after one iteration from a uniform image
it no longer depends on that image's level, so with ``count_scale = 1`` the iterates are
``x_k = f_k / d``. The column reports ‖d · x_N − f_N‖ / ‖f_N‖ in our layout ``[Z, Y, X]``.

Run it with the reference environment's Python (``bash benchmarks/setup_reference_env.sh``
builds it)::

    benchmarks/.env-pytomography/bin/python benchmarks/bench_mlem.py
    benchmarks/.env-pytomography/bin/python benchmarks/bench_mlem.py --quick   # smoke run
    benchmarks/.env-pytomography/bin/python benchmarks/bench_mlem.py --json out.json

``--no-reference`` times spect alone, on counts from its own forward projection of the phantom
(PyTomography is not imported). ``--from-json FILE --write-docs`` re-renders a saved run's tables
into ``docs/performance.md`` (``_report.py``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from _report import (
    add_common_options,
    check_common_options,
    fmt_met,
    fmt_ratio,
    log,
    machine_summary,
    make_record,
    markdown_table,
    run_benchmark,
)
from _timing import (
    CpuMark,
    QuietGate,
    Timing,
    load_average,
    machine_info,
    others_load_between,
    package_version,
    synchronize,
    usable_cores,
)
from bench_projector import PyTomographyCase, SpectCase, make_phantom, rel_diff


@dataclass(frozen=True)
class EMCase:
    """One benchmark case: a cubic ``n³`` grid of ``voxel_mm`` voxels, angles and subsets."""

    name: str
    n: int
    voxel_mm: float
    angles_deg: tuple[float, ...]
    kind: str  # "ap_pa" or "full_circle" (the spectproj geometry preset)
    subsets: int
    total_counts: float
    target: float | None  # minimum PyTomography / spect ratio per iteration (from the issue)
    repeats: int  # timed rounds (full run)


FULL_CIRCLE_120 = tuple(3.0 * k for k in range(120))
CASES: tuple[EMCase, ...] = (
    EMCase("120 views 64³, MLEM", 64, 4.8, FULL_CIRCLE_120, "full_circle", 1, 3e6, 3.0, 5),
    EMCase("AP/PA 128³, MLEM", 128, 2.4, (0.0, 180.0), "ap_pa", 1, 1e6, 10.0, 7),
    EMCase("120 views 64³, OSEM 8", 64, 4.8, FULL_CIRCLE_120, "full_circle", 8, 3e6, None, 5),
)


@dataclass
class Row:
    """One configuration's results."""

    config: str
    views: int
    subsets: int
    iterations: int
    pytomography_iter: Timing | None  # steady per-iteration time (Timing fields are in ms)
    spect_iter: Timing
    pytomography_rest: Timing | None  # the whole call minus the callback intervals
    spect_rest: Timing  # the same for em_reconstruct (setup + 1 iteration)
    spect_fp_loglik: Timing  # one full forward projection + Poisson log-likelihood
    pytomography_gradient: Timing | None  # PoissonLogLikelihood.compute_gradient (FP + BP)
    rel_diff: float | None  # None without the reference
    details: dict[str, Any] = field(default_factory=dict)
    target: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.pytomography_iter is None:
            return None
        return self.pytomography_iter.median_ms / self.spect_iter.median_ms

    @property
    def speedup_of_minima(self) -> float | None:
        if self.pytomography_iter is None:
            return None
        return self.pytomography_iter.min_ms / self.spect_iter.min_ms

    @property
    def target_met(self) -> bool | None:
        speedup = self.speedup
        return None if self.target is None or speedup is None else speedup >= self.target

    @property
    def pytomography_one_off_ms(self) -> float | None:
        """Everything in a run that is not a steady iteration (mostly ``Hᵀ1``)."""
        if self.pytomography_rest is None or self.pytomography_iter is None:
            return None
        return self.pytomography_rest.median_ms - self.pytomography_iter.median_ms

    @property
    def spect_one_off_ms(self) -> float:
        """Everything in a run that is not a steady iteration (mostly the setup)."""
        return self.spect_rest.median_ms - self.spect_iter.median_ms


@dataclass
class Report:
    """Everything the run found; written by ``--json``."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# One reconstruction per package, with a timestamp after every full iteration
# --------------------------------------------------------------------------------------------


#: A sample is "disturbed" when other processes used at least this many cores meanwhile.
BUSY_CORES = 0.25
#: Below this duration (s) the CPU counters (10 ms ticks) are too coarse to judge one sample;
#: the load over the whole reconstruction (or round) is used instead.
MIN_JUDGED_S = 0.3


@dataclass
class RunTimes:
    """Timestamps of one reconstruction: ``total_ms`` of the whole call, ``intervals_ms``
    between successive per-iteration callbacks, ``rest_ms`` = the whole call minus the intervals
    (the one-off work plus one iteration), and the cores' worth of CPU that other processes used
    during each (``None`` if unknown)."""

    total_ms: float
    intervals_ms: list[float]
    rest_ms: float
    total_others_load: float | None
    intervals_others_load: list[float | None]
    rest_others_load: float | None


class _IterationStamps:
    """Collects ``time.perf_counter()`` at the end of every full iteration.

    Serves as PyTomography's callback (``run(object, n_iter, n_subset)`` after every subset,
    ``finalize(object)``: only the last subset of an iteration is stamped) and as spect's
    (``callback(iteration, activity, log_likelihood)``).
    """

    def __init__(self, device: torch.device, subsets: int = 1) -> None:
        self.device = device
        self.subsets = subsets
        self.marks: list[CpuMark] = []

    def start(self) -> None:
        synchronize(self.device)
        self.marks = [CpuMark.now()]
        self.end: CpuMark | None = None

    def stop(self) -> None:
        synchronize(self.device)
        self.end = CpuMark.now()

    def _stamp(self) -> None:
        synchronize(self.device)
        self.marks.append(CpuMark.now())

    # PyTomography's Callback interface
    def run(self, obj: torch.Tensor, n_iter: int, n_subset: int) -> torch.Tensor:
        if n_subset == self.subsets - 1:
            self._stamp()
        return obj

    def finalize(self, obj: torch.Tensor) -> None:
        return None

    # spect's IterationCallback
    def __call__(self, iteration: int, activity: torch.Tensor, log_likelihood: float) -> None:
        self._stamp()

    def times(self, iterations: int) -> RunTimes:
        if len(self.marks) != iterations + 1 or self.end is None:
            raise RuntimeError(f"expected {iterations} iteration stamps, got {len(self.marks) - 1}")
        start = self.marks[0]
        whole = others_load_between(start, self.end)

        def load(a: CpuMark, b: CpuMark) -> float | None:
            return others_load_between(a, b) if b.wall - a.wall >= MIN_JUDGED_S else whole

        pairs = list(itertools.pairwise(self.marks[1:]))
        intervals_ms = [(b.wall - a.wall) * 1e3 for a, b in pairs]
        total_ms = (self.end.wall - start.wall) * 1e3
        return RunTimes(
            total_ms=total_ms,
            intervals_ms=intervals_ms,
            rest_ms=total_ms - sum(intervals_ms),
            total_others_load=whole,
            intervals_others_load=[load(a, b) for a, b in pairs],
            # the rest is the call's start up to the first callback, plus a short tail
            rest_others_load=load(start, self.marks[1]),
        )


def run_pytomography(
    pyt: PyTomographyCase, counts_vbz: torch.Tensor, iterations: int, subsets: int
) -> tuple[RunTimes, torch.Tensor]:
    """PyTomography MLEM (1 subset) or OSEM from its all-ones start; returns times and image."""
    from pytomography.algorithms import MLEM, OSEM
    from pytomography.likelihoods import PoissonLogLikelihood

    stamps = _IterationStamps(pyt.device, subsets)
    stamps.start()
    likelihood = PoissonLogLikelihood(pyt.system_matrix, counts_vbz)
    if subsets == 1:
        image = MLEM(likelihood)(iterations, callback=stamps)
    else:
        image = OSEM(likelihood)(iterations, subsets, callback=stamps)
    stamps.stop()
    return stamps.times(iterations), image


def run_spect(
    sp: SpectCase, counts_vzb: torch.Tensor, iterations: int, subsets: int
) -> tuple[RunTimes, torch.Tensor, list[float]]:
    """spect's ``em_reconstruct`` from its default uniform start, ``count_scale = 1``."""
    from recon.algorithms.mlem import EMConfig, em_reconstruct

    stamps = _IterationStamps(sp.device)
    stamps.start()
    result = em_reconstruct(
        counts_vzb,
        sp.geometry,
        EMConfig(iterations=iterations, subsets=subsets),
        mu=sp.mu,
        count_scale=1.0,
        callback=stamps,
    )
    stamps.stop()
    return stamps.times(iterations), result.activity, result.log_likelihood


@dataclass
class Samples:
    """Wall times (ms) of one quantity with the other processes' load during each."""

    ms: list[float] = field(default_factory=list)
    others_load: list[float | None] = field(default_factory=list)

    def add(self, ms: float, others_load: float | None) -> None:
        self.ms.append(ms)
        self.others_load.append(others_load)

    def timing(self) -> tuple[Timing, str]:
        """Median and minimum over the undisturbed samples (a sample whose load is unknown counts
        as undisturbed), or over all samples if fewer than 3 are undisturbed; also says which."""
        quiet = [
            t for t, x in zip(self.ms, self.others_load, strict=True) if x is None or x < BUSY_CORES
        ]
        enough = len(quiet) >= min(3, len(self.ms))
        used = quiet if enough else self.ms
        note = f"{len(quiet)} quiet of {len(self.ms)}" + ("" if enough else ", all used")
        return Timing(statistics.median(used), min(used), used), note


def bench_case(case: EMCase, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    """Time and cross-check one case."""
    from recon.algorithms.poisson import poisson_log_likelihood

    device = torch.device(args.device)
    iterations = args.iterations
    if args.repeats is not None:
        repeats, warmup = args.repeats, 1
    else:
        repeats, warmup = (1, 0) if args.quick else (case.repeats, 1)
    activity_np, mu_np = make_phantom(case.n, case.voxel_mm)
    activity = torch.from_numpy(activity_np).to(device)
    mu = torch.from_numpy(mu_np).to(device)

    sp = SpectCase(mu, case.voxel_mm, case.angles_deg, case.kind, device)
    pyt = (
        None if args.no_reference else PyTomographyCase(mu, case.voxel_mm, case.angles_deg, device)
    )
    if pyt is not None:
        truth_obj = pyt.to_object(activity)
        g = pyt.forward(truth_obj)  # [V, bins, Z], sum of voxel values along each ray
    else:  # spect's own projection, in PyTomography's layout and units (÷ the step in mm)
        g = sp.forward(activity).permute(0, 2, 1) / case.voxel_mm
    # The phantom's Gaussian smoothing leaves tails of ~1e-12 counts far from the body: set the
    # bins below 1e-6 of the maximum to 0 (a real acquisition has whole counts there).
    g = torch.where(g >= 1e-6 * g.max(), g, 0.0)
    scale = case.total_counts / float(g.sum())
    g = g * scale
    if args.poisson is not None:
        gen = torch.Generator(device=device).manual_seed(args.poisson)
        g = torch.poisson(g, generator=gen)
    counts_vbz = g.contiguous()  # PyTomography's layout
    counts_vzb = g.permute(0, 2, 1).contiguous()  # ours: [V, rows = Z, bins = X], same values
    if tuple(sp.geometry.detector_shape) != tuple(counts_vzb.shape[1:]):
        raise RuntimeError(f"detector {sp.geometry.detector_shape} vs counts {counts_vzb.shape}")

    def loglik_eval() -> float:
        # A full forward projection and the Poisson log-likelihood, on the phantom: what
        # em_reconstruct adds to each iteration with subsets, to record EMResult.log_likelihood.
        return float(poisson_log_likelihood(counts_vzb, 1.0 * sp.forward(activity)))

    def pyt_gradient() -> torch.Tensor:
        return likelihood.compute_gradient(ones_obj)

    names: tuple[str, ...] = ("spect", "loglik")
    if pyt is not None:
        from pytomography.likelihoods import PoissonLogLikelihood

        likelihood = PoissonLogLikelihood(pyt.system_matrix, counts_vbz)
        likelihood._set_n_subsets(1)  # its H^T 1, needed by compute_gradient, outside the timing
        ones_obj = torch.ones_like(truth_obj)
        names = ("pytomography", "spect", "loglik", "pyt_gradient")
    samples = {
        key: Samples()
        for key in ("pyt_iter", "our_iter", "pyt_rest", "our_rest", "loglik", "pyt_gradient")
    }
    pyt_runs: list[RunTimes] = []
    our_runs: list[RunTimes] = []
    out: dict[str, Any] = {}
    gate = QuietGate(max_wait_s=args.max_quiet_wait, threshold_cores=BUSY_CORES)
    who = "spect alone (no reference)" if pyt is None else "PyTomography and spect interleaved"
    log(
        f"{case.name}: {warmup} warm-up + {repeats} timed rounds of {iterations} iterations, " + who
    )
    for rnd in range(warmup + repeats):
        timed = rnd >= warmup
        if timed:
            gate.wait()
        round_start = CpuMark.now()
        calls: dict[str, tuple[float, float | None]] = {}
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "pytomography" and pyt is not None:
                t, out["pyt_image"] = run_pytomography(pyt, counts_vbz, iterations, case.subsets)
                pyt_runs.append(t)
            elif name == "spect":
                t, out["our_image"], out["our_ll"] = run_spect(
                    sp, counts_vzb, iterations, case.subsets
                )
                our_runs.append(t)
            else:
                fn = loglik_eval if name == "loglik" else pyt_gradient
                synchronize(device)
                start = CpuMark.now()
                fn()
                synchronize(device)
                end = CpuMark.now()
                long_enough = end.wall - start.wall >= MIN_JUDGED_S
                calls[name] = ((end.wall - start.wall) * 1e3, others_load_between(start, end))
                if not long_enough:  # judged by the whole round, below
                    calls[name] = (calls[name][0], None)
        if not timed:
            pyt_runs.clear()
            our_runs.clear()
            continue
        round_load = others_load_between(round_start, CpuMark.now())
        for name, (ms, load) in calls.items():
            samples[name].add(ms, round_load if load is None else load)
        latest = [("pyt", pyt_runs[-1])] if pyt_runs else []
        for key, run in [*latest, ("our", our_runs[-1])]:
            samples[f"{key}_rest"].add(run.rest_ms, run.rest_others_load)
            for ms, load in zip(run.intervals_ms, run.intervals_others_load, strict=True):
                samples[f"{key}_iter"].add(ms, load)
    timings = {key: smp.timing() for key, smp in samples.items() if smp.ms}

    # Cross-check, in our layout and units: our x_N = PyTomography's f_N / d (see the docstring).
    ours = out["our_image"].to(torch.float64) * case.voxel_mm
    truth = activity.to(torch.float64) * scale  # the f that g = H f came from
    cross: dict[str, float | None] = dict.fromkeys(
        ("rel_diff", "sum_ratio", "pytomography_error_vs_truth", "pytomography_log_likelihood")
    )
    if pyt is not None:
        theirs = pyt.from_object(out["pyt_image"]).to(torch.float64)
        pyt_expected = pyt.forward(out["pyt_image"]).permute(0, 2, 1).double()  # H f_N, ours
        cross.update(
            rel_diff=rel_diff(ours, theirs),
            sum_ratio=float(ours.sum() / theirs.sum()),
            pytomography_error_vs_truth=rel_diff(theirs, truth),
            pytomography_log_likelihood=float(
                poisson_log_likelihood(counts_vzb.double(), pyt_expected)
            ),
        )
    details = {
        "n": case.n,
        "voxel_mm": case.voxel_mm,
        "views": len(case.angles_deg),
        "subsets": case.subsets,
        "total_counts": float(counts_vzb.sum()),
        "poisson_seed": args.poisson,
        "repeats": repeats,
        "warmup": warmup,
        "quiet_wait_s": round(gate.waited_s, 1),
        "rounds": gate.rounds,
        "rounds_started_busy": gate.rounds_busy if args.max_quiet_wait > 0 else None,
        "sum_ratio": cross["sum_ratio"],
        "pytomography_error_vs_truth": cross["pytomography_error_vs_truth"],
        "spect_error_vs_truth": rel_diff(ours, truth),
        "spect_log_likelihood": out["our_ll"][-1],
        "pytomography_log_likelihood": cross["pytomography_log_likelihood"],
        "samples_used": {key: note for key, (_, note) in timings.items()},
        "pytomography_runs": [asdict(r) for r in pyt_runs],
        "spect_runs": [asdict(r) for r in our_runs],
    }
    return Row(
        config=case.name,
        views=len(case.angles_deg),
        subsets=case.subsets,
        iterations=iterations,
        pytomography_iter=timings["pyt_iter"][0] if pyt is not None else None,
        spect_iter=timings["our_iter"][0],
        pytomography_rest=timings["pyt_rest"][0] if pyt is not None else None,
        spect_rest=timings["our_rest"][0],
        spect_fp_loglik=timings["loglik"][0],
        pytomography_gradient=timings["pyt_gradient"][0] if pyt is not None else None,
        rel_diff=cross["rel_diff"],
        details=details,
        target=case.target,
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt_s(ms: float | None) -> str:
    if ms is None:
        return "—"
    s = ms / 1e3
    return f"{s:.2g}" if s < 0.01 else f"{s:.3f}" if s < 10 else f"{s:.1f}"


def _median(timing: Mapping[str, Any] | None) -> float | None:
    return None if timing is None else timing["median_ms"]


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def render(record: Mapping[str, Any]) -> dict[str, str]:
    """The docs blocks of one record: per-iteration times, one-off costs and cross-check."""
    rows = record["rows"]
    table = markdown_table(
        ["config", "PyTomography s/iter", "spect s/iter", "speed-up", "(of minima)", "target",
         "met?", "rel. diff"],
        (
            [r["config"], fmt_s(_median(r["pytomography_iter"])), fmt_s(_median(r["spect_iter"])),
             fmt_ratio(r["speedup"]), fmt_ratio(r["speedup_of_minima"]),
             "—" if r["target"] is None else f"≥ {r['target']:g}×", fmt_met(r["target_met"]),
             _num(r["rel_diff"], ".1e")]
            for r in rows
        ),
        "lrrrrrlr",
    )  # fmt: skip
    one_off = markdown_table(
        ["config", "PyTomography one-off (Hᵀ1)", "spect one-off (setup)",
         "spect FP + log-likelihood", "PyTomography `compute_gradient`"],
        (
            [r["config"], fmt_s(r["pytomography_one_off_ms"]), fmt_s(r["spect_one_off_ms"]),
             fmt_s(_median(r["spect_fp_loglik"])), fmt_s(_median(r["pytomography_gradient"]))]
            for r in rows
        ),
        "lrrrr",
    )  # fmt: skip
    cross = markdown_table(
        ["config", "iterations", "rel. diff", "sum ratio", "PyTomography vs phantom",
         "spect vs phantom", "log-likelihood PyTomography", "log-likelihood spect"],
        (
            [r["config"], r["iterations"], _num(r["rel_diff"], ".1e"),
             _num(d["sum_ratio"], ".6f"), _num(d["pytomography_error_vs_truth"], ".3f"),
             _num(d["spect_error_vs_truth"], ".3f"),
             _num(d["pytomography_log_likelihood"], ".6e").replace("-", "−"),
             _num(d["spect_log_likelihood"], ".6e").replace("-", "−")]
            for r in rows
            for d in [r["details"]]
        ),
        "lrrrrrrr",
    )  # fmt: skip
    with_targets = [r for r in rows if r["target"] is not None and r["speedup"] is not None]
    targets = markdown_table(
        ["target", "measured", "met?"],
        (
            [f"{r['config'].split(', ')[1]}, {r['config'].split(', ')[0]} with attenuation: "
             f"≥ {r['target']:g}× faster per iteration than PyTomography",
             f"{fmt_ratio(r['speedup'])} ({fmt_s(_median(r['pytomography_iter']))} → "
             f"{fmt_s(_median(r['spect_iter']))} s)",
             fmt_met(r["target_met"])]
            for r in with_targets
        ),
        "lll",
    )  # fmt: skip
    return {
        "mlem": "\n".join(table),
        "mlem-one-off": "\n".join(one_off),
        **({"mlem-targets": "\n".join(targets)} if with_targets else {}),
        "mlem-cross-check": "\n".join(cross),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(p, reference=True, repeats_help="timed rounds per case (overrides defaults)")
    p.add_argument(
        "--iterations",
        type=int,
        default=5,
        help="iterations per reconstruction (default 5; the cross-check compares iteration N)",
    )
    p.add_argument(
        "--poisson",
        type=int,
        metavar="SEED",
        help="draw Poisson counts with this seed (default: noise-free counts)",
    )
    args = p.parse_args(argv)
    check_common_options(p, args)
    if args.iterations < 2:
        p.error("--iterations must be at least 2 (s/iter is the time between two iterations)")
    return args


#: The repository's files that the spect side of this benchmark runs.
TIMED_SOURCES = (
    "recon/algorithms/mlem.py",
    "recon/algorithms/poisson.py",
    "recon/algorithms/priors.py",
    "recon/algorithms/filters.py",
    "spectproj",
)


def source_revision() -> str | None:
    """The repository's commit, with a note if the code timed here has local changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", *TIMED_SOURCES)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" + local changes" if dirty else "")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case; the run's record."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads[-1] if args.threads else usable_cores())
    torch.set_default_dtype(torch.float32)
    machine = machine_info(device)
    machine["spect"] = package_version("spect")
    machine["spect_revision"] = source_revision()
    machine["load_average_start"] = load_average()
    report = Report(
        machine=machine,
        settings={
            "quick": args.quick,
            "repeats": args.repeats,
            "iterations": args.iterations,
            "dtype": "float32",
            "counts": "noise-free" if args.poisson is None else f"Poisson, seed {args.poisson}",
            "statistic": "median interval between per-iteration callbacks (iterations 2..N), "
            "pooled over timed rounds; packages interleaved",
            "with_reference": not args.no_reference,
            "max_quiet_wait_s": args.max_quiet_wait,
        },
    )
    log(f"MLEM / OSEM benchmark on {machine_summary(machine)}")
    with torch.no_grad():
        for case in CASES:
            row = bench_case(case, args, log)
            report.rows.append(row)
            pyt_iter = row.pytomography_iter
            log(
                f"{case.name}: PyTomography {fmt_s(pyt_iter and pyt_iter.median_ms)} "
                f"s/iter, spect {fmt_s(row.spect_iter.median_ms)} s/iter "
                f"({fmt_ratio(row.speedup)}), rel. diff {_num(row.rel_diff, '.1e')}"
            )
    for r in report.rows:
        used = r.details["samples_used"]
        log(f"{r.config}: quiet samples (< {BUSY_CORES} cores of others) used: {used}")
        if r.details.get("rounds_started_busy"):
            log(f"{r.config}: {r.details['rounds_started_busy']} of {r.details['rounds']} rounds "
                "started while other processes were busy")  # fmt: skip
    machine["load_average_end"] = load_average()
    properties = (
        "speedup",
        "speedup_of_minima",
        "target_met",
        "pytomography_one_off_ms",
        "spect_one_off_ms",
    )
    script = "benchmarks/bench_mlem.py"
    return make_record("mlem", script, report, report.rows, properties)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(args, "mlem", measure, render)


if __name__ == "__main__":
    raise SystemExit(main())

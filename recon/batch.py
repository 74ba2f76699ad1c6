"""Reconstruct many studies (MLEM/OSEM or NeRF) over several processes and devices.

`reconstruct_batch` reconstructs every study file into ``OUT/<stem>.h5`` (a `recon.io.Result`)
and returns a `BatchSummary`: one `BatchRow` per study, in the order given, with its status
(``ok`` or ``failed``), the one-line error of a failure, the time taken, the total activity and,
for phantoms, the error of the total and of the organ activities. A study that fails (a broken
file, bad data, a crash of its worker process) becomes a failed row; the others go on.

With ``workers > 1`` the studies run in a `concurrent.futures.ProcessPoolExecutor` of
``spawn``-ed processes (safe with torch and CUDA), each with ``cores // workers`` torch threads,
study *i* on ``devices[i % len(devices)]``; with ``workers = 1`` they run one after the other in
this process. Progress is reported through a callback; this module prints nothing.

The summary is also written as ``OUT/summary.csv`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import concurrent.futures as futures
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recon.algorithms.mlem import EMConfig
from recon.io import Result, read_study, write_result
from recon.io.atomic import atomic_output
from recon.io.study import Study
from recon.io.summary import total_mbq
from recon.nerf.config import TrainConfig
from recon.reconstruct import reconstruct_mlem, reconstruct_nerf
from recon.support import SUPPORT_KINDS

__all__ = [
    "METHODS",
    "SUMMARY_COLUMNS",
    "BatchCallback",
    "BatchRow",
    "BatchSummary",
    "output_path",
    "reconstruct_batch",
]

METHODS = ("mlem", "nerf")
#: Columns of ``summary.csv``.
SUMMARY_COLUMNS = (
    "study", "status", "output", "method", "device", "seconds", "total_mbq", "truth_mbq",
    "total_error", "organ_error", "error",
)  # fmt: skip

#: ``callback(done, total, row)`` in the calling process each time a study finishes.
BatchCallback = Callable[[int, int, "BatchRow"], None]


@dataclass(frozen=True)
class BatchRow:
    """The outcome of one study.

    Attributes
    ----------
    study:
        The study file, as given.
    status:
        ``"ok"`` or ``"failed"``.
    output:
        The result file written (``None`` on failure).
    method:
        ``"mlem"``, ``"osem"``, ``"map-osl"`` or ``"nerf"``.
    device:
        Where it ran.
    seconds:
        Wall time of the study (reading, reconstructing, writing).
    total_mbq, truth_mbq:
        Total activity in the volume (MBq; only for Bq/mL studies), and the truth's (phantoms).
    total_error:
        ``total_mbq / truth_mbq − 1``.
    organ_error:
        Mean absolute relative error of the labelled structures' activity
        (`recon.cohort.prior.organ_activity_error`; phantoms only).
    error:
        One line, ``"<ExceptionType>: <message>"``, on failure.
    """

    study: str
    status: str
    output: str | None = None
    method: str = ""
    device: str = ""
    seconds: float = math.nan
    total_mbq: float | None = None
    truth_mbq: float | None = None
    total_error: float | None = None
    organ_error: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BatchSummary:
    """Every study's `BatchRow`, in the order the studies were given.

    Attributes
    ----------
    rows:
        The rows.
    method:
        ``"mlem"`` or ``"nerf"`` (as asked).
    out_dir:
        Where the results are.
    workers:
        Processes used.
    elapsed_s:
        Wall time of the whole batch.
    summary_files:
        ``summary.csv`` and ``summary.json`` (empty if not written).
    """

    rows: list[BatchRow]
    method: str
    out_dir: Path
    workers: int
    elapsed_s: float
    summary_files: list[Path] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        return sum(r.ok for r in self.rows)

    @property
    def failed(self) -> list[BatchRow]:
        return [r for r in self.rows if not r.ok]


def output_path(study: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Where the result of ``study`` goes: ``out_dir/<study stem>.h5``."""
    return Path(out_dir) / f"{Path(study).stem}.h5"


@dataclass(frozen=True)
class _Task:
    index: int
    study: str
    output: str
    method: str
    mlem: EMConfig
    nerf: TrainConfig | None
    prior: str | None
    fine_tune: bool
    device: str
    overwrite: bool
    threads: int
    support: str | None = None


def reconstruct_batch(
    study_paths: Sequence[str | os.PathLike[str]],
    method: str = "mlem",
    out_dir: str | os.PathLike[str] = "results",
    *,
    workers: int = 1,
    mlem: EMConfig | None = None,
    nerf: TrainConfig | None = None,
    prior: str | os.PathLike[str] | None = None,
    fine_tune: bool = False,
    devices: Sequence[str] | str | None = None,
    overwrite: bool = False,
    callback: BatchCallback | None = None,
    write_summary: bool = True,
    support: str | None = None,
) -> BatchSummary:
    """Reconstruct every study file, each into ``out_dir/<stem>.h5``; failures are rows.

    Parameters
    ----------
    study_paths:
        Study files (their stems must be unique).
    method:
        ``"mlem"`` (`recon.reconstruct.reconstruct_mlem` with ``mlem``: MLEM, OSEM or MAP-OSL,
        with the study's μ, background and named collimator) or ``"nerf"``
        (`recon.reconstruct.reconstruct_nerf` with ``nerf``, and ``prior`` when given), as
        ``spect recon mlem`` / ``spect recon nerf`` do; each result's parameters also hold
        ``batch: true``.
    out_dir:
        Folder of the results (created if missing) and of ``summary.csv``/``summary.json``.
    workers:
        Processes (1: one after the other in this process).
    mlem:
        EM settings (default ``EMConfig()``: 10 MLEM iterations).
    nerf:
        NeRF settings (default: ``TrainConfig.cpu_default()`` on CPU, ``gpu_default()`` on CUDA).
    prior:
        A cohort model for NeRF (``method="nerf"`` only).
    fine_tune:
        With ``prior``: fine-tune the network after the code fit.
    devices:
        Devices to spread the studies over: a list (``["cuda:0", "cuda:1"]``), ``"auto"``
        (every CUDA device, else the CPU), or ``None`` (the CPU).
    overwrite:
        Replace existing result files (otherwise such a study fails with a message).
    callback:
        `BatchCallback`, called as studies finish (in completion order).
    write_summary:
        Write ``summary.csv`` and ``summary.json`` to ``out_dir``.
    support:
        Where activity may be (`recon.support.resolve_support`): ``"body"``, ``"anatomy"``,
        ``"none"`` or ``None`` (default: the body of each study that has μ, a CT or an
        anatomy, else none). Recorded in each result's parameters (``support``,
        ``support_note``). Not yet applied with a cohort ``prior``.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ValueError
        No studies, an unknown method, duplicate study stems, ``prior`` with MLEM, bad workers.
    """
    paths = [os.fspath(p) for p in study_paths]
    if not paths:
        raise ValueError("no study files to reconstruct")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if prior is not None and method != "nerf":
        raise ValueError("a cohort prior is for method 'nerf'")
    if support is not None and support not in SUPPORT_KINDS:
        raise ValueError(f"support must be one of {list(SUPPORT_KINDS)} or None, got {support!r}")
    stems: dict[str, str] = {}
    for p in paths:
        stem = Path(p).stem
        if stem in stems:
            raise ValueError(
                f"{stems[stem]} and {p} would both write {stem}.h5; rename one or run them apart"
            )
        stems[stem] = p
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    device_list = _devices(devices)
    workers = min(workers, len(paths))
    threads = max(1, _usable_cores() // workers)
    mlem_config = mlem or EMConfig()
    prior_file = None if prior is None else os.fspath(prior)
    tasks = []
    for k, p in enumerate(paths):
        device = device_list[k % len(device_list)]
        output = os.fspath(output_path(p, folder))
        tasks.append(
            _Task(k, p, output, method, mlem_config, nerf, prior_file, fine_tune, device,
                  overwrite, threads, support)
        )  # fmt: skip
    t0 = time.perf_counter()
    rows: list[BatchRow | None] = [None] * len(tasks)
    done = 0

    def finish(task: _Task, row: BatchRow) -> None:
        nonlocal done
        rows[task.index] = row
        done += 1
        if callback is not None:
            callback(done, len(tasks), row)

    if workers == 1:
        for task in tasks:
            finish(task, _run(task, set_threads=False))
    else:
        _run_pool(tasks, workers, finish)
    summary = BatchSummary(
        [r for r in rows if r is not None], method, folder, workers, time.perf_counter() - t0
    )
    if write_summary:
        summary.summary_files = _write_summary(summary)
    return summary


def _run_pool(tasks: list[_Task], workers: int, finish: Callable[[_Task, BatchRow], None]) -> None:
    """Run ``tasks`` in a pool of spawned processes; if a worker dies (the pool breaks), run the
    unfinished ones in a fresh single-worker pool each, so a crash only fails its own study."""
    context = multiprocessing.get_context("spawn")
    left: list[_Task] = []
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(_run, task): task for task in tasks}
        for future in futures.as_completed(pending):
            task = pending[future]
            try:
                finish(task, future.result())
            except futures.process.BrokenProcessPool:
                left.append(task)
    for task in sorted(left, key=lambda t: t.index):
        with futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                row = pool.submit(_run, task).result()
            except futures.process.BrokenProcessPool as error:
                row = _failed(task, f"the worker process died ({error})", math.nan)
        finish(task, row)


def _run(task: _Task, set_threads: bool = True) -> BatchRow:
    """Reconstruct one study; every exception becomes a failed row."""
    t0 = time.perf_counter()
    try:
        if set_threads:
            torch.set_num_threads(task.threads)
        output = Path(task.output)
        if output.exists() and not task.overwrite:
            raise FileExistsError(f"{output}: already exists; use --force to overwrite it")
        study = read_study(task.study)
        if task.method == "mlem":
            result = _mlem(study, task)
        else:
            result = _nerf(study, task)
        write_result(output, result, overwrite=task.overwrite)
        return _ok(task, study, result, time.perf_counter() - t0)
    except Exception as error:  # a failed study is a row, never the end of the batch
        return _failed(task, _one_line(error), time.perf_counter() - t0)


def _mlem(study: Study, task: _Task) -> Result:
    return reconstruct_mlem(
        study, task.mlem, support=task.support, device=task.device, study_file=task.study,
        extra_parameters={"batch": True},
    )  # fmt: skip


def _nerf(study: Study, task: _Task) -> Result:
    config = task.nerf
    if config is None:
        on_gpu = torch.device(task.device).type == "cuda"
        config = TrainConfig.gpu_default() if on_gpu else TrainConfig.cpu_default()
    return reconstruct_nerf(
        study, config, support=None if task.prior is not None else task.support,
        prior=task.prior, fine_tune=task.fine_tune, device=task.device, study_file=task.study,
        extra_parameters={"batch": True},
    )  # fmt: skip


def _ok(task: _Task, study: Study, result: Result, seconds: float) -> BatchRow:
    from recon.cohort.prior import organ_activity_error

    total = total_mbq(result.activity, result.grid, result.activity_unit)
    truth = total_error = None
    if total is not None and study.truth_activity is not None:
        truth = total_mbq(study.truth_activity, study.grid, study.activity_unit)
        total_error = total / truth - 1.0 if truth else None
    return BatchRow(
        study=task.study, status="ok", output=task.output, method=result.method,
        device=task.device, seconds=seconds, total_mbq=total, truth_mbq=truth,
        total_error=total_error, organ_error=organ_activity_error(result.activity, study),
    )  # fmt: skip


def _failed(task: _Task, message: str, seconds: float) -> BatchRow:
    return BatchRow(
        study=task.study, status="failed", method=task.method, device=task.device,
        seconds=seconds, error=message,
    )  # fmt: skip


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"


def _devices(devices: Sequence[str] | str | None) -> list[str]:
    if devices is None:
        return ["cpu"]
    if isinstance(devices, str):
        if devices == "auto":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            return [f"cuda:{k}" for k in range(n)] or ["cpu"]
        devices = [devices]
    out = []
    for d in devices:
        dev = torch.device(d)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {d!r}: CUDA is not available (torch {torch.__version__})")
        out.append(str(dev))
    if not out:
        raise ValueError("devices is empty")
    return out


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _write_summary(summary: BatchSummary) -> list[Path]:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in summary.rows:
        values = row.to_dict()
        writer.writerow(["" if values[c] is None else _cell(values[c]) for c in SUMMARY_COLUMNS])
    csv_path = summary.out_dir / "summary.csv"
    json_path = summary.out_dir / "summary.json"
    with atomic_output(csv_path, overwrite=True) as tmp:
        Path(tmp).write_text(text.getvalue(), encoding="utf-8")
    payload = {
        "method": summary.method,
        "workers": summary.workers,
        "elapsed_s": summary.elapsed_s,
        "n_ok": summary.n_ok,
        "n_failed": len(summary.failed),
        "rows": [
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in r.to_dict().items()
            }
            for r in summary.rows
        ],
    }
    with atomic_output(json_path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return [csv_path, json_path]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)

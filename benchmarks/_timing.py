"""Timing and machine-description helpers shared by the benchmarks in this folder.

* ``machine_info`` describes the CPU, cores, torch threads and library versions for a report;
* ``QuietGate`` holds each timed round back until *other* processes on the machine are idle
  (from ``/proc/stat``), since on a shared machine a burst of someone else's work slows torch's
  thread pool down by an order of magnitude;
* ``CpuMark`` / ``others_load_between`` tell how busy other processes were during a measurement,
  so that samples disturbed by them can be set aside;
* ``time_interleaved`` times several functions round by round, rotating their order, so that a
  slow spell falls on all of them alike.

The benchmarks are run as scripts (``python benchmarks/bench_*.py``), so this module is imported
as a top-level module from the script's folder.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Timing:
    """Wall times of one operation, in milliseconds."""

    median_ms: float
    min_ms: float
    samples_ms: list[float]


def usable_cores() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "pytomography": package_version("pytomography"),
        "kornia": package_version("kornia"),
        "numpy": np.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_busy_seconds() -> float | None:
    """CPU time (s) spent by the whole machine since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def other_processes_load(interval_s: float = 0.25) -> float | None:
    """Cores' worth of CPU used by *other* processes over the next ``interval_s`` seconds."""
    busy0, own0 = _cpu_busy_seconds(), sum(os.times()[:2])
    time.sleep(interval_s)
    busy1, own1 = _cpu_busy_seconds(), sum(os.times()[:2])
    if busy0 is None or busy1 is None:
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / interval_s


@dataclass(frozen=True)
class CpuMark:
    """A moment: wall clock, the machine's busy CPU time and this process's CPU time (s)."""

    wall: float
    machine_busy: float | None
    own: float

    @classmethod
    def now(cls) -> CpuMark:
        return cls(time.perf_counter(), _cpu_busy_seconds(), sum(os.times()[:2]))


def others_load_between(start: CpuMark, end: CpuMark) -> float | None:
    """Cores' worth of CPU that *other* processes used between two marks (None if unknown).

    The counters tick every 10 ms, so the figure is only meaningful over a few hundred ms.
    """
    if start.machine_busy is None or end.machine_busy is None or end.wall <= start.wall:
        return None
    others = (end.machine_busy - start.machine_busy) - (end.own - start.own)
    return max(0.0, others) / (end.wall - start.wall)


@dataclass
class QuietGate:
    """Before each timed round, wait (up to ``max_wait_s``) until other processes are idle.

    On a shared machine another process's burst of work can slow torch's thread pool down by an
    order of magnitude; waiting for a quiet moment keeps such bursts out of most samples.
    ``rounds_busy`` counts the rounds that had to start anyway, with others still busy.
    """

    max_wait_s: float
    threshold_cores: float = 0.2
    waited_s: float = 0.0
    rounds: int = 0
    rounds_busy: int = 0

    def wait(self) -> None:
        self.rounds += 1
        if self.max_wait_s <= 0:
            return
        t0 = time.perf_counter()
        while True:
            load = other_processes_load()
            if load is None or load < self.threshold_cores:
                break
            if time.perf_counter() - t0 > self.max_wait_s:
                self.rounds_busy += 1
                break
        self.waited_s += time.perf_counter() - t0


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int,
    gate: QuietGate,
) -> dict[str, Timing]:
    """Median and minimum wall time of each ``fn()``, over ``repeats`` rounds after ``warmup``.

    The functions are called in turn within each round (the order rotating from round to round),
    so a slow spell of the machine falls on all of them alike rather than on whichever happened
    to be measured at the time; ``gate`` holds each round back while other processes are busy.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(repeats):
        gate.wait()
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: Timing(statistics.median(ts), min(ts), ts) for name, ts in samples.items()}


def load_average() -> float | None:
    """The one-minute load average (other processes competing for the cores), if known."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None

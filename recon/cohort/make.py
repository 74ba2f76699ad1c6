"""`make_cohort`: simulate a cohort of a phantom population into a folder, in parallel.

The folder holds one study file per member (``p0000.h5``, ``p0001.h5``, ...,
`recon.data.phantoms.population.simulate_sample`), the manifest ``cohort.csv``
(`recon.cohort.manifest`: ``id,path,split``) and ``population.json`` (the distribution, the seed,
the grid and each member's description, `PopulationSample.to_dict`). Each member is an anatomy
of its own, so a split of the studies is a split by anatomy.

The members are simulated in ``workers`` spawned processes (one torch thread each when they share
the cores); the files are written into a hidden staging folder beside the cohort folder and moved
into place together at the end (`recon.io.atomic.staged_folder`), so they appear complete or not
at all, also after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from recon.cohort.manifest import Manifest, ManifestEntry, write_manifest
from recon.data.phantoms.population import PopulationConfig, sample_torso, simulate_sample

__all__ = ["MANIFEST_NAME", "POPULATION_NAME", "CohortMade", "make_cohort", "study_name"]

#: The manifest file in a made cohort folder.
MANIFEST_NAME = "cohort.csv"
#: The population description in a made cohort folder.
POPULATION_NAME = "population.json"

#: ``callback(done, total)`` after each study.
MakeCallback = Callable[[int, int], None]


def study_name(index: int) -> str:
    """Id (and file stem) of member ``index``: ``p0000``, ``p0001``, ..."""
    return f"p{index:04d}"


@dataclass(frozen=True)
class CohortMade:
    """What `make_cohort` wrote.

    Attributes
    ----------
    folder : Path
        The cohort folder.
    manifest : Manifest
        Its manifest (paths absolute).
    elapsed_s : float
        Wall time (s).
    workers : int
        Processes used.
    """

    folder: Path
    manifest: Manifest
    elapsed_s: float
    workers: int

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME


def make_cohort(
    folder: str | os.PathLike[str],
    n: int,
    config: PopulationConfig | None = None,
    *,
    seed: int = 0,
    size: int = 64,
    oversample: int = 2,
    val_fraction: float = 0.0,
    workers: int = 1,
    overwrite: bool = False,
    callback: MakeCallback | None = None,
) -> CohortMade:
    """Simulate members ``0 … n − 1`` of a population into ``folder`` (module notes).

    Parameters
    ----------
    folder : path
        The cohort folder to create (its parent must exist).
    n : int
        Number of studies (>= 1).
    config : PopulationConfig, optional
        The distribution (default ``PopulationConfig()``: Lu-177 DOTATATE).
    seed : int
        Seed of the population.
    size : int
        Study grid voxels per axis (400 mm field of view).
    oversample : int
        Simulation grid factor (`simulate_variant`).
    val_fraction : float
        Share of the studies marked ``val`` in the manifest (seeded by ``seed``), in [0, 1).
    workers : int
        Processes (>= 1; 1: in this process).
    overwrite : bool
        Replace the files of the same names in an existing ``folder`` (others are left alone).
    callback : callable, optional
        ``callback(done, total)`` after each study.

    Returns
    -------
    CohortMade

    Raises
    ------
    ValueError
        Bad ``n``, ``size``, ``workers`` or ``val_fraction``.
    FileExistsError, FileNotFoundError
        ``folder`` holds files of the same names (without ``overwrite``) or is a file, or its
        parent does not exist.
    """
    from recon.batch import _usable_cores  # the one count of this process's cores
    from recon.io.atomic import staged_folder

    config = PopulationConfig() if config is None else config
    if not isinstance(config, PopulationConfig):
        raise TypeError(f"config must be a PopulationConfig, got {type(config).__name__}")
    for name, value, low in (("n", n, 1), ("size", size, 4), ("workers", workers, 1),
                             ("oversample", oversample, 1), ("seed", seed, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(val_fraction, int | float) and 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    target = Path(folder)
    t0 = time.perf_counter()
    workers = min(workers, n)
    names = [f"{study_name(k)}.h5" for k in range(n)] + [MANIFEST_NAME, POPULATION_NAME]
    with staged_folder(target, names, overwrite=overwrite) as tmp:
        tasks = [_Task(k, seed, config, size, oversample, str(tmp)) for k in range(n)]
        threads = max(1, _usable_cores() // workers)
        described: dict[int, dict[str, object]] = {}

        def finish(index: int, description: dict[str, object]) -> None:
            described[index] = description
            if callback is not None:
                callback(len(described), n)

        if workers == 1:
            for task in tasks:
                finish(task.index, _make_one(task, None))
        else:
            _run_pool(tasks, workers, threads, finish)
        entries = tuple(
            ManifestEntry(study_name(k), target.resolve() / f"{study_name(k)}.h5") for k in range(n)
        )
        manifest = Manifest(entries)
        if val_fraction > 0:
            manifest = manifest.with_val_fraction(val_fraction, seed)
        local = Manifest(
            tuple(ManifestEntry(e.study_id, tmp / e.path.name, e.split) for e in manifest.entries)
        )
        write_manifest(tmp / MANIFEST_NAME, local)
        population = {
            "config": config.to_dict(),
            "seed": seed,
            "size": size,
            "fov_mm": 400.0,
            "oversample": oversample,
            "studies": [described[k] for k in range(n)],
        }
        (tmp / POPULATION_NAME).write_text(json.dumps(population, indent=1), encoding="utf-8")
    manifest = Manifest(manifest.entries, target / MANIFEST_NAME)
    return CohortMade(target, manifest, time.perf_counter() - t0, workers)


@dataclass(frozen=True)
class _Task:
    index: int
    seed: int
    config: PopulationConfig
    size: int
    oversample: int
    folder: str


def _make_one(task: _Task, threads: int | None) -> dict[str, object]:
    """Simulate and write one member; its description for ``population.json``."""
    from recon.io import write_study

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    sample = sample_torso(task.config, task.seed, task.index)
    study = simulate_sample(sample, size=task.size, oversample=task.oversample)
    name = study_name(task.index)
    write_study(Path(task.folder) / f"{name}.h5", study)
    return {"id": name, "file": f"{name}.h5", **sample.to_dict()}


def _run_pool(
    tasks: list[_Task],
    workers: int,
    threads: int,
    finish: Callable[[int, dict[str, object]], None],
) -> None:
    context = multiprocessing.get_context("spawn")
    pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        pending = {pool.submit(_make_one, task, threads): task for task in tasks}
        for future in futures.as_completed(pending):
            finish(pending[future].index, future.result())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

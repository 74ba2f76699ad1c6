"""Fault injection: a table of ≥ 100 fault and bad-input cases (tests/fault_cases.py), each run
through the CLI in-process; then a few in real subprocesses (real signals, SIGKILL, a tiny full
file system, strace-injected ENOSPC). docs/faults.md is generated from the same table
(benchmarks/fault_table.py --write-docs)."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fault_cases import CASES, PREVIOUS, base_files, leftovers, run_case

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_has_at_least_100_cases_in_every_category() -> None:
    counts = collections.Counter(c.category for c in CASES)
    assert len(CASES) >= 100, counts
    assert len({c.id for c in CASES}) == len(CASES)
    assert set(counts) == {"disk", "signal", "oversized", "corrupt", "numeric", "output"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault_case(case, tmp_path: Path) -> None:
    outcome = run_case(case, tmp_path / "work")
    assert not outcome.problems, (outcome.problems, outcome.message)


# -- real processes ------------------------------------------------------------------------------


def _spect(
    folder: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [*prefix, sys.executable, "-c", "from cli.main import app; app()", *args]
    return subprocess.run(
        command,
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


#: One MLEM iteration over ``study.h5`` into an existing ``r.h5`` (the PREVIOUS bytes).
MLEM_OVER_PREVIOUS = ("recon", "mlem", "study.h5", "-o", "r.h5", "--iterations", "1", "--force")


def _study(folder: Path) -> Path:
    shutil.copy(base_files()["study"], folder / "study.h5")
    return folder / "study.h5"


@pytest.mark.parametrize(
    ("spec", "code"),
    [("written:SIGTERM", 143), ("write:SIGINT*2", 130)],
    ids=["SIGTERM", "two-SIGINT"],
)
def test_real_signal_during_a_write(tmp_path: Path, spec: str, code: int) -> None:
    """A real signal (sent by the process to itself at that point of the write), in a real
    process: one line, the signal's exit code, the previous file intact, nothing left."""
    _study(tmp_path)
    (tmp_path / "r.h5").write_bytes(PREVIOUS)
    run = _spect(
        tmp_path,
        *MLEM_OVER_PREVIOUS,
        env={"SPECT_FAULT_INJECT": spec},
    )
    assert run.returncode == code, run.stderr
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("Error: interrupted")
    assert "Traceback" not in run.stderr + run.stdout
    assert (tmp_path / "r.h5").read_bytes() == PREVIOUS
    assert leftovers(tmp_path) == []


def test_sigkill_leaves_a_temporary_that_the_next_run_sweeps(tmp_path: Path) -> None:
    run = _spect(
        tmp_path,
        "simulate",
        "-o",
        "s.h5",
        "--size",
        "8",
        env={"SPECT_FAULT_INJECT": "commit:SIGKILL"},
    )
    assert run.returncode == -9
    assert len(leftovers(tmp_path)) == 1 and not (tmp_path / "s.h5").exists()
    rerun = _spect(tmp_path, "simulate", "-o", "s.h5", "--size", "8")
    assert rerun.returncode == 0, rerun.stderr
    assert leftovers(tmp_path) == [] and (tmp_path / "s.h5").is_file()


def test_a_tiny_full_file_system(tmp_path: Path) -> None:
    """A real ENOSPC: a 16 KiB tmpfs (needs unshare and mount, e.g. root in a container)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {tmp_path}"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()[:100]}")
    script = (
        f"mount -t tmpfs -o size=16k tmpfs {tmp_path} && printf previous > {tmp_path}/s.h5 "
        f'&& exec "$@"'
    )
    run = _spect(
        tmp_path.parent,
        "simulate",
        "-o",
        str(tmp_path / "s.h5"),
        "--size",
        "24",
        "--force",
        prefix=("unshare", "-m", "sh", "-c", script + " && ls -A " + str(tmp_path), "sh"),
    )
    assert run.returncode == 1, run.stderr
    assert (
        run.stderr.strip() == f"Error: {tmp_path / 's.h5'}: cannot write: no space left on device"
    )
    assert "Traceback" not in run.stderr + run.stdout


def test_strace_injected_enospc_at_fsync(tmp_path: Path) -> None:
    """``strace -e inject=fsync:error=ENOSPC``: the kernel refuses the flush of the temporary."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    probe = subprocess.run(["strace", "-o", "/dev/null", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"strace is not permitted here: {probe.stderr.decode().strip()[:100]}")
    _study(tmp_path)
    (tmp_path / "r.h5").write_bytes(PREVIOUS)
    run = _spect(
        tmp_path,
        *MLEM_OVER_PREVIOUS,
        prefix=("strace", "-f", "-o", "/dev/null", "-e", "inject=fsync:error=ENOSPC"),
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == "Error: r.h5: cannot write: no space left on device"
    assert (tmp_path / "r.h5").read_bytes() == PREVIOUS
    assert leftovers(tmp_path) == []

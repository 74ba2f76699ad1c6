"""Same options, seed and thread count → identical result files (data), through the CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.helpers import assert_ok, invoke

#: Datasets that record time, not results.
TIMING = {"/history/time_s"}


def _data(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__("/" + name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return {k: v for k, v in out.items() if k not in TIMING}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repro") / "s.h5"
    assert_ok(invoke("simulate", "-o", path, "--size", 8, "--counts", 1e5))
    return path


@pytest.mark.parametrize(
    "command",
    [
        [
            "recon",
            "nerf",
            "--seed",
            "3",
            "--steps",
            "3",
            "--rays-per-step",
            "8",
            "--samples",
            "8",
            "--threads",
            "1",
        ],
        ["recon", "mlem", "--iterations", "3", "--subsets", "2"],
    ],
    ids=["nerf-seed", "osem"],
)
def test_the_same_command_twice_gives_identical_data(study: Path, tmp_path: Path, command):
    threads = torch.get_num_threads()
    try:
        outputs = []
        for run in ("a", "b"):
            out = tmp_path / f"{run}.h5"
            assert_ok(
                invoke(*command, study, "-o", out, "--out-dir", tmp_path / f"{run}_nerf")
                if command[1] == "nerf"
                else invoke(*command, study, "-o", out)
            )
            outputs.append(_data(out))
    finally:
        torch.set_num_threads(threads)
    a, b = outputs
    assert a.keys() == b.keys() and "/activity" in a
    for key in a:
        assert np.array_equal(a[key], b[key], equal_nan=True), key


def test_a_different_seed_gives_a_different_field(study: Path, tmp_path: Path) -> None:
    """The check above can fail: the seed does reach the field's initial weights."""
    threads = torch.get_num_threads()
    try:
        runs = []
        for seed in (3, 4):
            out = tmp_path / f"s{seed}.h5"
            assert_ok(
                invoke(
                    "recon",
                    "nerf",
                    study,
                    "-o",
                    out,
                    "--seed",
                    seed,
                    "--steps",
                    1,
                    "--rays-per-step",
                    8,
                    "--samples",
                    8,
                    "--threads",
                    1,
                )
            )
            runs.append(_data(out)["/activity"])
    finally:
        torch.set_num_threads(threads)
    assert not np.array_equal(*runs)

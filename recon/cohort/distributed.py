"""Process groups for data-parallel cohort training: `torch.distributed` launched by ``torchrun``.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and tells each
its place through environment variables: ``RANK`` (0 … ``WORLD_SIZE`` − 1 over all machines),
``LOCAL_RANK`` (on this machine), ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
`init_distributed` reads them and joins the process group (``init_method="env://"``) with the
``nccl`` backend on GPUs or ``gloo`` on CPUs. Without those variables (a plain ``spect
train-cohort``) it returns a one-process `DistInfo` and nothing is initialised.

Only rank 0 writes files (`DistInfo.is_main`); every rank reads the study files itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "BACKENDS",
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "distributed_session",
    "init_distributed",
    "launched_by_torchrun",
    "resolve_device",
]

#: Backends of `init_distributed` (``auto``: ``nccl`` on CUDA devices, ``gloo`` otherwise).
BACKENDS = ("auto", "gloo", "nccl")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes
    ----------
    rank, world_size, local_rank:
        Global rank, number of processes, rank on this machine.
    backend:
        ``"gloo"``, ``"nccl"`` or ``None`` (one process, no process group).
    device:
        The device this process computes on (``cuda:<local_rank>`` with NCCL).
    owns_group:
        Whether `init_distributed` created the process group (and
        `distributed_session` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process (a process group is in use)."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether the ``torchrun`` environment variables (RANK, WORLD_SIZE, MASTER_*) are set."""
    return all(name in os.environ for name in _ENV)


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``"cuda"`` →
    ``cuda:<local_rank>``; anything else as given.

    Raises
    ------
    ValueError
        CUDA asked for but not available.
    """
    text = str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {text!r}: CUDA is not available (torch {torch.__version__}); use cpu"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init_distributed(
    backend: str = "auto",
    device: str | torch.device = "auto",
    *,
    timeout_s: float = 1800.0,
) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment, if any.

    Parameters
    ----------
    backend:
        ``"auto"`` (``nccl`` for CUDA devices, ``gloo`` otherwise), ``"gloo"`` or ``"nccl"``.
    device:
        ``"auto"``, ``"cpu"``, ``"cuda"`` (→ ``cuda:<LOCAL_RANK>``) or an explicit device.
    timeout_s:
        Timeout of collective operations (s).

    Returns
    -------
    DistInfo
        One process (``backend=None``) without the torchrun variables or with
        ``WORLD_SIZE=1``. If a process group is already initialised it is used as it is.

    Raises
    ------
    ValueError
        An unknown backend, ``nccl`` without CUDA devices, CUDA asked for but absent.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), dev, False
        )
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if world <= 1:
        return DistInfo(0, 1, 0, None, dev, False)
    if not dist.is_available():  # pragma: no cover - every supported build has it
        raise ValueError("this PyTorch build has no torch.distributed")
    chosen = ("nccl" if dev.type == "cuda" else "gloo") if backend == "auto" else backend
    if chosen == "nccl":
        if dev.type != "cuda":
            raise ValueError(f"the nccl backend needs CUDA devices, but the device is {dev}")
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend=chosen,
        init_method="env://",
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=dev if chosen == "nccl" else None,
    )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, chosen, dev, True)


@contextlib.contextmanager
def distributed_session(
    backend: str = "auto", device: str | torch.device = "auto"
) -> Iterator[DistInfo]:
    """`init_distributed`, and destroy the process group on exit if it was created here."""
    info = init_distributed(backend, device)
    try:
        yield info
        # Rank 0 may still be writing files after the last collective: leave together, since
        # tearing gloo down while a peer is still connected can abort the process.
        barrier(info)
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index or 0])
        else:
            dist.barrier()


def all_reduce_sum(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (``values`` itself for one process).

    The tensor is reduced on the collective's device (the CUDA device with NCCL) and returned
    on the device it came from.
    """
    if not info.distributed:
        return values
    where = info.device if info.backend == "nccl" else torch.device("cpu")
    buffer = values.detach().to(where).clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(values.device)


def broadcast_object(info: DistInfo, value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (pickled; for small objects and trusted peers)."""
    if not info.distributed:
        return value
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0, device=_object_device(info))
    return box[0]


def all_gather_objects(info: DistInfo, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` for one process)."""
    if not info.distributed:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def _object_device(info: DistInfo) -> torch.device | None:
    return info.device if info.backend == "nccl" else None

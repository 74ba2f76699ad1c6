"""Process-level settings of a training run, done once: determinism, stop signals, AMP.

Stopping: SIGINT, SIGTERM or SIGHUP (Ctrl-C, ``scancel``, a pre-emption, a closed terminal) or
`request_stop` set a flag that `recon.training.loop.Trainer` reads at the end of the step in
progress (with several ranks the flag travels with the step's all-reduce, so all ranks stop at
the same step). A second
signal raises `recon.io.signals.Interrupted` at once (`stop_forced`: no checkpoint is written
then); later ones are ignored while it cleans up. The signal is recorded
(`recon.io.signals.received`), so the CLI exits with its code (130, 143, 129).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from recon.io import signals
from recon.nerf.config import TrainConfig

__all__ = [
    "AutocastField",
    "amp_mode",
    "autocast",
    "deterministic",
    "due",
    "request_stop",
    "stop_forced",
    "stop_requested",
    "stop_signals",
    "to_cpu",
    "voxel_points",
]

_STOP = threading.Event()
_FORCED = threading.Event()  # a second signal interrupted at once: the state may be half updated
_DEPTH = 0  # nesting of `stop_signals`


def request_stop() -> None:
    """Ask a running training (in this process) to stop after the current step; a checkpoint of
    that step is written (the SIGINT/SIGTERM handlers call this)."""
    _STOP.set()


def stop_requested() -> bool:
    """Whether `request_stop` (or a signal) asked the running training to stop."""
    return _STOP.is_set()


def stop_forced() -> bool:
    """Whether a second signal interrupted the running training at once (anywhere in a step)."""
    return _FORCED.is_set()


@contextlib.contextmanager
def stop_signals() -> Iterator[bool]:
    """Over the body, SIGINT/SIGTERM/SIGHUP → `request_stop` (a second signal raises
    `recon.io.signals.Interrupted`); yields whether this is the outermost run, the one that stops.

    The outermost call clears the stop flag and, in the main thread, installs the handlers
    (the previous ones are restored on exit). A nested run (e.g. the code fits of a cohort's
    validation) changes nothing and must not stop on the flag: its outer run does.
    """
    global _DEPTH
    outermost = _DEPTH == 0
    _DEPTH += 1
    try:
        if not outermost:
            yield False
            return
        _STOP.clear()
        _FORCED.clear()
        if threading.current_thread() is not threading.main_thread():
            yield True
            return

        def handler(signum: int, frame: object) -> None:
            signals.note(signum)
            if _FORCED.is_set():
                return  # a third signal: the forced stop is already cleaning up
            if _STOP.is_set():
                _FORCED.set()
                raise signals.Interrupted(signum)
            _STOP.set()

        previous = {sig: signal.signal(sig, handler) for sig in signals.STOP_SIGNALS}
        try:
            yield True
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
    finally:
        _DEPTH -= 1


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic torch algorithms (warn only) and cuDNN over the body, when ``enabled``."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_before = torch.backends.cudnn.deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.backends.cudnn.deterministic = cudnn_before


def amp_mode(config: TrainConfig, dev: torch.device) -> str:
    """The mixed precision a run uses: ``config.amp`` on CUDA, ``"bf16"`` on the CPU with
    ``cpu_bf16``, else ``"off"`` (and always ``"off"`` with L-BFGS)."""
    if config.optimizer != "adam":
        return "off"
    if dev.type == "cuda":
        return config.amp
    return "bf16" if dev.type == "cpu" and config.cpu_bf16 else "off"


def autocast(amp: str, dev: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``amp`` (`amp_mode`) on ``dev`` (a null context when off)."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=dev.type, dtype=dtype)


class AutocastField:
    """A field evaluated under an autocast context, its values returned in float32 (the
    projector's sums and blur stay in float32)."""

    def __init__(self, field: Any, autocast: Callable[[], Any]) -> None:
        self.field, self.autocast = field, autocast

    def __call__(self, points_mm: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            values = self.field(points_mm)
        return values.float()


def voxel_points(grid: Any, flat_index: torch.Tensor) -> torch.Tensor:
    """Centres ``[N, 3]`` (x, y, z mm, float32, on ``flat_index``'s device) of the voxels with
    flat indices into the ``[Z, Y, X]`` array of ``grid``."""
    _, ny, nx = grid.shape
    dev = flat_index.device
    cz, cy, cx = (grid.centres_mm(a, dtype=torch.float32, device=dev) for a in range(3))
    k, j, i = flat_index // (ny * nx), (flat_index // nx) % ny, flat_index % nx
    return torch.stack([cx[i], cy[j], cz[k]], dim=1)


def to_cpu(value: Any) -> Any:
    """Tensors (also inside dicts, lists and tuples) detached and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def due(step: int, every: int) -> bool:
    """Whether an action ``every`` steps (0: never) falls on ``step``."""
    return every > 0 and step % every == 0

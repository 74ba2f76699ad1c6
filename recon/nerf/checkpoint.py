"""Training checkpoints: plain tensors and primitive containers, written atomically.

A checkpoint is a dict saved with `torch.save` that holds only tensors, numbers, strings, ``None``
and lists/tuples/dicts of them, so that `load_checkpoint` reads it with
``torch.load(weights_only=True)``: an untrusted file cannot run code. Keys:

``format``, ``version``
    ``"spect-nerf-checkpoint"`` and `CHECKPOINT_VERSION`.
``step``
    Optimiser steps completed.
``representation``
    ``{"kind": "EmissionField" | "VoxelActivity" | <class name>, "grid": {"shape", "spacing_mm",
    "offset_mm"}, "field_config": dict | None}``: enough to rebuild the model.
``model``, ``optimizer``, ``scaler``
    ``state_dict()`` of the representation (with its latent code and ``scale``), the optimiser
    and the AMP gradient scaler (``{}`` without one).
``config``
    `recon.nerf.config.TrainConfig.to_dict`.
``rng``
    ``sampler`` (the ray sampler's generator state), ``torch``, ``cuda`` (list, may be empty),
    ``python`` (`random.getstate`) and ``numpy`` (MT19937 state as a tensor and numbers).
``data``
    ``digest`` (`recon.nerf.rays.study_digest`), ``count_scale``, ``activity_level``,
    ``count_level``, ``used_3d_supervision``.
``history``, ``losses``, ``elapsed_s``
    The logged rows so far, the loss of every step so far, the training time so far (s).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.io.atomic import write_bytes
from recon.io.limits import MAX_DEFLATE_RATIO, check_array_size
from spectproj import ImageGrid

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "LAST_CHECKPOINT",
    "capture_rng",
    "checkpoint_name",
    "grid_from_dict",
    "grid_to_dict",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "spect-nerf-checkpoint"
CHECKPOINT_VERSION = 1
#: File name of the most recent checkpoint in an output folder.
LAST_CHECKPOINT = "checkpoint-last.pt"


def checkpoint_name(step: int) -> str:
    """``checkpoint-XXXXXX.pt`` for ``step`` (six digits, zero-padded)."""
    return f"checkpoint-{int(step):06d}.pt"


def grid_to_dict(grid: ImageGrid) -> dict[str, list[float] | list[int]]:
    """``{"shape", "spacing_mm", "offset_mm"}`` of a grid, as lists of numbers."""
    return {
        "shape": [int(n) for n in grid.shape],
        "spacing_mm": [float(d) for d in grid.spacing_mm],
        "offset_mm": [float(o) for o in grid.offset_mm],
    }


def grid_from_dict(values: Mapping[str, Any]) -> ImageGrid:
    """Undo `grid_to_dict`."""
    return ImageGrid(
        shape=tuple(int(n) for n in values["shape"]),  # type: ignore[arg-type]  # ImageGrid checks the length
        spacing_mm=tuple(float(d) for d in values["spacing_mm"]),  # type: ignore[arg-type]  # ImageGrid checks the length
        offset_mm=tuple(float(o) for o in values["offset_mm"]),  # type: ignore[arg-type]  # ImageGrid checks the length
    )


def save_checkpoint(payload: Mapping[str, Any], *paths: str | os.PathLike[str]) -> None:
    """Serialise ``payload`` once and write it atomically to every path (overwriting).

    Raises
    ------
    TypeError
        ``payload`` holds something other than tensors and primitive containers.
    """
    _check_plain(payload, "checkpoint")
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    data = buffer.getvalue()
    for path in paths:
        write_bytes(path, data, overwrite=True)


def _check_declared_size(path: Path) -> None:
    """Refuse a checkpoint whose zip entries declare more bytes than the memory budget or than
    the file can hold (`recon.io.limits`), before `torch.load` allocates them. A file that is not
    a zip is left to `torch.load`, which reports what it is."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    check_array_size(
        path,
        "checkpoint tensors",
        (declared,),
        1,
        file_bytes=path.stat().st_size,
        compression=MAX_DEFLATE_RATIO,
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises
    ------
    ValueError
        Not a checkpoint of this kind (or not loadable without running code).
    FileNotFoundError
        No such file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    _check_declared_size(p)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as error:  # a refused global, a truncated zip, not a torch file, ...
        text = " ".join(str(error).split())
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in text:
            raise ValueError(
                f"{p}: refused: it holds Python objects other than tensors, numbers and "
                "strings, which spect never loads (loading them could run code from the "
                "file); a spect checkpoint holds none"
            ) from None
        raise ValueError(
            f"{p}: not a loadable spect checkpoint (truncated or not a torch file: "
            f"{text.split('. ')[0][:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: not a spect NeRF checkpoint (format {CHECKPOINT_FORMAT!r})")
    version = payload.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(
            f"{p}: checkpoint version {version!r} is newer than this spect reads "
            f"({CHECKPOINT_VERSION})"
        )
    return payload


def capture_rng(sampler: torch.Generator) -> dict[str, Any]:
    """The states of the ray sampler and of torch (CPU, CUDA), ``random`` and ``numpy``."""
    key, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "sampler": sampler.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": _tuples_to_lists(random.getstate()),
        "numpy": {
            "key": str(key),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def restore_rng(state: Mapping[str, Any], sampler: torch.Generator) -> None:
    """Undo `capture_rng`: set every generator back to the saved state."""
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - the legacy global state is what we restore
        (
            n["key"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )


def _tuples_to_lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_tuples_to_lists(v) for v in value]
    return value


_PLAIN = (int, float, str, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything `torch.load(weights_only=True)` could not read back."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for k, v in enumerate(value):
            _check_plain(v, f"{where}[{k}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is not a string or integer")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where}: {type(value).__name__} cannot go into a weights-only checkpoint")

"""From a trained representation to volumes, result files, and back.

- `sample_on_grid`: the activity ``[Z, Y, X]`` of a representation on any grid;
- `render_counts`: its expected counts ``count_scale · A e + b`` for a study's views;
- `to_result`: a `recon.io.Result` (method ``"nerf"``) holding the activity on the study grid, every
  parameter, the training history, the rendered counts and the model's tensors;
- `load_field`: rebuild the trained model from a result file or a checkpoint, without running
  code from the file (HDF5 arrays, or ``torch.load(weights_only=True)``).

In a result file the model's ``state_dict`` is stored in the extras as ``model.<name>`` arrays
(e.g. ``model.latent``, ``model.layers.0.weight``; HDF5 dataset names cannot hold ``/``) and what
is needed to rebuild it in the parameters under ``"representation"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.io import Result, read_result
from recon.io.study import Study
from recon.nerf.anatomy_field import AnatomyField, AnatomyFieldConfig
from recon.nerf.checkpoint import grid_from_dict, load_checkpoint
from recon.nerf.field import EmissionField, FieldConfig
from recon.nerf.organ_field import OrganAnchoredField, OrganFieldConfig
from recon.nerf.rays import RayData
from recon.nerf.representations import VoxelActivity
from recon.nerf.training import FitResult, rendered_counts
from spectproj import ImageGrid

__all__ = [
    "MODEL_PREFIX",
    "build_representation",
    "load_field",
    "render_counts",
    "sample_on_grid",
    "to_result",
]

#: Prefix of the model's tensors among a result's extras.
MODEL_PREFIX = "model."
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _device_of(representation: Any) -> torch.device:
    if isinstance(representation, nn.Module):
        for t in (*representation.parameters(), *representation.buffers()):
            return t.device
    return torch.device("cpu")


def sample_on_grid(
    representation: Any,
    grid: ImageGrid,
    *,
    chunk: int = 2**18,
    subsamples: int = 1,
) -> torch.Tensor:
    """Activity ``[Z, Y, X]`` (float32, CPU) of a representation on ``grid``.

    Parameters
    ----------
    representation:
        Callable mapping points ``[N, 3]`` (x, y, z mm) to activity ``[N]``.
    grid:
        Where to sample (any grid; usually the study's).
    chunk:
        Points per call of the representation.
    subsamples:
        1 (default): the value at each voxel centre. ``s`` > 1: the mean of ``s³`` regularly
        spaced samples inside each voxel (offsets ``((k + 0.5)/s − 0.5)·spacing`` per axis),
        i.e. the voxel's mean concentration, which is what a coarser grid should hold.
    """
    if isinstance(subsamples, bool) or not isinstance(subsamples, int) or subsamples < 1:
        raise ValueError(f"subsamples must be a positive integer, got {subsamples!r}")
    dev = _device_of(representation)
    cz, cy, cx = (grid.centres_mm(a, dtype=torch.float64) for a in range(3))
    zz, yy, xx = torch.meshgrid(cz, cy, cx, indexing="ij")
    centres = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)  # [N, 3] (x, y, z)
    dz, dy, dx = grid.spacing_mm
    frac = (torch.arange(subsamples, dtype=torch.float64) + 0.5) / subsamples - 0.5
    total = torch.zeros(centres.shape[0], dtype=torch.float64)
    was_training = getattr(representation, "training", False)
    if isinstance(representation, nn.Module):
        representation.eval()
    try:
        with torch.no_grad():
            for fz in frac:
                for fy in frac:
                    for fx in frac:
                        shift = torch.tensor([fx * dx, fy * dy, fz * dz], dtype=torch.float64)
                        pts = centres + shift
                        for start in range(0, pts.shape[0], chunk):
                            part = pts[start : start + chunk].to(device=dev, dtype=torch.float32)
                            total[start : start + chunk] += representation(part).double().cpu()
    finally:
        if isinstance(representation, nn.Module) and was_training:
            representation.train()
    return (total / subsamples**3).reshape(grid.shape).to(torch.float32)


def render_counts(
    representation: Any, study: Study, *, n_samples: int | None = None
) -> torch.Tensor:
    """Expected counts ``[V, rows, bins]`` (CPU) of a representation for ``study``'s views.

    ``count_scale · A e + background``, with the study's μ (`recon.nerf.rays`); ``n_samples``
    samples per ray (``None``: the lattice, one per voxel).
    """
    dev = _device_of(representation)
    data = RayData(study, holdout_fraction=0.0, device=dev)
    with torch.no_grad():
        return data.expected_views(representation, n_samples).cpu()


def to_result(
    fit_result: FitResult,
    study: Study,
    *,
    grid: ImageGrid | None = None,
    subsamples: int = 1,
    study_file: str | os.PathLike[str] | None = None,
    extra_parameters: Mapping[str, object] | None = None,
) -> Result:
    """A result (method ``"nerf"``) from a fit.

    Parameters
    ----------
    fit_result:
        What `recon.nerf.training.fit` returned.
    study:
        The study it was fitted to.
    grid:
        Grid of the activity volume (default: the study's).
    subsamples:
        See `sample_on_grid`.
    study_file:
        Path of the study file, recorded in the result.
    extra_parameters:
        More entries for the result's parameters (e.g. the command line).

    Returns
    -------
    recon.io.Result
        ``activity`` ``[Z, Y, X]`` (study unit); ``parameters`` with the full configuration,
        count scale, activity level, device, ``used_3d_supervision`` and the representation's
        description; ``history`` (step, loss, nll, regularisers, lr, val_deviance, val_psnr,
        time_s per logged step); ``extras``: ``rendered_counts`` ``[V, rows, bins]``,
        ``train_mask`` ``[V, rows, bins]`` (uint8), ``losses`` (every step) and the model's
        tensors ``model.<name>``.
    """
    rep = fit_result.representation
    target = study.grid if grid is None else grid
    activity = sample_on_grid(rep, target, subsamples=subsamples).numpy()
    config = fit_result.config
    rendered = rendered_counts(fit_result, study).numpy().astype(np.float32)
    parameters: dict[str, object] = {
        "method": "nerf",
        "config": config.to_dict(),
        "representation": dict(fit_result.representation_info),
        "count_scale": fit_result.count_scale,
        "activity_level": fit_result.activity_level,
        "count_level": fit_result.count_level,
        "device": fit_result.device,
        "amp": fit_result.amp,
        "used_3d_supervision": bool(fit_result.used_3d_supervision),
        "steps_done": fit_result.steps_done,
        "selected_step": fit_result.selected_step,
        "val_deviance": fit_result.val_deviance,
        "val_psnr_db": fit_result.val_psnr,
        "elapsed_s": fit_result.elapsed_s,
        "attenuation": study.mu_per_mm is not None,
        "background": study.background is not None,
        **study.counts_model(),
        **fit_result.physics,
        "sampling": "voxel centres" if subsamples == 1 else f"mean of {subsamples}^3 sub-voxels",
        "torch_version": torch.__version__,
    }
    if extra_parameters:
        parameters.update(dict(extra_parameters))
    parameters = {k: _json_safe(v) for k, v in parameters.items()}
    extras: dict[str, np.ndarray] = {
        "rendered_counts": rendered,
        "train_mask": fit_result.train_mask.astype(np.uint8),
        "losses": np.asarray(fit_result.losses, dtype=np.float64),
    }
    if isinstance(rep, nn.Module):
        for name, tensor in rep.state_dict().items():
            extras[MODEL_PREFIX + name] = tensor.detach().cpu().numpy()
    return Result(
        activity=activity,
        grid=target,
        method="nerf",
        parameters=parameters,
        history=fit_result.history_arrays(),
        activity_unit=study.activity_unit,
        extras=extras,
        study_file=None if study_file is None else os.fspath(study_file),
    )


def build_representation(info: Mapping[str, Any]) -> nn.Module:
    """An untrained representation of the kind and architecture ``info`` describes.

    ``info`` is `recon.nerf.training.representation_info`'s dict: ``kind``
    (``"EmissionField"``, ``"AnatomyField"``, ``"OrganAnchoredField"`` or ``"VoxelActivity"``),
    ``grid`` and ``field_config`` (for an ``AnatomyField`` its `AnatomyFieldConfig` dict, for an
    ``OrganAnchoredField`` its `OrganFieldConfig` dict; the anatomy volumes come with the stored
    tensors).
    """
    kind = info.get("kind")
    g = info.get("grid")
    if not isinstance(g, Mapping):
        raise ValueError(f"the representation description has no grid: {dict(info)}")
    grid = grid_from_dict(g)
    if kind == "EmissionField":
        fc = info.get("field_config")
        if not isinstance(fc, Mapping):
            raise ValueError("an EmissionField description needs its field_config")
        return EmissionField(grid, FieldConfig(**dict(fc)))
    if kind == "AnatomyField":
        fc = info.get("field_config")
        if not isinstance(fc, Mapping):
            raise ValueError("an AnatomyField description needs its field_config")
        return AnatomyField(grid, AnatomyFieldConfig.from_dict(fc))
    if kind == "OrganAnchoredField":
        fc = info.get("field_config")
        if not isinstance(fc, Mapping):
            raise ValueError("an OrganAnchoredField description needs its field_config")
        return OrganAnchoredField(grid, OrganFieldConfig.from_dict(fc))
    if kind == "VoxelActivity":
        return VoxelActivity(grid)
    raise ValueError(
        f"cannot rebuild a representation of kind {kind!r}; known: EmissionField, AnatomyField, "
        "OrganAnchoredField, VoxelActivity"
    )


def load_field(
    source: Result | FitResult | str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> nn.Module:
    """Rebuild a trained representation (an `EmissionField`, `AnatomyField`, ...) in eval mode.

    Parameters
    ----------
    source:
        A result file (``.h5``, written from `to_result`), a checkpoint (``.pt``), or a
        `recon.io.Result` already read. No code from the file is executed: result files are
        plain HDF5 arrays and checkpoints are read with ``torch.load(weights_only=True)``.
    device:
        Where to put the model.

    Raises
    ------
    ValueError
        The source holds no NeRF model, or its tensors do not fit the described architecture.
    """
    if isinstance(source, FitResult):
        return source.representation
    if isinstance(source, Result):
        info, state = _from_result(source, "result")
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        with open(path, "rb") as f:
            head = f.read(8)
        if head == _HDF5_SIGNATURE:
            info, state = _from_result(read_result(path), str(path))
        else:
            payload = load_checkpoint(path)
            info, state = payload["representation"], payload["model"]
    model = build_representation(info)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        text = " ".join(str(error).split())[:300]
        raise ValueError(f"the stored tensors do not fit the architecture: {text}") from None
    return model.to(device).eval()


def _from_result(result: Result, where: str) -> tuple[Mapping[str, Any], dict[str, torch.Tensor]]:
    info = result.parameters.get("representation")
    if result.method != "nerf" or not isinstance(info, Mapping):
        raise ValueError(f"{where}: not a NeRF result (method {result.method!r})")
    state = {
        name[len(MODEL_PREFIX) :]: torch.as_tensor(np.asarray(values))
        for name, values in result.extras.items()
        if name.startswith(MODEL_PREFIX)
    }
    if not state:
        raise ValueError(f"{where}: the result holds no model tensors ({MODEL_PREFIX}*)")
    return info, state


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value

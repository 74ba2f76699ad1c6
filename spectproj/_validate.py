"""Small input checks shared by the projector modules (they raise, never print)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def positive_triplet(name: str, value: Sequence[float], unit: str) -> tuple[float, float, float]:
    """Return ``value`` as three finite positive floats or raise ``ValueError`` naming ``name``."""
    triplet = float_triplet(name, value, unit)
    if any(v <= 0 for v in triplet):
        raise ValueError(f"{name} must be three positive lengths ({unit}), got {tuple(value)}")
    return triplet


def float_triplet(name: str, value: Sequence[float], unit: str) -> tuple[float, float, float]:
    """Return ``value`` as three finite floats or raise ``ValueError`` naming ``name``."""
    try:
        triplet = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a sequence of three numbers ({unit}), got {value!r}"
        ) from None
    if len(triplet) != 3 or not all(math.isfinite(v) for v in triplet):
        raise ValueError(f"{name} must be three finite numbers ({unit}), got {value!r}")
    return triplet


def check_volume(name: str, volume: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Check a volume ``[Z, Y, X]`` or ``[B, Z, Y, X]`` against the grid ``shape``.

    Returns the volume with a batch dimension, ``[B, Z, Y, X]``.
    """
    if not isinstance(volume, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a callable, got {type(volume).__name__}")
    if not volume.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {volume.dtype}")
    if volume.dim() not in (3, 4) or tuple(volume.shape[-3:]) != tuple(shape):
        raise ValueError(
            f"{name} must have shape [Z, Y, X] = {list(shape)} or [B, Z, Y, X], "
            f"got {list(volume.shape)}"
        )
    return volume if volume.dim() == 4 else volume.unsqueeze(0)


def check_mu_values(name: str, mu: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``mu`` holds NaN, infinite or negative values."""
    with torch.no_grad():
        if not bool(torch.isfinite(mu).all()):
            raise ValueError(f"{name} (attenuation, 1/mm) must be finite, got NaN or Inf values")
        if bool((mu < 0).any()):
            raise ValueError(
                f"{name} (attenuation, 1/mm) must be >= 0, got minimum {float(mu.min()):.4g}"
            )

"""Projection-domain fit: how well rendered (expected) counts explain the measured counts.

Both inputs are in **counts**, on one common scale: the expected counts of a model
(``count_scale · A x + b``, every view with the same scale) and the measured counts. Nothing is
normalised per image, so a wrong overall scale shows up as a poor fit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recon.algorithms.poisson import poisson_deviance

ArrayLike = np.ndarray | torch.Tensor

__all__ = ["projection_fit"]


def _tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a numeric array or tensor, got {type(x).__name__}"
        ) from None


def projection_fit(
    expected: ArrayLike,
    counts: ArrayLike,
    mask: ArrayLike | None = None,
) -> dict[str, float]:
    """Poisson deviance and PSNR of expected vs measured counts over the pixels of ``mask``.

    With ŷ = ``expected`` and y = ``counts`` over the selected pixels P (N_P of them)::

        deviance           = 2 Σ_P [y·ln(y/ŷ) − (y − ŷ)]      (y·ln(y/ŷ) = 0 where y = 0)
        deviance_per_pixel = deviance / N_P
        psnr               = 10·log10(max_P(y)² / mean_P((ŷ − y)²))   dB, peak = max measured

    For Poisson data and the true ŷ the deviance per pixel is ≈ 1 (for counts well above 1;
    lower at very low counts); ≫ 1 means a misfit. The deviance is ``inf`` where ŷ = 0 and y > 0.

    Parameters
    ----------
    expected : array or tensor
        ``[V, rows, bins]`` (any shape) expected counts ŷ >= 0.
    counts : array or tensor
        Measured counts y >= 0, same shape.
    mask : array or tensor of bool, optional
        Pixels to score, e.g. the held-out pixels of a validation split; all by default.

    Returns
    -------
    dict
        ``deviance``, ``deviance_per_pixel``, ``psnr`` (dB; ``inf`` for a perfect fit) and
        ``n_pixels``.

    Raises
    ------
    ValueError
        On mismatched shapes, an empty mask, negative values or all-zero counts (PSNR peak).
    """
    yhat, y = _tensor(expected, "expected"), _tensor(counts, "counts")
    if yhat.shape != y.shape:
        raise ValueError(f"expected has shape {tuple(yhat.shape)}, counts {tuple(y.shape)}")
    if mask is not None:
        m = mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.as_tensor(mask)
        if tuple(m.shape) != tuple(y.shape):
            raise ValueError(f"mask has shape {tuple(m.shape)}, expected {tuple(y.shape)}")
        m = m.to(torch.bool)
        yhat, y = yhat[m], y[m]
    yhat, y = yhat.reshape(-1), y.reshape(-1)
    n = int(y.numel())
    if n == 0:
        raise ValueError("mask selects no pixel")
    if bool((yhat < 0).any()) or bool((y < 0).any()):
        raise ValueError("expected and measured counts must be >= 0")
    impossible = bool(((yhat == 0) & (y > 0)).any())
    deviance = math.inf if impossible else float(poisson_deviance(y, yhat))
    peak = float(y.max())
    if peak <= 0:
        raise ValueError("the measured counts are all 0 on the mask; PSNR is undefined")
    mse = float(((yhat - y) ** 2).mean())
    value = math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)
    return {
        "deviance": deviance,
        "deviance_per_pixel": deviance / n,
        "psnr": value,
        "n_pixels": n,
    }

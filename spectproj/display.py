"""Helpers to show projections the way a nuclear-medicine viewer does (see docs/conventions.md).

Projections are ``[..., rows, bins]`` with row index increasing toward the head. A viewer shows
the head at the top; the bins of both AP (β = 0) and PA (β = 180) are already in viewer order
(anterior view: patient's right on the viewer's left; posterior view: patient's left on the left).
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def to_viewer(image: ArrayLike) -> ArrayLike:
    """Flip rows so that ``imshow(to_viewer(img))`` (origin upper) shows the head at the top.

    Works on ``[..., rows, bins]`` tensors or arrays; returns the same kind.
    """
    if isinstance(image, torch.Tensor):
        return torch.flip(image, (-2,))
    return np.flip(np.asarray(image), axis=-2)


def mirror_bins(image: ArrayLike) -> ArrayLike:
    """Mirror ``[..., rows, bins]`` in the bin direction.

    For a centred detector this maps the PA image onto AP's pixel grid (bin b of the mirrored PA
    sees the same line through the patient as bin b of AP), e.g. for the geometric mean.
    """
    if isinstance(image, torch.Tensor):
        return torch.flip(image, (-1,))
    return np.flip(np.asarray(image), axis=-1)

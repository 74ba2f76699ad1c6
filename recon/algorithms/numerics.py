"""One guard for every algorithm: a NaN/Inf loss or estimate stops it with `NonFiniteError`.

MLEM/OSEM (`recon.algorithms.mlem`), the organ fits (`recon.anatomy.organ_fit`) and the NeRF
trainer (`recon.training.loop`, its `TrainingDiverged`) stop as soon as a likelihood, a loss or
an estimate is not finite, so a broken run never writes a result. Inputs are bounded first
(`recon.io.MAX_COUNTS`), so this is a last line of defence (an extreme count scale, a prior
weight that makes one-step-late EM unstable, ...).
"""

from __future__ import annotations

import math

import torch

__all__ = ["NonFiniteError", "check_finite"]


class NonFiniteError(ValueError):
    """An algorithm produced NaN/Inf; the message names the algorithm, the iteration and what."""


def check_finite(
    method: str,
    iteration: int,
    what: str,
    value: float | torch.Tensor,
    *,
    allow_minus_inf: bool = False,
) -> None:
    """Raise `NonFiniteError` if ``value`` (a number or a tensor) holds NaN/Inf.

    ``allow_minus_inf``: a number may be −inf (a log-likelihood of data the model cannot
    produce: counts where nothing is seen), but not NaN or +inf.

    The message reads ``"MLEM: iteration 3: the log-likelihood is nan; stopped, nothing was
    written (check the count scale and the data)"``.
    """
    if isinstance(value, torch.Tensor):
        bad = int(value.numel() - int(torch.isfinite(value).sum()))
        if bad == 0:
            return
        state = f"holds {bad} NaN/Inf value(s)"
    else:
        if math.isfinite(value) or (allow_minus_inf and value == -math.inf):
            return
        state = f"is {value}"
    raise NonFiniteError(
        f"{method}: iteration {iteration}: the {what} {state}; stopped, nothing was written "
        "(check the count scale, the data and the options)"
    )

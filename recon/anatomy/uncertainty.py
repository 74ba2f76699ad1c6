"""The uncertainty of an organ or lesion activity: count statistics and the method's model error.

A fitted activity has two kinds of error. The **count** part is the Poisson noise of the
projections: the Cramér–Rao bound of the fit (`recon.anatomy.organ_fit`), or the Poisson spread
of a source's two-view counts (`recon.anatomy.sources.conjugate_activity`). The **model** part is
what the model gets wrong about the patient: uptake that is not uniform within an organ, a
segmentation off by a voxel, a lesion that takes some of its organ's uneven uptake, the depth two
views hardly tell. On the phantom variants of `benchmarks/bench_anatomy.py` the model part is 10
to 50 times the count part, so a table that gave the Cramér–Rao sd alone would claim ±0.2 % for
an organ known to a few per cent.

The model part cannot be computed from one study; it is measured. Each method has a relative
model sd per kind of region: the spread of its errors on phantom variants with the flaws of
clinical data (±20 % uneven uptake at 30 mm, one-voxel segmentation errors, lesions the
segmentation does not contain, 25 % scatter, 2e6 counts per view, Lu-177 at 64³), found by
maximum likelihood (errors ~ N(0, sd_counts² + (s · activity)²)) on the twelve development cases
(seeds 31–42), which no benchmark table uses. The reported sd is
``sqrt(sd_counts² + (s · activity)²)``; both parts are kept in the table
(``activity_sd_counts_mbq``, ``activity_sd_model_mbq``).

How well it covers errors it was not fitted on is measured by the stress section of
`benchmarks/bench_anatomy.py` (30 held-out cases under ten conditions, docs/anatomy.md). It holds
for studies like those phantoms; a segmentation worse than a voxel off, or uptake more uneven
than ±30 %, gives larger errors than it says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ORGAN_FIT_MODEL_ERROR", "RESIDUAL_MODEL_ERROR", "ModelError", "combined_sd"]


@dataclass(frozen=True)
class ModelError:
    """Relative model sd of a method (a fraction of the activity, e.g. 0.03 for 3 %).

    Parameters
    ----------
    organ:
        For each segment's activity (not the background compartments: not measured).
    lesion:
        For each residual source reported as a lesion.
    """

    organ: float = 0.0
    lesion: float = 0.0

    def __post_init__(self) -> None:
        for name in ("organ", "lesion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"ModelError.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ValueError(f"ModelError.{name} must lie in [0, 1), got {value!r}")


#: The organ fit alone (QPlanar): 14 % (on the development cases: liver rms 23 % — the lesions
#: the segmentation does not contain become liver activity —, spleen 6 %, kidneys 8–10 %).
ORGAN_FIT_MODEL_ERROR = ModelError(organ=0.14)

#: Organs + residual: organs 3 % (fitted 3.2 %; liver rms 3.6 %, spleen 1.6 %, kidneys
#: 2.4–4.6 %), lesions 12 % (fitted 12.1 %, on 30 lesions of >= 5 mL). A model sd that grows
#: with the organ counts under a lesion, or with 1 / its contrast, fitted no better.
RESIDUAL_MODEL_ERROR = ModelError(organ=0.03, lesion=0.12)


def combined_sd(counts_sd: float, activity: float, relative: float) -> tuple[float, float]:
    """``(total sd, model sd)`` of an ``activity`` with count sd ``counts_sd``, in its unit."""
    model = relative * abs(activity)
    return math.hypot(counts_sd, model), model

"""Corrections of measured counts: scatter from energy windows, calibration, decay, dead time.

Modules
-------
timing
    Decay and dead-time factors (pure functions; `recon.io.study.Acquisition.count_scale`
    applies them).
nuclides
    Half-lives with their source.
scatter
    Triple- and dual-energy-window scatter estimates into a study's background.
calibration
    Planar sensitivity (cps/MBq) from an image of a known source.

Only `timing` and `nuclides` are imported here (they depend on nothing in ``recon``); import
`recon.corrections.scatter` and `recon.corrections.calibration` by their full names.
"""

from recon.corrections.nuclides import HALF_LIFE_SOURCE, HALF_LIVES_S, half_life_s
from recon.corrections.timing import (
    DEAD_TIME_MODELS,
    dead_time_factor,
    decay_factor,
    parse_time,
    seconds_between,
    true_rate_cps,
)

__all__ = [
    "DEAD_TIME_MODELS",
    "HALF_LIFE_SOURCE",
    "HALF_LIVES_S",
    "dead_time_factor",
    "decay_factor",
    "half_life_s",
    "parse_time",
    "seconds_between",
    "true_rate_cps",
]

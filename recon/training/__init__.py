"""The one training loop of `spect`: every representation, one study or a cohort.

- `recon.training.loop`: `Trainer` (run loop, optimiser step with AMP, gradient clipping and
  finite checks, checkpoints with exact resume, logs, previews, Ctrl-C/SIGTERM), the
  `Objective` protocol it drives, `TrainingDiverged` and `TrainingInterrupted`;
- `recon.training.terms`: the loss terms both objectives share (Poisson deviance, the
  regularisers, the model's own ``penalty()``);
- `recon.training.runtime`: determinism, signals, AMP and small helpers, once.

The objectives: `recon.nerf.training` (one study: `fit`) and `recon.cohort.training` (many
studies with per-study latent codes, data-parallel: `train_cohort`).
"""

from recon.training.loop import (
    Objective,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    lr_at,
)
from recon.training.runtime import request_stop

__all__ = [
    "Objective",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "lr_at",
    "request_stop",
]

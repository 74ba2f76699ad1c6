"""Cohorts: one latent-conditioned emission network shared by many studies.

- `recon.cohort.manifest`: which study files form a cohort (CSV or folder), train/val split;
- `recon.cohort.model`: `CohortModel`, the shared `EmissionField` and a table of per-study
  latent codes (auto-decoder), optionally anatomy-conditioned and with organ-anchored codes
  (per-study organ log-concentrations, `recon.nerf.organ_field`);
- `recon.cohort.training`: `train_cohort`, data-parallel over ``torchrun`` processes with
  `torch.distributed` (DistributedDataParallel; NCCL on GPUs, gloo on CPUs): the cohort
  objective of the one training loop, `recon.training.Trainer`;
- `recon.cohort.distributed`: the process-group helpers;
- `recon.cohort.prior`: `fit_with_prior`, reconstruct a new study by fitting its code (and
  optionally fine-tuning) with a trained cohort model.

See ``docs/cohorts.md``.
"""

from recon.cohort.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from recon.cohort.model import CohortModel, LoadedCohortModel, load_cohort_model
from recon.cohort.prior import PriorFitResult, fit_with_prior, organ_activity_error
from recon.cohort.training import (
    CohortConfig,
    CohortResult,
    global_batch,
    request_stop,
    train_cohort,
)

__all__ = [
    "CohortConfig",
    "CohortModel",
    "CohortResult",
    "LoadedCohortModel",
    "Manifest",
    "ManifestEntry",
    "PriorFitResult",
    "fit_with_prior",
    "global_batch",
    "load_cohort_model",
    "organ_activity_error",
    "read_manifest",
    "request_stop",
    "train_cohort",
    "write_manifest",
]

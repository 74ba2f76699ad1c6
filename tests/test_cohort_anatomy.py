"""Anatomy-conditioned cohorts: the shared network takes each study's anatomy features."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recon.cohort import CohortConfig, fit_with_prior, load_cohort_model, train_cohort
from recon.cohort.make import make_cohort
from recon.data.phantoms.population import PopulationConfig
from recon.io import read_study
from recon.nerf.anatomy_field import AnatomyField, anatomy_features_for_study
from recon.nerf.checkpoint import load_checkpoint
from recon.nerf.config import TrainConfig
from recon.nerf.field import FieldConfig
from tests.test_cohort import _one_thread  # noqa: F401  # the autouse fixture: one torch thread

FIELD = FieldConfig(
    encoding="hashgrid", latent_dim=4, hash_levels=4, hash_log2_size=10, hash_base_resolution=4,
    hash_finest_resolution=32, hash_mlp_width=16,
)  # fmt: skip
TRAIN = dataclasses.replace(
    TrainConfig.cpu_default(), steps=4, rays_per_step=64, n_samples=16, field=FIELD,
    val_every=0, log_every=0, checkpoint_every=0, preview_every=0, l1_activity=0.05,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("anatomy_cohort")
    made = make_cohort(folder / "c", 4, PopulationConfig(lesion_count=(1, 2)), seed=3, size=12,
                       val_fraction=0.25)  # fmt: skip
    config = CohortConfig(train=TRAIN, anatomy=True, val_steps=2, val_train_studies=1)
    model = folder / "model.pt"
    result = train_cohort(made.manifest_path, config, folder / "run", model_path=model)
    return {"result": result, "model": model, "folder": folder / "c", "manifest": made.manifest}


def test_network_takes_each_studys_anatomy(trained) -> None:
    result = trained["result"]
    model = result.model
    assert model.anatomy is not None
    assert {"liver", "spleen", "kidney_left", "bowel"} <= set(model.anatomy.segment_names)
    saved = load_checkpoint(trained["model"])
    assert saved["representation"]["anatomy"]["segment_names"] == list(model.anatomy.segment_names)
    assert saved["cohort"]["used_3d_supervision"] is True
    train = trained["manifest"].train
    studies = [read_study(e.path) for e in train[:2]]
    feats = [anatomy_features_for_study(s, model.anatomy) for s in studies]
    grid = studies[0].grid
    axes = (grid.centres_mm(a) for a in (2, 1, 0))  # x, y, z
    points = torch.stack([c.reshape(-1) for c in torch.meshgrid(*axes, indexing="ij")], 1).float()
    code = model.mean_code()
    with torch.no_grad():
        a, b = (model.conditioned(points, code, f) for f in feats)
    assert not torch.allclose(a, b)  # same code, two anatomies: two activities
    outside = ~feats[0].inside(points)
    assert outside.any() and float(a[outside].abs().max()) == 0.0  # nothing outside the body
    with pytest.raises(ValueError, match="anatomy"):
        model.conditioned(points, code)


def test_prior_field_is_the_shared_network_on_the_new_anatomy(trained) -> None:
    loaded = load_cohort_model(trained["model"])
    model = loaded.model
    study = read_study(trained["manifest"].val[0].path)
    field = model.prior_field(study=study)
    assert isinstance(field, AnatomyField)
    assert [n for n, p in field.named_parameters() if p.requires_grad] == ["network.latent"]
    features = anatomy_features_for_study(study, model.anatomy)
    points = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * 120.0
    with torch.no_grad():
        direct = model.conditioned(points, model.mean_code(), features)
        assert torch.allclose(field(points), direct, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="needs the new study"):
        model.prior_field()


def test_fit_with_an_anatomy_prior(trained) -> None:
    study = read_study(trained["manifest"].val[0].path)
    config = dataclasses.replace(TRAIN, steps=4, l1_activity=0.0)
    fit = fit_with_prior(study, trained["model"], fine_tune=True, config=config)
    assert isinstance(fit.representation, AnatomyField)
    assert fit.prior["anatomy_conditioned"] is True and fit.prior["fine_tune_steps"] == 2
    assert all(torch.isfinite(torch.tensor(fit.losses)))

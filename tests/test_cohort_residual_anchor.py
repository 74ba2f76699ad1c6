"""Organ codes anchored on organs + residual: each study's code is the log-amplitudes of its
refined compartments and residual sources; the normalised modulation keeps every component's
total at its code's."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch

import recon.anatomy
import recon.cohort.store as store_module
from recon.anatomy import OrgansConfig, reconstruct_organs
from recon.cohort import CohortConfig, fit_with_prior, load_cohort_model, train_cohort
from recon.cohort.make import make_cohort
from recon.cohort.model import CohortModel
from recon.data.phantoms.population import PopulationConfig
from recon.io import read_result, read_study, write_result
from recon.nerf.anatomy_field import (
    AnatomyFeatureConfig,
    AnatomyFeatures,
    anatomy_features_for_study,
)
from recon.nerf.checkpoint import load_checkpoint
from recon.nerf.export import load_field, sample_on_grid, to_result
from recon.nerf.organ_field import (
    OrganAnchor,
    OrganAnchoredField,
    OrganCodeConfig,
    OrganFieldConfig,
    ResidualAnchor,
    normalised_log_concentration,
    study_anchor,
)
from spectproj import ImageGrid
from tests.test_cohort import _one_thread  # noqa: F401  # the autouse fixture, one thread
from tests.test_cohort_organ_code import ATOL, FIELD, RTOL, TRAIN, _voxel_centres, _zero_output

#: A short organs + residual fit (2 rounds of 6 L-BFGS steps): the tests need its volumes and
#: sources, not its accuracy.
QUICK = OrgansConfig(rounds=2, steps=6)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("residual_anchor")
    made = make_cohort(folder / "c", 3, PopulationConfig(lesion_count=(1, 2)), seed=3, size=12,
                       val_fraction=0.34)  # fmt: skip
    return {"folder": folder, "manifest": made.manifest, "path": made.manifest_path}


@pytest.fixture(scope="module")
def trained(cohort) -> dict[str, object]:
    config = CohortConfig(
        train=dataclasses.replace(TRAIN, steps=4), anatomy=True, organ_code=True,
        organ_anchor="residual", organ_normalise=True, organ_residual=False, val_steps=0,
        val_train_studies=0, cache_studies=1, studies_per_step=1,
    )  # fmt: skip
    model = cohort["folder"] / "model.pt"
    fits: list[str] = []

    def counted(study: Any, kind: str, **kwargs: Any) -> Any:
        fits.append(kind)
        return study_anchor(study, kind, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "study_anchor", counted)
        result = train_cohort(cohort["path"], config, model_path=model)
    return {"result": result, "model": model, "fits": fits}


def _random_output(field: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (field.output.weight, field.output.bias):
            p.copy_(torch.randn(p.shape, generator=generator))


def test_zero_network_output_is_the_organs_plus_residual_volume(cohort) -> None:
    study = read_study(cohort["manifest"].val[0].path)
    outcome = reconstruct_organs(study, config=QUICK)
    reference = np.asarray(outcome.result.activity, dtype=np.float32)
    made = study_anchor(study, "residual", organs=QUICK)
    n_sources = sum(1 for n in made.names if n.startswith("source "))
    rows = outcome.result.parameters["sources"] + outcome.result.parameters["uptake_sources"]
    measured = {int(row["name"].split("_")[1]): row["activity_mbq"] for row in rows}
    kept = [j for j in sorted(measured) if measured[j] > 0]
    assert len(measured) == len(outcome.model.sources()) >= 2 and kept
    assert made.names[-n_sources:] == tuple(f"source {j}" for j in kept)
    assert made.names[:-n_sources] == tuple(outcome.result.parameters["compartments"])
    # The sources start at the activities of the result's table (conjugate views), not the
    # model's own: the anchor's volume is the result's.
    volume = made.anchor.volume(torch.as_tensor(made.log_concentration)).numpy()
    np.testing.assert_allclose(volume, reference, rtol=RTOL, atol=ATOL * reference.max())
    table = np.array([measured[j] for j in kept]) / 1e-6  # Bq/mL · mL
    np.testing.assert_allclose(np.exp(made.log_concentration[-n_sources:]), table, rtol=1e-5)
    # A source the table measures at 0 holds nothing: it is left out of the anchor.
    dropped = kept[0]

    def zeroed(*args: Any, **kwargs: Any) -> Any:
        out = reconstruct_organs(*args, **kwargs)
        activities = list(out.source_activities)
        activities[dropped - 1] = 0.0
        return dataclasses.replace(out, source_activities=tuple(activities))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recon.anatomy, "reconstruct_organs", zeroed)
        without = study_anchor(study, "residual", organs=QUICK)
    assert without.names == tuple(n for n in made.names if n != f"source {dropped}")
    # The field with a zero output layer is that volume, normalised or not, at the voxel centres.
    features = anatomy_features_for_study(study, AnatomyFeatureConfig())
    for normalise in (False, True):
        organ = OrganCodeConfig(residual=False, anchor="residual", normalise=normalise)
        config = OrganFieldConfig(FIELD, features.config, organ, made.names)
        field = OrganAnchoredField(
            study.grid, config, features, made.anchor, made.log_concentration
        )
        _zero_output(field)
        volume = sample_on_grid(field, study.grid).numpy()
        np.testing.assert_allclose(volume, reference, rtol=RTOL, atol=ATOL * reference.max())


def test_normalised_modulation_keeps_every_component_total() -> None:
    # float64: Σ_e exp(ℓ'_i) · v_e · m_e = exp(ℓ_i) · Σ_e v_e for any modulation, exactly.
    generator = torch.Generator().manual_seed(1)
    component = torch.randint(0, 4, (200,), generator=generator)
    component[component == 2] = 3  # component 2 has no entries: its ℓ stays
    value = torch.rand(200, generator=generator, dtype=torch.float64)
    log_mod = 0.7 * torch.tanh(torch.randn(200, generator=generator, dtype=torch.float64))
    log_c = torch.tensor([1.0, -2.0, 0.5, 3.0, 9.0], dtype=torch.float64)  # the 5th: unused
    shifted = normalised_log_concentration(log_c, component, value, log_mod)
    for i in range(4):
        sel = component == i
        before = math.exp(log_c[i]) * float(value[sel].sum())
        after = float((torch.exp(shifted[i]) * value[sel] * torch.exp(log_mod[sel])).sum())
        assert after == pytest.approx(before, rel=1e-13, abs=0)
    assert shifted[2] == log_c[2] and shifted[4] == log_c[4]
    unshifted = float((torch.exp(log_c[0]) * value * torch.exp(log_mod))[component == 0].sum())
    assert abs(unshifted / (math.exp(1.0) * float(value[component == 0].sum())) - 1) > 1e-3

    # Through a field with random network weights (float32): the voxel volume's total per
    # component is the code's, and the gradient of the total reaches ℓ only (analytic).
    grid = ImageGrid(shape=(4, 5, 6), spacing_mm=(4.0, 4.0, 4.0))
    voxel = torch.arange(120).repeat(2)
    comp = torch.cat([torch.arange(120) % 3, torch.full((120,), 3)])  # 3 parts + a "source"
    val = torch.rand(240, generator=generator)
    anchor = ResidualAnchor(grid, voxel, comp, val)
    features = AnatomyFeatureConfig(embedding_dim=2, segment_names=("a",))
    names = ("a", "b", "background", "source 1")
    totals = {}
    for normalise in (True, False):
        organ = OrganCodeConfig(residual=False, anchor="residual", normalise=normalise)
        config = OrganFieldConfig(FIELD, features, organ, names)
        field = OrganAnchoredField(grid, config, AnatomyFeatures(grid, features), anchor,
                                   np.array([1.0, 2.0, 0.5, 3.0]))  # fmt: skip
        _random_output(field.network)
        volume = field(_voxel_centres(grid)).double()
        by_comp = field.component_activities()
        voxel_ml = grid.voxel_volume_mm3 * 1e-3
        code = torch.exp(field.log_concentration.detach().double())
        expected = code * torch.zeros(4, dtype=torch.float64).index_add(0, comp, val.double())
        totals[normalise] = np.array([by_comp[n] for n in names]) / voxel_ml
        assert float(volume.detach().sum()) == pytest.approx(totals[normalise].sum(), rel=1e-5)
        if normalise:
            np.testing.assert_allclose(totals[True], expected.numpy(), rtol=1e-5)
            volume.sum().backward()
            assert field.log_concentration.grad is not None
            np.testing.assert_allclose(field.log_concentration.grad.numpy(), expected.numpy(),
                                       rtol=1e-4)  # fmt: skip
            grads = [p.grad for p in field.network.parameters() if p.grad is not None]
            assert max(float(g.abs().max()) for g in grads) < 1e-3 * float(expected.max())
    assert np.abs(totals[False] / totals[True] - 1).max() > 0.05  # the network moves totals


def test_cohort_records_the_anchor_and_codes_receive_gradients(cohort, trained) -> None:
    result, path = trained["result"], trained["model"]
    model = result.model
    assert model.organ_code == OrganCodeConfig(residual=False, anchor="residual", normalise=True)
    saved = load_checkpoint(path)
    organ = saved["representation"]["organ_code"]
    assert organ["anchor"] == "residual" and organ["normalise"] is True
    assert saved["config"]["organ_anchor"] == "residual"
    assert any(n.startswith("source ") for names in organ["compartments"] for n in names)
    loaded = load_cohort_model(path)
    assert loaded.model.organ_code == model.organ_code
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name]), name
    # The lazy store (one study held) read studies again, but fitted each one only once.
    assert result.max_studies_held == 1 and result.study_reads >= 1
    assert trained["fits"] == ["residual"] * len(cohort["manifest"].train)
    # Gradients reach a study's organ codes (its row only) and its latent code.
    study = read_study(cohort["manifest"].train[0].path)
    made = study_anchor(study, "residual", organs=QUICK)
    features = anatomy_features_for_study(study, model.anatomy)
    _random_output(model.field, 2)
    model.zero_grad()
    field = model.study_field(0, 1.0, features, made.anchor)
    points = _voxel_centres(study.grid)
    (field(points) ** 2).mean().backward()
    grad = model.organ_codes.grad
    assert bool((grad[0, : len(made.names)] != 0).all())
    assert bool((grad[1] == 0).all())
    assert float(model.codes.weight.grad[0].abs().sum()) > 0
    assert float(model.codes.weight.grad[1].abs().sum()) == 0


def test_prior_fit_records_the_anchor_and_the_result_rebuilds_it(cohort, trained, tmp_path):
    study = read_study(cohort["manifest"].val[0].path)
    config = dataclasses.replace(TRAIN, steps=2, l1_activity=0.0)
    outcome = fit_with_prior(study, trained["model"], config=config)
    assert outcome.prior["organ_code"] == {
        "bound": 0.7,
        "residual": False,
        "anchor": "residual",
        "normalise": True,
        "normalise_sample": 4096,
    }
    field = outcome.representation
    assert isinstance(field, OrganAnchoredField) and isinstance(field.anchor, ResidualAnchor)
    path = tmp_path / "r.h5"
    write_result(path, to_result(outcome, study))
    back = load_field(read_result(path))
    assert isinstance(back, OrganAnchoredField) and isinstance(back.anchor, ResidualAnchor)
    assert back.config == field.config
    for name in ("voxel", "component", "value"):
        assert torch.equal(getattr(back.anchor, name), getattr(field.anchor, name)), name
    with torch.no_grad():
        assert torch.equal(sample_on_grid(back, study.grid), sample_on_grid(field, study.grid))
    assert back.component_activities() == field.component_activities()
    # held-out selection in both phases: each returns its start or a validated state
    chosen = dataclasses.replace(config, steps=4, select="best_holdout", val_every=1)
    picked = fit_with_prior(study, trained["model"], fine_tune=True, config=chosen)
    code, tune = picked.prior["selected_steps"]["code"], picked.prior["selected_steps"]["fine-tune"]
    assert code in (0, 1, 2) and tune in (2, 3, 4) and picked.selected_step == tune
    rows = [r for r in picked.history if not math.isnan(r["val_deviance"])]
    best = min(r["val_deviance"] for r in rows if r["step"] > 2)
    assert picked.val_deviance <= best
    assert to_result(picked, study).parameters["selected_step"] == tune


def test_settings_and_old_files() -> None:
    with pytest.raises(ValueError, match="anchor must be one of"):
        CohortConfig(anatomy=True, organ_code=True, organ_anchor="qplanar")
    with pytest.raises(TypeError, match="organ_normalise"):
        CohortConfig(organ_normalise=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need organ_code=True"):
        CohortConfig(anatomy=True, organ_anchor="residual")
    # Files of before the anchor settings read as what they were trained with.
    old = OrganCodeConfig.from_dict({"bound": 0.5, "residual": True})
    assert old.anchor == "organs" and old.normalise is False
    grid = ImageGrid(shape=(3, 3, 3), spacing_mm=(4.0, 4.0, 4.0))
    residual = OrganFieldConfig(
        FIELD, organ=OrganCodeConfig(anchor="residual"), compartments=("a",)
    )
    with pytest.raises(TypeError, match="ResidualAnchor"):
        OrganAnchoredField(grid, residual, anchor=OrganAnchor(grid))
    with pytest.raises(ValueError, match="voxel indices"):
        ResidualAnchor(grid, [27], [0], [1.0])
    with pytest.raises(ValueError, match="one length"):
        ResidualAnchor(grid, [0, 1], [0], [1.0])
    with pytest.raises(ValueError, match="together"):
        ResidualAnchor(grid, [0], None, [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        ResidualAnchor(grid, [0], [0], [-1.0])
    model = CohortModel(
        grid, FIELD, 1, anatomy=AnatomyFeatureConfig(segment_names=("a",)),
        organ_code=OrganCodeConfig(anchor="residual"), organ_compartments=[("a",)],
    )  # fmt: skip
    with pytest.raises(ValueError, match="anchor"):
        model.activity(_voxel_centres(grid), model.code(0), 1.0)


def test_cli_names_a_bad_anchor(cohort, tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    args = ["train-cohort", str(cohort["path"]), "-o", str(tmp_path / "m.pt"), "--organ-code",
            "--organ-anchor", "qplanar"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "--organ-anchor" in done.output
    assert "Traceback" not in done.output and not (tmp_path / "m.pt").exists()
    args[-2:] = ["--organ-normalise", "--organ-normalise-sample", "-1"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "--organ-normalise-sample" in done.output
    assert "Traceback" not in done.output and not (tmp_path / "m.pt").exists()

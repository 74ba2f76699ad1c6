"""Organ-code cohorts: each study's code holds its organ log-concentrations, started at its
organ fit; the shared network only modulates them and adds a residual."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recon.algorithms.poisson import poisson_deviance
from recon.cohort import CohortConfig, fit_with_prior, load_cohort_model, train_cohort
from recon.cohort.make import make_cohort
from recon.cohort.store import StudyStore
from recon.data.phantoms.population import PopulationConfig
from recon.io import read_result, read_study, write_result
from recon.nerf.anatomy_field import AnatomyFeatureConfig, anatomy_features_for_study
from recon.nerf.checkpoint import load_checkpoint
from recon.nerf.config import TrainConfig
from recon.nerf.export import load_field, sample_on_grid
from recon.nerf.field import FieldConfig
from recon.nerf.organ_field import (
    CONCENTRATION_FLOOR,
    RESIDUAL_OFFSET,
    OrganAnchor,
    OrganAnchoredField,
    OrganCodeConfig,
    OrganFieldConfig,
    initial_log_concentrations,
    organ_field_for_study,
    study_organ_fit,
)
from recon.nerf.rays import RayData
from recon.nerf.training import fit
from recon.reconstruct import reconstruct_nerf
from spectproj import ImageGrid
from tests.test_cohort import (  # noqa: F401  # _one_thread: the autouse fixture, one thread
    ONE_VS_TWO_ATOL,
    REPO,
    _config_of,
    _free_port,
    _one_thread,
)

FIELD = FieldConfig(
    encoding="hashgrid", latent_dim=4, hash_levels=4, hash_log2_size=10, hash_base_resolution=4,
    hash_finest_resolution=32, hash_mlp_width=16,
)  # fmt: skip
TRAIN = dataclasses.replace(
    TrainConfig.cpu_default(), steps=6, rays_per_step=64, n_samples=16, field=FIELD,
    val_every=0, log_every=0, checkpoint_every=0, preview_every=0, l1_activity=0.05,
)  # fmt: skip


#: Anchor vs organ-fit volume at the voxel centres: float32 ln c (≈ 10 in Bq/mL, one ulp 1e-6)
#: holds c to a few 1e-6 (measured ≤ 4e-6), and float32 voxel coordinates (≈ 1e-6 of a voxel
#: off) leak that share of a neighbour into the trilinear read (measured ≤ 5e-7 of the highest
#: concentration).
RTOL, ATOL = 1e-5, 2e-6


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("organ_code_cohort")
    made = make_cohort(folder / "c", 4, PopulationConfig(lesion_count=(1, 2)), seed=3, size=12,
                       val_fraction=0.25)  # fmt: skip
    config = CohortConfig(
        train=TRAIN, anatomy=True, organ_code=True, val_steps=2, val_train_studies=1
    )
    model = folder / "model.pt"
    result = train_cohort(made.manifest_path, config, folder / "run", model_path=model)
    return {"result": result, "model": model, "folder": folder, "manifest": made.manifest}


def _voxel_centres(grid: ImageGrid) -> torch.Tensor:
    """The voxel centres ``[N, 3]`` (x, y, z mm, float32) of ``grid``."""
    cz, cy, cx = (grid.centres_mm(a) for a in range(3))
    zz, yy, xx = torch.meshgrid(cz, cy, cx, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3).float()


def _zero_output(field: OrganAnchoredField) -> None:
    with torch.no_grad():
        field.network.output.weight.zero_()
        field.network.output.bias.zero_()


def test_zero_network_output_is_the_organ_fit(trained) -> None:
    study = read_study(trained["manifest"].val[0].path)
    organ_fit = study_organ_fit(study)
    # QPlanar's volume; a compartment it holds at 0 starts at CONCENTRATION_FLOOR × the highest
    c = organ_fit.concentrations
    floored = np.maximum(c, CONCENTRATION_FLOOR * c.max())
    reference = organ_fit.compartments.volume(floored).astype(np.float32)
    at_fit = organ_fit.activity_volume()
    assert np.array_equal(reference[at_fit > 0], at_fit[at_fit > 0])
    assert (reference > 0).sum() > 400
    # B = 0, no residual: the network cannot change anything, whatever its weights.
    config = OrganFieldConfig(field=FIELD, organ=OrganCodeConfig(bound=0.0, residual=False))
    field = organ_field_for_study(study, config, organ_fit=organ_fit)
    assert field.config.compartments == organ_fit.compartments.names
    volume = sample_on_grid(field, study.grid).numpy()
    np.testing.assert_allclose(volume, reference, rtol=RTOL, atol=ATOL * reference.max())
    # B = 0.7 with a zero output layer: modulation exp(0.7·tanh 0) = 1, the same volume.
    bounded = organ_field_for_study(
        study, OrganFieldConfig(field=FIELD, organ=OrganCodeConfig(0.7, False)), organ_fit=organ_fit
    )
    _zero_output(bounded)
    volume = sample_on_grid(bounded, study.grid).numpy()
    np.testing.assert_allclose(volume, reference, rtol=RTOL, atol=ATOL * reference.max())
    # With the residual head, a zero output adds softplus(−4)·scale inside the body.
    residual = organ_field_for_study(
        study, OrganFieldConfig(field=FIELD), organ_fit=organ_fit, scale=1000.0
    )
    _zero_output(residual)
    body = residual.features.inside(_voxel_centres(study.grid)).reshape(study.grid.shape).numpy()
    expected = reference + 1000.0 * math.log1p(math.exp(RESIDUAL_OFFSET)) * body
    volume = sample_on_grid(residual, study.grid).numpy()
    np.testing.assert_allclose(volume, expected, rtol=RTOL, atol=ATOL * reference.max())
    # A fresh organ-code cohort model starts at its studies' organ fits (zero output layer).
    weight = trained["result"].model.field.output.weight.detach()
    assert float(weight.abs().max()) > 0  # trained since


def test_organ_codes_receive_the_anchor_gradient() -> None:
    grid = ImageGrid(shape=(4, 5, 6), spacing_mm=(4.0, 4.0, 4.0))
    index = np.full(grid.shape, -1, np.int32)
    index[1:3, 1:4, 1:3] = 0
    index[1:3, 1:4, 3:5] = 1
    index[0] = 2
    weight = np.where(index == 2, 0.5, 1.0).astype(np.float32)
    anchor = OrganAnchor(grid, index, weight)
    log_c = torch.tensor([1.0, 2.0, 0.5, 9.0], requires_grad=True)  # the 4th is unused
    points = _voxel_centres(grid)
    total = anchor(points, log_c).sum()
    total.backward()
    # Σ_p A(p) = Σ_k e^{ℓ_k} · (weighted voxel count of k): ∂/∂ℓ_k = e^{ℓ_k} · count_k.
    counts = torch.tensor([12.0, 12.0, 0.5 * 30.0, 0.0])
    assert log_c.grad is not None
    torch.testing.assert_close(log_c.grad, torch.exp(log_c.detach()) * counts, rtol=1e-6, atol=0)
    assert float(total.detach()) == pytest.approx(float((torch.exp(log_c.detach()) * counts).sum()))
    # In a cohort model, a study's loss moves its own row of the table, nothing else.
    from recon.cohort.model import CohortModel

    features = AnatomyFeatureConfig(embedding_dim=2, segment_names=("a", "b"))
    model = CohortModel(
        grid, FIELD, 2, anatomy=features, organ_code=OrganCodeConfig(),
        organ_compartments=[("a", "b", "background"), ("a", "background")],
    )  # fmt: skip
    assert model.organ_codes is not None and tuple(model.organ_codes.shape) == (2, 3)
    from recon.nerf.anatomy_field import AnatomyFeatures

    feats = AnatomyFeatures(grid, features)
    with torch.no_grad():
        model.organ_codes[0] = log_c.detach()[:3]
    field = model.study_field(0, 100.0, feats, anchor)
    values = field(points)
    # A fresh model is the anchor (its output layer starts at zero) plus the residual's offset.
    offset = 100.0 * math.log1p(math.exp(RESIDUAL_OFFSET))
    expected = anchor(points, log_c.detach()) + offset
    torch.testing.assert_close(values.detach(), expected, rtol=1e-6, atol=1e-4)
    values.sum().backward()
    grad = model.organ_codes.grad
    assert grad is not None
    assert bool((grad[0] != 0).all()) and bool((grad[1] == 0).all())
    assert float(model.field.output.weight.grad.abs().sum()) > 0  # and the network
    with pytest.raises(ValueError, match="anchor"):
        model.activity(points, model.code(0), 1.0, feats)


def test_training_starts_at_each_studys_organ_fit_and_records_it(trained) -> None:
    manifest = trained["manifest"]
    store = StudyStore(manifest.train, TRAIN, torch.device("cpu"), organ_code=True)
    for entry, info in zip(manifest.train, store.infos, strict=True):
        fit = study_organ_fit(read_study(entry.path))
        assert info.compartments == fit.compartments.names
        np.testing.assert_allclose(
            info.organ_start, initial_log_concentrations(fit.concentrations), rtol=1e-6
        )
    model = trained["result"].model
    assert model.organ_compartments == tuple(i.compartments for i in store.infos)
    start = torch.as_tensor(store.infos[0].organ_start)
    moved = model.log_concentration(0).detach() - start
    assert 0 < float(moved.abs().max()) < 0.1  # trained, 6 steps of Adam at lr 5e-3
    saved = load_checkpoint(trained["model"])
    organ = saved["representation"]["organ_code"]
    assert organ["bound"] == 0.7 and organ["residual"] is True
    assert organ["compartments"] == [list(i.compartments) for i in store.infos]
    assert saved["config"]["organ_code"] is True


def test_model_file_round_trip_and_old_files_still_load(trained) -> None:
    model = trained["result"].model
    loaded = load_cohort_model(trained["model"])
    assert loaded.model.organ_code == model.organ_code
    assert loaded.model.organ_compartments == model.organ_compartments
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name]), name
    study = read_study(trained["manifest"].train[1].path)
    features = anatomy_features_for_study(study, model.anatomy)
    parts = study_organ_fit(study).compartments
    anchor = OrganAnchor(study.grid, parts.index, parts.weight)
    points = _voxel_centres(study.grid)
    with torch.no_grad():
        a = model.study_field(1, 2.0, features, anchor)(points)
        b = loaded.model.study_field(1, 2.0, features, anchor)(points)
    assert torch.equal(a, b) and float(a.max()) > 0
    # A file of before organ codes (no "organ_code" in its representation) loads as before.
    payload = load_checkpoint(trained["model"])
    old = {k: v for k, v in payload["representation"].items() if k != "organ_code"}
    state = {k: v for k, v in payload["model"].items() if k != "organ_codes"}
    state["field.output.weight"] = state["field.output.weight"][:1]
    state["field.output.bias"] = state["field.output.bias"][:1]
    config = {k: v for k, v in payload["config"].items() if not k.startswith("organ_")}
    plain = load_cohort_model({**payload, "representation": old, "model": state, "config": config})
    assert plain.model.organ_code is None and plain.model.organ_codes is None
    assert CohortConfig.from_dict(config).organ_code is False


def test_prior_code_fit_on_a_held_out_phantom_lowers_the_deviance_and_is_recorded(
    trained, tmp_path
) -> None:
    study = read_study(trained["manifest"].val[0].path)
    loaded = load_cohort_model(trained["model"])
    data = RayData(study, holdout_fraction=0.0, collimator=study.collimator_response())
    level = data.activity_level()
    start = loaded.model.prior_field(study=study, scale=level)
    assert isinstance(start, OrganAnchoredField)
    trainable = [n for n, p in start.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["log_concentration", "network.latent"]
    organ_start = initial_log_concentrations(study_organ_fit(study).concentrations)
    np.testing.assert_allclose(start.log_concentration.detach().numpy(), organ_start)
    counts = torch.as_tensor(np.asarray(study.projections, dtype=np.float64))

    def deviance(field: torch.nn.Module) -> float:  # with the blur, as the fit renders it
        with torch.no_grad():
            expected = data.expected_views(field, TRAIN.n_samples)
        return float(poisson_deviance(counts, expected.double()))

    # The code phase of a prior fit (log-concentrations and latent, the network frozen), from
    # a start with every concentration doubled: it finds its way back, the deviance falls.
    config = dataclasses.replace(TRAIN, steps=30, l1_activity=0.0, lr=0.03, lr_schedule="constant")
    field = loaded.model.prior_field(study=study)
    with torch.no_grad():
        field.log_concentration += math.log(2.0)
    with torch.no_grad():
        field.scale.fill_(level)
    before = deviance(field)
    assert before > 2.0 * deviance(start)
    fit(field, study, config)
    after = deviance(field)
    assert after < 0.25 * before, (before, after)
    back = field.log_concentration.detach().numpy() - organ_start
    assert float(np.median(np.abs(back))) < 0.3 * math.log(2.0), back  # near the organ fit
    # fit_with_prior runs the same, records the organ code, resumes a fine-tune checkpoint
    # (two code tensors, then every weight) and gives a result that reads back.
    quick = dataclasses.replace(config, steps=4, lr=TRAIN.lr)
    coded = fit_with_prior(study, loaded, config=quick)
    assert coded.prior["organ_code"] == {
        "bound": 0.7,
        "residual": True,
        "anchor": "organs",
        "normalise": False,
        "normalise_sample": 4096,
    }
    assert coded.prior["code_steps"] == 4 and coded.prior["fine_tune_steps"] == 0
    tuned = fit_with_prior(
        study, loaded, fine_tune=True, config=dataclasses.replace(quick, checkpoint_every=1),
        out_dir=tmp_path / "p",
    )  # fmt: skip
    again = fit_with_prior(
        study, loaded, fine_tune=True, config=quick, out_dir=tmp_path / "p",
        resume=tmp_path / "p" / "fine-tune" / "checkpoint-000001.pt",
    )  # fmt: skip
    assert tuned.steps_done == again.steps_done == 4
    result = reconstruct_nerf(study, dataclasses.replace(quick, steps=2), prior=trained["model"])
    assert result.parameters["prior"]["organ_code"]["bound"] == 0.7
    assert result.parameters["representation"]["kind"] == "OrganAnchoredField"
    path = tmp_path / "r.h5"
    write_result(path, result)
    rebuilt = load_field(path)
    assert isinstance(rebuilt, OrganAnchoredField)
    volume = sample_on_grid(rebuilt, study.grid).numpy()
    np.testing.assert_allclose(volume, read_result(path).activity, rtol=1e-5, atol=1e-3)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs anatomy=True"):
        CohortConfig(organ_code=True)
    with pytest.raises(ValueError, match="bound"):
        CohortConfig(anatomy=True, organ_code=True, organ_bound=-1.0)
    with pytest.raises(TypeError, match="organ_residual"):
        CohortConfig(organ_residual=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bound"):
        OrganCodeConfig(bound=math.inf)
    from recon.cohort.model import CohortModel

    grid = ImageGrid(shape=(4, 4, 4), spacing_mm=(4.0, 4.0, 4.0))
    with pytest.raises(ValueError, match="anatomy"):
        CohortModel(grid, FIELD, 1, organ_code=OrganCodeConfig(), organ_compartments=[("a",)])
    features = AnatomyFeatureConfig(segment_names=("a",))
    with pytest.raises(ValueError, match="each of the 2"):
        CohortModel(grid, FIELD, 2, anatomy=features, organ_code=OrganCodeConfig(),
                     organ_compartments=[("a",)])  # fmt: skip
    with pytest.raises(ValueError, match="weight"):
        OrganAnchor(grid, np.zeros((4, 4, 4), np.int32), np.full((4, 4, 4), 2.0))
    with pytest.raises(ValueError, match="log_concentration must have shape"):
        OrganAnchoredField(grid, OrganFieldConfig(field=FIELD, compartments=("a",)),
                           log_concentration=np.zeros(2))  # fmt: skip


def test_cli_under_torchrun_one_process_and_a_lazy_store_train_the_same_model(
    trained, tmp_path
) -> None:
    model = tmp_path / "m.pt"
    toml = tmp_path / "t.toml"
    toml.write_text(
        "steps = 3\nrays_per_step = 64\nn_samples = 8\nl1_activity = 0.05\n"
        "[field]\nencoding = 'hashgrid'\nlatent_dim = 4\nhash_levels = 4\nhash_log2_size = 10\n"
        "hash_base_resolution = 4\nhash_finest_resolution = 32\nhash_mlp_width = 16\n",
        encoding="utf-8",
    )
    manifest = trained["folder"] / "c" / "cohort.csv"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "cli.main", "train-cohort", str(manifest), "-o", str(model), "--config", str(toml),
        "--val-steps", "0", "--backend", "gloo", "--device", "cpu", "--organ-code",
        "--organ-bound", "0.5", "--studies-per-step", "1", "--group-steps", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPECT_PROGRESS": "0"}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "B = 0.5, from each study's organ fit" in done.stdout
    saved = load_checkpoint(model)
    assert saved["representation"]["organ_code"]["bound"] == 0.5
    assert saved["config"]["anatomy"] is True and saved["config"]["organ_code"] is True
    assert saved["world_size"] == 2
    config = _config_of(model)
    one = train_cohort(manifest, config)
    lazy = train_cohort(manifest, dataclasses.replace(config, cache_studies=1))
    assert lazy.max_studies_held == 1 and lazy.study_reads >= 1  # anchors read again
    two = load_cohort_model(model).model.state_dict()
    for name, value in one.model.state_dict().items():
        assert float((value - two[name]).abs().max()) <= ONE_VS_TWO_ATOL, name
        assert torch.equal(value, lazy.model.state_dict()[name]), name

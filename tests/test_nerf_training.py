"""`recon.nerf.training.fit`: convergence, exact resume, interruption, divergence, scale, outputs,
export and the ``spect recon nerf`` command. Tiny problems (16³ torso, AP/PA, small fields)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from recon.data.phantoms.torso import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.io import read_result, write_result, write_study
from recon.nerf import losses
from recon.nerf.checkpoint import load_checkpoint
from recon.nerf.config import TrainConfig
from recon.nerf.export import load_field, sample_on_grid, to_result
from recon.nerf.field import EmissionField, FieldConfig
from recon.nerf.representations import VoxelActivity
from recon.nerf.training import LOG_COLUMNS, TrainingDiverged, TrainingInterrupted, fit
from spectproj import ParallelGeometry

TINY_FIELD = FieldConfig(
    encoding="hashgrid", latent_dim=4, hash_levels=4, hash_features=2, hash_log2_size=10,
    hash_base_resolution=4, hash_finest_resolution=32, hash_mlp_depth=2, hash_mlp_width=16,
)  # fmt: skip
TINY = TrainConfig(
    steps=30, rays_per_step=128, n_samples=None, lr=1e-2, val_every=10, log_every=5,
    preview_every=0, checkpoint_every=0, field=TINY_FIELD,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems run fastest (and reproducibly) on one thread on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def study():
    grid = default_grid(16)
    phantom = make_torso(grid, supersample=2)
    return simulate_acquisition(
        phantom, ParallelGeometry.ap_pa(grid), total_counts=2e5, scatter_fraction=0.1, seed=1
    )


def _field(study, config: TrainConfig = TINY, seed: int = 0) -> EmissionField:
    torch.manual_seed(seed)
    return EmissionField(study.grid, config.field)


def test_fit_reduces_the_loss(study) -> None:
    config = dataclasses.replace(TINY, steps=100, lr=3e-2, lr_schedule="cosine", lr_min=3e-3)
    result = fit(_field(study), study, config)
    first, last = result.losses[0], float(np.mean(result.losses[-5:]))
    # Measured: 1.18 (step 1) → 0.0077 (mean of the last 5 steps), a factor ≈ 150 (the loss is
    # half the mean deviance per pixel over the mean count, so 0 for a perfect fit).
    assert last < first / 40, (first, last)
    assert result.steps_done == 100 and len(result.losses) == 100
    assert [int(r["step"]) for r in result.history][:3] == [5, 10, 15]
    assert math.isfinite(result.val_psnr) and result.val_psnr > 15
    assert result.val_deviance < result.history[1]["val_deviance"]


def test_resume_after_ctrl_c_mid_step_is_exact(study, tmp_path, monkeypatch) -> None:
    config = dataclasses.replace(
        TINY, steps=12, deterministic=True, checkpoint_every=4, jitter=True
    )
    straight = fit(_field(study), study, config)

    calls = {"n": 0}
    real = losses.poisson_nll

    def interrupt_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # inside step 7, after its rays were drawn
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "poisson_nll", interrupt_at_step_7)
    with pytest.raises(TrainingInterrupted) as stop:
        fit(_field(study), study, config, out_dir=tmp_path)
    assert stop.value.step == 6
    assert stop.value.checkpoint == tmp_path / "checkpoint-000006.pt"
    assert load_checkpoint(tmp_path / "checkpoint-last.pt")["step"] == 6
    assert (tmp_path / "log.csv").is_file()
    monkeypatch.setattr(losses, "poisson_nll", real)

    resumed_field = _field(study, seed=123)  # other initial weights: all state comes from the file
    resumed = fit(resumed_field, study, config, resume=tmp_path / "checkpoint-last.pt")
    assert resumed.losses == straight.losses
    for (name, a), b in zip(
        straight.representation.state_dict().items(),
        resumed_field.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_resume_in_views_mode_is_exact(study, tmp_path, monkeypatch) -> None:
    """Whole views with the collimator blur, jitter and a support: an interrupted run resumed
    from its checkpoint gives the same losses and weights as a straight run."""
    blurred = dataclasses.replace(
        study,
        acquisition=dataclasses.replace(study.acquisition, collimator="HE", radius_mm=250.0),
    )
    body = blurred.mu_per_mm > 0
    config = dataclasses.replace(TINY, steps=8, deterministic=True, checkpoint_every=4)
    straight = fit(_field(blurred), blurred, config, support=body)
    assert straight.render == "views" and straight.collimator.startswith("HE at 140.5 keV")
    assert straight.support is not None and straight.support.startswith("applied, trilinear")

    calls = {"n": 0}
    real = losses.poisson_nll

    def interrupt_at_step_6(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "poisson_nll", interrupt_at_step_6)
    with pytest.raises(TrainingInterrupted) as stop:
        fit(_field(blurred), blurred, config, out_dir=tmp_path, support=body)
    assert stop.value.step == 5
    monkeypatch.setattr(losses, "poisson_nll", real)
    resumed_field = _field(blurred, seed=123)
    resumed = fit(
        resumed_field, blurred, config, resume=tmp_path / "checkpoint-last.pt", support=body
    )
    assert resumed.losses == straight.losses
    for (name, a), b in zip(
        straight.representation.state_dict().items(),
        resumed_field.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    # the checkpoint holds the field alone (the support is data): it loads into a bare field
    saved = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert saved["representation"]["kind"] == "EmissionField"
    assert saved["data"]["render"] == "views"


def test_ctrl_c_during_the_update_finishes_the_step(study, tmp_path, monkeypatch) -> None:
    """A real SIGINT inside the optimiser update is held until the step is complete."""
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step_with_sigint(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step_with_sigint)
    with pytest.raises(TrainingInterrupted) as stop:
        fit(_field(study), study, dataclasses.replace(TINY, val_every=0), out_dir=tmp_path)
    assert stop.value.step == 3
    assert load_checkpoint(tmp_path / "checkpoint-last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(study, tmp_path, monkeypatch) -> None:
    """Two Ctrl-C in one step (the installed handler called twice, as the signals would): the
    second interrupts inside the update, so no checkpoint is written from that state."""
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step_with_two_sigints(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            handler = signal.getsignal(signal.SIGINT)
            handler(signal.SIGINT, None)  # the first: stop after this step
            handler(signal.SIGINT, None)  # the second: at once
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step_with_two_sigints)
    config = dataclasses.replace(TINY, val_every=0, checkpoint_every=1)
    with pytest.raises(TrainingInterrupted) as stop:
        fit(_field(study), study, config, out_dir=tmp_path)
    assert stop.value.step == 2 and stop.value.checkpoint is None
    assert load_checkpoint(tmp_path / "checkpoint-last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_extends_a_finished_run(study, tmp_path) -> None:
    config = dataclasses.replace(TINY, steps=10, deterministic=True)
    straight = fit(_field(study), study, config)
    fit(_field(study), study, dataclasses.replace(config, steps=5), out_dir=tmp_path)
    longer = fit(_field(study), study, config, resume=tmp_path / "checkpoint-last.pt")
    assert longer.losses == straight.losses
    with pytest.raises(ValueError, match="seed"):
        fit(
            _field(study),
            study,
            dataclasses.replace(config, seed=9),
            resume=tmp_path / "checkpoint-last.pt",
        )


def test_divergence_raises_and_keeps_the_last_good_checkpoint(study, tmp_path, monkeypatch) -> None:
    with pytest.raises(TrainingDiverged, match="diverged"):
        fit(_field(study), study, dataclasses.replace(TINY, lr=1e30, grad_clip=None, steps=10))

    real = losses.poisson_nll
    calls = {"n": 0}

    def nan_at_step_5(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(losses, "poisson_nll", nan_at_step_5)
    config = dataclasses.replace(TINY, steps=10, checkpoint_every=2, val_every=0)
    with pytest.raises(TrainingDiverged) as error:
        fit(_field(study), study, config, out_dir=tmp_path)
    assert error.value.step == 5
    assert error.value.checkpoint == tmp_path / "checkpoint-000004.pt"
    last = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert last["step"] == 4
    assert all(bool(torch.isfinite(t).all()) for t in last["model"].values())
    assert not (tmp_path / "checkpoint-000006.pt").exists()


def test_background_enters_the_loss_exactly(study, monkeypatch) -> None:
    """With zero activity the expected counts are exactly the background of the same pixels."""

    class Zero(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, points):
            return torch.zeros(points.shape[:-1]) * self.p

    # A background that identifies its pixel, and counts that are a function of it.
    bg = np.arange(1, 2 * 16 * 16 + 1, dtype=np.float32).reshape(2, 16, 16)
    marked = dataclasses.replace(study, background=bg, projections=bg * 2.0 + 1e4)
    seen = []
    real = losses.poisson_nll

    def spy(expected, counts, *args, **kwargs):
        seen.append((expected.detach().clone(), counts.detach().clone()))
        return real(expected, counts, *args, **kwargs)

    monkeypatch.setattr(losses, "poisson_nll", spy)
    fit(Zero(), marked, dataclasses.replace(TINY, steps=2, val_every=0), init_scale=False)
    for expected, counts in seen:
        assert len(expected) == 2 * TINY.rays_per_step
        torch.testing.assert_close(counts, expected * 2.0 + 1e4)
        assert set(expected.tolist()) <= set(bg.reshape(-1).tolist())


def test_scaling_the_data_scales_the_reconstruction(study) -> None:
    k = 7.3
    scaled = dataclasses.replace(
        study, projections=study.projections * k, background=study.background * k
    )
    config = dataclasses.replace(TINY, steps=20, deterministic=True, val_every=0)
    a = fit(_field(study), study, config)
    b = fit(_field(study), scaled, config)
    assert math.isclose(b.activity_level, k * a.activity_level, rel_tol=1e-5)
    va = sample_on_grid(a.representation, study.grid)
    vb = sample_on_grid(b.representation, study.grid)
    # Measured: max relative deviation 5e-7 (float32 rounding); asserted at 1e-4.
    rel = float(((vb - k * va).abs() / (k * va).clamp_min(1e-3 * float(k * va.max()))).max())
    assert rel < 1e-4, rel
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-4)  # measured 2e-6


def test_regularisers_and_3d_supervision(study) -> None:
    config = dataclasses.replace(
        TINY, steps=4, val_every=0, latent_l2=1e-3, ct_smoothness=0.1, tv_ray=0.1, tv_3d=0.1,
        l1_activity=0.1, reg_points=256,
    )  # fmt: skip
    with pytest.raises(ValueError, match="l1_activity > 0 needs an activity volume"):
        fit(_field(study), study, config)
    result = fit(_field(study), study, config, activity_supervision=study.truth_activity)
    assert result.used_3d_supervision
    row = result.history[-1]
    for name in ("latent_l2", "ct_smoothness", "tv_ray", "tv_3d", "l1_activity"):
        assert math.isfinite(row[name]) and row[name] >= 0, name
    assert row["l1_activity"] > 0 and row["tv_ray"] > 0
    res = to_result(result, study)
    assert res.parameters["used_3d_supervision"] is True
    plain = fit(_field(study), study, dataclasses.replace(TINY, steps=1, val_every=0))
    assert to_result(plain, study).parameters["used_3d_supervision"] is False


def test_lbfgs_fits_a_voxel_grid(study) -> None:
    rep = VoxelActivity(study.grid)
    config = dataclasses.replace(TINY, optimizer="lbfgs", lr=1.0, steps=8, val_every=4)
    result = fit(rep, study, config)
    assert result.losses[-1] < result.losses[0] / 3
    assert rep.volume().shape == study.grid.shape


class _Penalised(VoxelActivity):
    """A voxel grid with its own prior: ``penalty() = 0.25 · mean softplus(θ)``."""

    def penalty(self) -> torch.Tensor:
        return 0.25 * torch.nn.functional.softplus(self.theta).mean()


def test_a_model_penalty_is_added_to_the_loss_and_logged(study) -> None:
    config = dataclasses.replace(TINY, steps=3, log_every=1, val_every=0)
    plain = fit(VoxelActivity(study.grid), study, config)
    prior = fit(_Penalised(study.grid), study, config)
    # Step 1: the same uniform start and the same lines, so the losses differ by the penalty of
    # softplus(θ) = 1 everywhere: 0.25 exactly (float32).
    assert prior.losses[0] - plain.losses[0] == pytest.approx(0.25, abs=1e-6)
    assert prior.history[0]["model_prior"] == pytest.approx(0.25, abs=1e-6)
    assert math.isnan(plain.history[0]["model_prior"])
    assert prior.history[0]["nll"] == plain.history[0]["nll"]
    # The prior pulls every voxel down: less activity than without it after 3 steps.
    mean = [
        float(torch.nn.functional.softplus(r.representation.theta.detach()).mean())
        for r in (plain, prior)
    ]
    assert mean[1] < mean[0]


def test_outputs_result_and_load_field(study, tmp_path) -> None:
    config = dataclasses.replace(
        TINY, steps=6, val_every=3, log_every=2, preview_every=3, checkpoint_every=3
    )
    out = tmp_path / "run"
    result = fit(_field(study), study, config, out_dir=out)
    names = {p.name for p in out.iterdir()}
    assert {"log.csv", "log.json", "checkpoint-000003.pt", "checkpoint-000006.pt",
            "checkpoint-last.pt", "preview-000003-projections.png",
            "preview-000006-depth.png"} <= names  # fmt: skip
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == LOG_COLUMNS
    log = json.loads((out / "log.json").read_text())
    assert [row["step"] for row in log["rows"]] == [2, 3, 4, 6]
    assert log["rows"][0]["val_psnr"] is None and log["rows"][1]["val_psnr"] is not None

    res = to_result(result, study, study_file="s.h5")
    assert res.method == "nerf" and res.activity.shape == study.grid.shape
    assert res.extras["rendered_counts"].shape == study.projections.shape
    assert "model.latent" in res.extras and res.parameters["count_scale"] > 0
    assert set(res.history) == set(LOG_COLUMNS)
    path = tmp_path / "result.h5"
    write_result(path, res)
    back = read_result(path)

    pts = torch.randn(100, 3, generator=torch.Generator().manual_seed(0)) * 80
    want = result.representation.eval()(pts)
    for source in (path, out / "checkpoint-last.pt", back):
        field = load_field(source)
        assert isinstance(field, EmissionField)
        torch.testing.assert_close(field(pts), want)
    np.testing.assert_allclose(back.activity, sample_on_grid(load_field(path), study.grid).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_cuda_and_amp(study, amp: str) -> None:
    config = dataclasses.replace(TINY, steps=20, amp=amp)
    result = fit(_field(study), study, config, device="cuda")
    assert result.amp == amp and result.device.startswith("cuda")
    assert result.losses[-1] < result.losses[0]


def test_amp_is_off_on_the_cpu(study) -> None:
    result = fit(_field(study), study, dataclasses.replace(TINY, steps=1, amp="fp16", val_every=0))
    assert result.amp == "off"


# -- the command line ------------------------------------------------------------------------


def test_cli_recon_nerf_end_to_end(study, tmp_path) -> None:
    runner = CliRunner()
    study_path = tmp_path / "study.h5"
    write_study(study_path, study)
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        "val_every = 2\ncheckpoint_every = 2\npreview_every = 0\nlr = 0.01\n"
        "[field]\nhash_levels = 3\nhash_log2_size = 8\nhash_finest_resolution = 16\n"
        "hash_mlp_width = 8\nlatent_dim = 2\n"
    )
    out = tmp_path / "r.h5"
    args = [
        "recon", "nerf", str(study_path), "-o", str(out), "--steps", "4", "--rays-per-step", "64",
        "--samples", "8", "--config", str(toml), "--seed", "3", "--threads", "1",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    res = read_result(out)
    assert res.method == "nerf" and res.parameters["config"]["steps"] == 4
    assert res.parameters["config"]["field"]["hash_levels"] == 3
    assert res.parameters["config"]["seed"] == 3
    assert (tmp_path / "r_nerf" / "checkpoint-last.pt").is_file()

    # A second run refuses the existing output and folder; --resume continues to more steps.
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr
    again = runner.invoke(
        app,
        [
            *args[:3],
            "-o",
            str(tmp_path / "r2.h5"),
            *args[5:],
            "--out-dir",
            str(tmp_path / "r_nerf"),
        ],
    )
    assert again.exit_code == 1 and "holds a previous run" in again.stderr
    resumed = runner.invoke(
        app,
        [
            *args,
            "--force",
            "--steps",
            "6",
            "--resume",
            str(tmp_path / "r_nerf" / "checkpoint-last.pt"),
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert read_result(out).parameters["steps_done"] == 6

    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    failed = runner.invoke(app, [*args[:5], "--config", str(bad), "--force"])
    assert failed.exit_code == 1
    assert failed.stderr.startswith("Error: ") and "valid keys" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_cli_recon_nerf_support_and_collimator(study, tmp_path) -> None:
    runner = CliRunner()
    blurred = dataclasses.replace(
        study,
        acquisition=dataclasses.replace(study.acquisition, collimator="HE", radius_mm=250.0),
    )
    study_path = tmp_path / "study.h5"
    write_study(study_path, blurred)
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        "val_every = 0\ncheckpoint_every = 0\npreview_every = 0\n"
        "[field]\nhash_levels = 2\nhash_log2_size = 8\nhash_finest_resolution = 8\n"
        "hash_mlp_width = 8\nlatent_dim = 2\n"
    )
    base = ["recon", "nerf", str(study_path), "--steps", "2", "--samples", "8", "--config",
            str(toml), "--threads", "1"]  # fmt: skip
    out = tmp_path / "default.h5"
    done = runner.invoke(app, [*base, "-o", str(out)])
    assert done.exit_code == 0, done.output
    res = read_result(out)
    p = res.parameters
    assert p["render"] == "views" and p["collimator"].startswith("HE at 140.5 keV, radius 250")
    assert p["support"] == "body" and p["support_note"].startswith("body (μ > 0.1 × water's μ")
    body = read_result(out).activity[blurred.mu_per_mm == 0]
    assert np.all(body == 0)  # nothing outside the body (μ = 0 there)
    # the rendered counts are the blurred ones of the fitted field
    assert "rendered_counts" in res.extras and np.isfinite(res.extras["rendered_counts"]).all()

    out = tmp_path / "off.h5"
    done = runner.invoke(app, [*base, "-o", str(out), "--no-collimator", "--support", "none"])
    assert done.exit_code == 0, done.output
    p = read_result(out).parameters
    assert (p["render"], p["collimator"]) == ("lines", "off (collimator=None)")
    assert (p["support"], p["support_note"]) == ("none", "none (--support none)")

    failed = runner.invoke(app, [*base, "-o", str(tmp_path / "a.h5"), "--support", "anatomy"])
    assert failed.exit_code == 1
    assert failed.stderr.startswith("Error: support 'anatomy' needs a study with an anatomy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cli_cuda_without_cuda_is_one_line(study, tmp_path) -> None:
    runner = CliRunner()
    study_path = tmp_path / "study.h5"
    write_study(study_path, study)
    result = runner.invoke(
        app, ["recon", "nerf", str(study_path), "-o", str(tmp_path / "r.h5"), "--device", "cuda"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --device cuda: CUDA is not available")
    assert len(result.stderr.strip().splitlines()) == 1

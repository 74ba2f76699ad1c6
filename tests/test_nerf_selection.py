"""Model selection on held-out pixels (`TrainConfig.select`): the trainer keeps the state with
the lowest held-out deviance, the starting state included, restores it at the end, carries the
choice through checkpoints; ``"last"`` is unchanged behaviour."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from recon.cohort.training import CohortConfig
from recon.nerf import losses
from recon.nerf.checkpoint import load_checkpoint
from recon.nerf.config import TrainConfig
from recon.nerf.training import TrainingInterrupted, fit
from recon.training.loop import Trainer
from tests.test_nerf_training import TINY as NERF_TINY
from tests.test_nerf_training import (  # noqa: F401  # fixtures: one thread, the study
    _field,
    _one_thread,
    study,
)

TINY = dataclasses.replace(
    NERF_TINY, steps=12, lr=3e-2, val_every=3, log_every=3, deterministic=True
)


@pytest.fixture
def nerf_study(request: pytest.FixtureRequest):
    """The 16³ torso of `tests/test_nerf_training.py` (its module-scoped fixture)."""
    return request.getfixturevalue("study")


# -- a fake objective whose held-out deviance is known at every validation --------------------


class _Fake:
    """One parameter vector pulled towards a target; ``validate`` returns the deviance listed
    for the trainer's current step (``table[step]``), and remembers the parameters then."""

    columns = ("step", "loss", "lr", "val_deviance", "val_psnr", "time_s")

    def __init__(self, table: dict[int, float]) -> None:
        self.model = nn.Linear(3, 1)
        self.representation = self.model
        self.params = list(self.model.parameters())
        self.latest = {"val_deviance": math.nan, "val_psnr": math.nan}
        self.table = table
        self.trainer: Trainer | None = None
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def draw(self, step: int) -> None:
        return None

    def loss(self, batch, autocast):
        w = self.model.weight
        return ((w - 5.0) ** 2).sum() + (self.model.bias**2).sum(), {}

    def validate(self) -> dict[str, float]:
        assert self.trainer is not None
        step = self.trainer.step
        self.seen[step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.latest = {"val_deviance": self.table[step], "val_psnr": -self.table[step]}
        return dict(self.latest)

    def rng_state(self):
        return None

    def set_rng_state(self, state) -> None:
        pass

    def checkpoint_extras(self) -> dict:
        return {}

    def previews(self, step: int, out_dir: Path) -> None:
        pass


def _run_fake(select: str, table: dict[int, float], steps: int = 8) -> _Fake:
    torch.manual_seed(0)
    config = TrainConfig(
        steps=steps, lr=0.1, val_every=2, log_every=2, checkpoint_every=0, select=select
    )
    fake = _Fake(table)
    optimizer = torch.optim.Adam(fake.params, lr=config.lr)
    fake.trainer = Trainer(fake, config, optimizer, torch.device("cpu"))
    fake.trainer.run()
    return fake


@pytest.mark.parametrize(
    ("table", "best"),
    [
        ({0: 5.0, 2: 3.0, 4: 4.0, 6: 2.5, 8: 6.0}, 6),  # a middle validation
        ({0: 1.0, 2: 3.0, 4: 4.0, 6: 2.5, 8: 6.0}, 0),  # the starting state
        ({0: 5.0, 2: 3.0, 4: 3.0, 6: 3.5, 8: 3.0}, 2),  # ties: the earliest
        ({0: 5.0, 2: 3.0, 4: 4.0, 6: 2.5, 8: 1.0}, 8),  # the last
    ],
)
def test_the_trainer_restores_exactly_the_best_steps_parameters(table, best) -> None:
    fake = _run_fake("best_holdout", table)
    trainer = fake.trainer
    assert trainer is not None and trainer.step == 8
    assert trainer.selected_step == best
    for name, value in fake.model.state_dict().items():
        assert torch.equal(value, fake.seen[best][name]), name
    assert fake.latest == {"val_deviance": table[best], "val_psnr": -table[best]}
    # the steps themselves are those of "last": the same final parameters there
    last = _run_fake("last", table)
    assert last.trainer is not None and last.trainer.selected_step == 8
    assert 0 not in last.seen  # "last" does not validate the starting state
    for name, value in last.model.state_dict().items():
        assert torch.equal(value, fake.seen[8][name]), name
        assert best == 8 or not torch.equal(value, fake.model.state_dict()[name]), name


def test_a_nan_deviance_is_never_kept() -> None:
    fake = _run_fake("best_holdout", {0: math.nan, 2: 3.0, 4: math.nan, 6: 2.0, 8: math.nan})
    assert fake.trainer is not None and fake.trainer.selected_step == 6


# -- through fit ---------------------------------------------------------------------------------


def _states(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.representation.state_dict().items()}


def test_fit_best_holdout_returns_the_lowest_validation_and_last_is_unchanged(nerf_study) -> None:
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    field = _field(nerf_study)

    def keep(step: int, total: int, metrics) -> None:
        snapshots[step] = {k: v.detach().clone() for k, v in field.state_dict().items()}

    start = {k: v.detach().clone() for k, v in field.state_dict().items()}
    best = fit(field, nerf_study, dataclasses.replace(TINY, select="best_holdout"), callback=keep)
    last = fit(_field(nerf_study), nerf_study, TINY)
    assert best.losses == last.losses  # the selection does not change the training
    assert last.selected_step == last.steps_done == 12
    rows = [r for r in best.history if not math.isnan(r["val_deviance"])]
    logged = {int(r["step"]): r["val_deviance"] for r in rows}
    assert sorted(logged) == [3, 6, 9, 12]
    snapshots[0] = start
    # the starting state's deviance, measured the same way
    first = fit(_field(nerf_study), nerf_study, dataclasses.replace(TINY, steps=0))
    logged[0] = first.val_deviance
    chosen = min(logged, key=lambda s: (logged[s], s))
    assert best.selected_step == chosen
    assert best.val_deviance == pytest.approx(logged[chosen], rel=1e-12)
    assert best.val_deviance <= min(logged.values())
    for name, value in best.representation.state_dict().items():
        assert torch.equal(value, snapshots[chosen][name]), name
    if chosen != 12:  # last returns the last step's state, selection another
        assert any(
            not torch.equal(a, b)
            for a, b in zip(best.representation.state_dict().values(),
                            last.representation.state_dict().values(), strict=True)
        )  # fmt: skip


def test_a_starting_state_better_than_training_is_kept(nerf_study) -> None:
    """Training at an absurd learning rate only makes the field worse: the fit returns the
    state it was given, bitwise."""
    field = _field(nerf_study)
    bad = dataclasses.replace(TINY, lr=3.0, grad_clip=None, select="best_holdout")
    first = fit(_field(nerf_study), nerf_study, dataclasses.replace(bad, steps=0))
    given = {k: v.detach().clone() for k, v in _field(nerf_study).state_dict().items()}
    result = fit(field, nerf_study, bad)
    logged = [r["val_deviance"] for r in result.history if not math.isnan(r["val_deviance"])]
    # measured: 951 at the start, 1234 at every validation after it
    assert min(logged) > 1.2 * first.val_deviance, (first.val_deviance, logged)
    assert result.selected_step == 0 and result.val_deviance == first.val_deviance
    for name, value in result.representation.state_dict().items():
        if name in given and name != "scale":
            assert torch.equal(value, given[name]), name


def test_checkpoint_and_resume_keep_the_choice(nerf_study, tmp_path, monkeypatch) -> None:
    config = dataclasses.replace(TINY, select="best_holdout", checkpoint_every=3)
    straight = fit(_field(nerf_study), nerf_study, config)

    calls = {"n": 0}
    real = losses.poisson_nll

    def interrupt_at_step_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "poisson_nll", interrupt_at_step_8)
    with pytest.raises(TrainingInterrupted) as stop:
        fit(_field(nerf_study), nerf_study, config, out_dir=tmp_path)
    monkeypatch.setattr(losses, "poisson_nll", real)
    assert stop.value.step == 7
    saved = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert saved["selection"]["step"] in (0, 3, 6)
    resumed_field = _field(nerf_study, seed=123)
    resumed = fit(
        resumed_field, nerf_study, config, resume=tmp_path / "checkpoint-last.pt", out_dir=tmp_path
    )
    assert resumed.losses == straight.losses
    assert resumed.selected_step == straight.selected_step
    assert resumed.val_deviance == straight.val_deviance
    for (name, a), b in zip(
        straight.representation.state_dict().items(), resumed_field.state_dict().values(),
        strict=True,
    ):  # fmt: skip
        assert torch.equal(a, b), name
    # the last checkpoint holds the last step's state (to continue), the kept one beside it
    final = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert final["step"] == 12 and final["selection"]["step"] == straight.selected_step


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"select": "best"}, r"select must be one of \['last', 'best_holdout'\], got 'best'"),
        ({"select": None}, "select must be one of"),
        ({"select": "best_holdout", "holdout_fraction": 0.0}, "holdout_fraction must be > 0"),
    ],
)
def test_bad_select_values_are_clear_errors(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(changes)


def test_cohort_training_refuses_held_out_selection() -> None:
    with pytest.raises(ValueError, match=r"train\.select must be 'last'"):
        CohortConfig(train=TrainConfig(select="best_holdout"))


def test_cli_records_the_choice_and_names_a_bad_value(nerf_study, tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from recon.io import read_result, write_study

    study_path = tmp_path / "nerf_study.h5"
    write_study(study_path, nerf_study)
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        'select = "best_holdout"\nval_every = 2\ncheckpoint_every = 0\npreview_every = 0\n'
        "[field]\nhash_levels = 3\nhash_log2_size = 8\nhash_finest_resolution = 16\n"
        "hash_mlp_width = 8\nlatent_dim = 2\n"
    )
    out = tmp_path / "r.h5"
    args = [
        "recon", "nerf", str(study_path), "-o", str(out), "--steps", "4", "--rays-per-step", "64",
        "--samples", "8", "--config", str(toml), "--threads", "1",
    ]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    params = read_result(out).parameters
    assert params["config"]["select"] == "best_holdout"
    assert params["selected_step"] in (0, 2, 4)
    assert f"kept the state of step {params['selected_step']}" in done.output
    toml.write_text('select = "best"\n')
    bad = CliRunner().invoke(app, [*args[:3], "-o", str(tmp_path / "b.h5"), *args[5:]])
    assert bad.exit_code != 0 and "select must be one of" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "b.h5").exists()

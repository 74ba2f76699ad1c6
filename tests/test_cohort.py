"""Cohort training (`recon.cohort`): manifests, the model, the deterministic global batch, a
2-process gloo run (torchrun, the ``spect train-cohort`` command) that matches a 1-process run,
an interruption and exact resume in a 2-process run (``torch.multiprocessing.spawn``), only rank 0
writing, and reconstruction of a new study with the cohort as a prior.

Tiny problems: four 16³ torso phantoms with different organ concentrations (three training, one
held out), AP/PA, a 4-level hash grid with a 2×16 MLP and 4-d codes, 8 steps of 64 lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from cli.main import app
from recon.cohort import (
    CohortConfig,
    CohortModel,
    Manifest,
    ManifestEntry,
    fit_with_prior,
    global_batch,
    load_cohort_model,
    read_manifest,
    request_stop,
    train_cohort,
    write_manifest,
)
from recon.cohort.distributed import DistInfo
from recon.cohort.model import cohort_frame
from recon.data.phantoms.torso import TorsoPhantom, default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.io import read_result, read_study, write_study
from recon.nerf.checkpoint import load_checkpoint, save_checkpoint
from recon.nerf.config import TrainConfig
from recon.nerf.export import load_field, sample_on_grid, to_result
from recon.nerf.field import FieldConfig
from recon.nerf.training import TrainingInterrupted
from spectproj import ImageGrid, ParallelGeometry
from tests.conftest import requires_cuda

REPO = Path(__file__).resolve().parents[1]
TINY_TOML = """
steps = 8
rays_per_step = 64
n_samples = 16
lr = 0.01
lr_schedule = "cosine"
lr_min = 0.001
val_every = 4
log_every = 2
checkpoint_every = 0
latent_l2 = 0.001
tv_ray = 0.01
l1_activity = 0.05

[field]
encoding = "hashgrid"
latent_dim = 4
hash_levels = 4
hash_features = 2
hash_log2_size = 10
hash_base_resolution = 4
hash_finest_resolution = 32
hash_mlp_depth = 2
hash_mlp_width = 16
"""
CONCENTRATIONS = (
    {"liver": 5000.0, "spleen": 4000.0, "kidney_left": 8000.0, "kidney_right": 8000.0},
    {"liver": 3000.0, "spleen": 6000.0, "kidney_left": 5000.0, "kidney_right": 9000.0},
    {"liver": 7000.0, "spleen": 2000.0, "kidney_left": 9000.0, "kidney_right": 6000.0},
    {"liver": 4000.0, "spleen": 5000.0, "kidney_left": 7000.0, "kidney_right": 7000.0},
)
#: 1 process vs 2 (same global batch): every weight and code agrees to this absolute tolerance
#: after 8 steps (measured: ≤ 1e-7, float32 sums in another order; weights are O(0.1–1)).
ONE_VS_TWO_ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four study files (s0–s2 training, s3 held out), the manifest and the TOML settings."""
    folder = tmp_path_factory.mktemp("cohort")
    grid = default_grid(16)
    paths = []
    for k, conc in enumerate(CONCENTRATIONS):
        phantom = make_torso(grid, config=TorsoPhantom().with_concentrations(**conc), supersample=2)
        study = simulate_acquisition(
            phantom, ParallelGeometry.ap_pa(grid), total_counts=2e5, seed=k
        )
        path = folder / f"s{k}.h5"
        write_study(path, study)
        paths.append(path)
    manifest = folder / "cohort.csv"
    write_manifest(manifest, Manifest.from_paths(paths[:3], paths[3:]))
    toml = folder / "tiny.toml"
    toml.write_text(TINY_TOML, encoding="utf-8")
    return {"folder": folder, "manifest": manifest, "toml": toml, "val": paths[3]}


@pytest.fixture(scope="module")
def torchrun(cohort: dict[str, Path]) -> dict[str, Path]:
    """``torchrun --nproc-per-node 2 -m cli.main train-cohort ...``: 2 gloo processes, 8 steps."""
    out = cohort["folder"] / "torchrun"
    out.mkdir()
    model = out / "model.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "cli.main", "train-cohort", str(cohort["manifest"]), "-o", str(model),
        "--config", str(cohort["toml"]), "--backend", "gloo", "--device", "cpu",
        "--val-steps", "3",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPECT_PROGRESS": "0"}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"model": model, "out_dir": out / "model_cohort", "stdout": Path(done.stdout)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config_of(model: Path) -> CohortConfig:
    """The exact settings a model file was trained with."""
    config = CohortConfig.from_dict(load_checkpoint(model)["config"])
    assert CohortConfig.from_dict(config.to_dict()) == config
    return config


# -- manifests ---------------------------------------------------------------------------------


def test_manifest_csv_folder_and_errors(cohort, tmp_path) -> None:
    m = read_manifest(cohort["manifest"])
    assert [e.study_id for e in m.train] == ["s0", "s1", "s2"]
    assert [e.study_id for e in m.val] == ["s3"]
    assert all(e.path.is_absolute() and e.path.is_file() for e in m.entries)

    csv = tmp_path / "m.csv"
    csv.write_text(
        "# a comment\nPATH,Id,split\n\n"
        f"{cohort['folder'] / 's0.h5'},a,train\n{cohort['folder'] / 's1.h5'},b,Validation\n",
        encoding="utf-8",
    )
    m = read_manifest(csv)
    assert [(e.study_id, e.split) for e in m.entries] == [("a", "train"), ("b", "val")]

    folder = read_manifest(cohort["folder"])
    assert [e.study_id for e in folder.entries] == ["s0", "s1", "s2", "s3"]
    assert not folder.val
    held = read_manifest(cohort["folder"], val_fraction=0.5, seed=3)
    assert len(held.val) == 2 and len(held.train) == 2
    assert held == read_manifest(cohort["folder"], val_fraction=0.5, seed=3)

    for text, message in (
        ("file\nx.h5\n", "needs a 'path' column"),
        ("path,id\nx.h5,a\ny.h5,a\n", "appears twice"),
        ("path,split\nx.h5,test\n", "split must be"),
        ("path,split\nx.h5,val\n", "no training study"),
        ("# only a comment\n\n", "empty"),
    ):
        csv.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            read_manifest(csv)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no study files"):
        read_manifest(empty)
    with pytest.raises(ValueError, match="split"):
        ManifestEntry("a", Path("a.h5"), "test")


# -- the global batch and the model ------------------------------------------------------------


def test_global_batch_is_a_function_of_seed_and_step_and_slices_by_rank() -> None:
    n_lines = torch.tensor([200, 50, 120])
    studies, positions = global_batch(0, 5, 48, n_lines)
    again = global_batch(0, 5, 48, n_lines)
    assert torch.equal(studies, again[0]) and torch.equal(positions, again[1])
    assert not torch.equal(positions, global_batch(0, 6, 48, n_lines)[1])
    assert not torch.equal(positions, global_batch(1, 5, 48, n_lines)[1])
    assert bool((studies[1:] >= studies[:-1]).all()), "sorted by study"
    assert bool((positions < n_lines[studies]).all()) and bool((positions >= 0).all())
    assert set(studies.tolist()) == {0, 1, 2}
    # Every world size sees the same samples: rank r takes the r-th contiguous slice.
    for world in (1, 2, 4):
        b = 48 // world
        parts = [studies[r * b : (r + 1) * b] for r in range(world)]
        assert torch.equal(torch.cat(parts), studies)


def test_cohort_frame_and_model_codes() -> None:
    grid = default_grid(16)
    assert cohort_frame([grid, grid]) == grid
    other = ImageGrid((8, 16, 16), (25.0, 25.0, 25.0), offset_mm=(100.0, 0.0, 0.0))
    frame = cohort_frame([grid, other])
    lo = min(-200.0, 100.0 - 100.0)
    hi = max(200.0, 100.0 + 100.0)
    assert frame.extent_mm[0] == pytest.approx(hi - lo)
    assert frame.offset_mm[0] == pytest.approx((hi + lo) / 2)

    fc = FieldConfig(encoding="frequency", n_frequencies=2, latent_dim=3, depth=2, width=8)
    torch.manual_seed(0)
    model = CohortModel(grid, fc, 2, code_init_std=0.5, generator=torch.Generator().manual_seed(1))
    assert not model.field.latent.requires_grad
    points = torch.randn(10, 3) * 50
    a = model.study_field(0, level=2.0)(points)
    b = model.study_field(1, level=2.0)(points)
    assert a.shape == (10,) and not torch.allclose(a, b), "codes condition the field"
    a.sum().backward()
    grad = model.codes.weight.grad
    assert grad is not None and bool(grad[0].abs().sum() > 0) and bool((grad[1] == 0).all())
    # A stand-alone field with code 0 and scale 2 computes the same activity.
    field = model.prior_field(model.codes.weight[0], scale=2.0)
    assert torch.allclose(field(points), a.detach(), rtol=1e-6)
    assert [n for n, p in field.named_parameters() if p.requires_grad] == ["latent"]
    assert torch.allclose(model.prior_field().latent, model.codes.weight.detach().mean(0))
    with pytest.raises(ValueError, match="latent_dim"):
        CohortModel(grid, dataclasses.replace(fc, latent_dim=0), 2)


# -- 2 processes vs 1, interruption and resume, rank 0 writes ----------------------------------


def test_two_process_torchrun_cli_writes_model_and_logs(torchrun) -> None:
    model = load_cohort_model(torchrun["model"])
    assert model.step == 8 and model.study_ids == ["s0", "s1", "s2"]
    payload = load_checkpoint(torchrun["model"])
    assert payload["kind"] == "cohort-model" and payload["world_size"] == 2
    assert "optimizer" not in payload and payload["cohort"]["used_3d_supervision"]
    names = sorted(p.name for p in torchrun["out_dir"].iterdir())
    assert names == ["checkpoint-000008.pt", "checkpoint-last.pt", "log.csv", "log.json"]
    rows = json.loads((torchrun["out_dir"] / "log.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    last = rows[-1]
    assert math.isfinite(last["heldout_psnr"]) and math.isfinite(last["train_val_psnr"])
    assert 0 <= last["heldout_organ_error"] < 5 and last["l1_activity"] > 0
    assert payload["heldout"][0]["id"] == "s3"


def test_one_process_matches_two_processes(cohort, torchrun) -> None:
    config = _config_of(torchrun["model"])
    assert config.train.jitter and config.train.rays_per_step == 64
    one = train_cohort(cohort["manifest"], config)
    two = load_cohort_model(torchrun["model"]).model.state_dict()
    worst = 0.0
    for name, value in one.model.state_dict().items():
        worst = max(worst, float((value.cpu() - two[name]).abs().max()))
    assert worst <= ONE_VS_TWO_ATOL, worst
    saved = load_checkpoint(torchrun["model"])["losses"]
    assert one.losses == pytest.approx(saved, rel=1e-5, abs=1e-7)
    assert one.world_size == 1 and two["codes.weight"].shape == (3, 4)


def test_lazy_store_holds_few_studies_and_trains_the_same_model(cohort) -> None:
    train = TrainConfig.from_toml(cohort["toml"])
    train = dataclasses.replace(train, steps=6, val_every=0, log_every=0)
    grouped = CohortConfig(
        train=train, val_steps=0, val_train_studies=0, studies_per_step=1, group_steps=2
    )
    eager = train_cohort(cohort["manifest"], grouped)
    lazy = train_cohort(cohort["manifest"], dataclasses.replace(grouped, cache_studies=1))
    assert eager.max_studies_held == 3 and eager.study_reads == 0
    assert lazy.max_studies_held == 1  # bounded, also during the first pass
    assert 1 <= lazy.study_reads <= 3  # at most one read per group of 2 steps
    for name, value in eager.model.state_dict().items():
        assert torch.equal(value, lazy.model.state_dict()[name]), name
    assert eager.losses == lazy.losses
    # Grouped batches: one study per group of two steps, groups differ.
    n_lines = torch.tensor([100, 200, 300, 400])
    seen = [
        set(global_batch(0, step, 64, n_lines, studies_per_step=1, group_steps=2)[0].tolist())
        for step in range(1, 9)
    ]
    assert all(len(s) == 1 for s in seen) and seen[0] == seen[1] and seen[2] == seen[3]
    assert len({min(s) for s in seen}) > 1
    with pytest.raises(ValueError, match="group_steps"):
        CohortConfig(group_steps=0)
    with pytest.raises(ValueError, match="cache_studies"):
        CohortConfig(cache_studies=-1)


def _interrupted_worker(
    rank: int, world: int, port: int, manifest: str, config: CohortConfig, out: str
) -> None:
    """Rank 1 asks to stop at step 3 (so both stop after step 4), then both resume to step 8.
    Every file written through the trainer is recorded per rank."""
    import recon.nerf.logs as logs
    import recon.training.loop as training

    torch.set_num_threads(1)
    writes: list[str] = []
    real_save, real_atomic = training.save_checkpoint, logs.atomic_output

    def save(payload, *paths):
        writes.extend(str(p) for p in paths)
        real_save(payload, *paths)

    @contextlib.contextmanager
    def atomic(path, **kwargs):
        writes.append(str(path))
        with real_atomic(path, **kwargs) as tmp:
            yield tmp

    training.save_checkpoint, logs.atomic_output = save, atomic
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    folder = Path(out)

    def callback(step: int, total: int, metrics) -> None:
        if rank == 1 and step == 3:
            request_stop()

    try:
        train_cohort(manifest, config, folder / "run", callback=callback)
        stopped = None
    except TrainingInterrupted as stop:
        stopped = [stop.step, str(stop.checkpoint)]
    result = train_cohort(
        manifest, config, folder / "run", resume=folder / "run" / "checkpoint-last.pt",
        model_path=folder / "resumed.pt",
    )  # fmt: skip
    record = {"stopped": stopped, "writes": writes, "losses": result.losses}
    (folder / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    dist.barrier()  # leave together: tearing gloo down while a peer still runs can abort
    dist.destroy_process_group()


def test_two_process_interruption_resumes_exactly_and_only_rank0_writes(
    cohort, torchrun, tmp_path
) -> None:
    config = _config_of(torchrun["model"])
    port = _free_port()
    mp.spawn(
        _interrupted_worker,
        args=(2, port, str(cohort["manifest"]), config, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    run = tmp_path / "run"
    # Both ranks stopped after step 4 (the request travelled with step 4's all-reduce).
    assert ranks[0]["stopped"] == ranks[1]["stopped"] == [4, str(run / "checkpoint-000004.pt")]
    # Only rank 0 wrote: logs, the interruption checkpoint, the final checkpoint and model.
    assert ranks[1]["writes"] == []
    written = {Path(p).name for p in ranks[0]["writes"]}
    assert {"checkpoint-000004.pt", "checkpoint-000008.pt", "log.csv", "resumed.pt"} <= written
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-000004.pt", "checkpoint-000008.pt", "checkpoint-last.pt", "log.csv",
        "log.json",
    ]  # fmt: skip
    # Resumed to step 8 = the uninterrupted 2-process run of the same settings.
    resumed = load_cohort_model(tmp_path / "resumed.pt")
    straight = load_cohort_model(torchrun["model"])
    assert resumed.step == 8
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert ranks[0]["losses"] == ranks[1]["losses"] == load_checkpoint(torchrun["model"])["losses"]


# -- errors ------------------------------------------------------------------------------------


def test_outputs_in_the_way_and_mismatched_resume(cohort, torchrun, tmp_path) -> None:
    config = _config_of(torchrun["model"])
    with pytest.raises(FileExistsError, match="already exists"):
        train_cohort(cohort["manifest"], config, model_path=torchrun["model"])
    with pytest.raises(FileExistsError, match="previous run"):
        train_cohort(cohort["manifest"], config, torchrun["out_dir"])
    last = torchrun["out_dir"] / "checkpoint-last.pt"
    two = Manifest(read_manifest(cohort["manifest"]).train[:2])
    with pytest.raises(ValueError, match="training studies"):
        train_cohort(two, config, tmp_path / "a", resume=last)
    other = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=5))
    with pytest.raises(ValueError, match="seed"):
        train_cohort(cohort["manifest"], other, tmp_path / "b", resume=last)
    single = _single_study_checkpoint(cohort, tmp_path)
    with pytest.raises(ValueError, match="not a cohort"):
        fit_with_prior(read_study(cohort["val"]), single)
    with pytest.raises(ValueError, match="adam"):
        CohortConfig(train=dataclasses.replace(config.train, optimizer="lbfgs"))
    no_truth = tmp_path / "no_truth.h5"
    write_study(no_truth, dataclasses.replace(read_study(cohort["val"]), truth_activity=None))
    with pytest.raises(ValueError, match="truth activity"):
        train_cohort(Manifest.from_paths([no_truth]), config)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        from recon.cohort.training import _CohortObjective

        _CohortObjective(read_manifest(cohort["manifest"]), config, DistInfo(0, 3))


def test_cohort_3d_regularisers_enter_the_loss_and_bf16_runs(cohort) -> None:
    """The single-study regularisers and CPU bfloat16 work in cohort training too."""
    train = dataclasses.replace(
        TrainConfig.from_toml(cohort["toml"]), steps=1, log_every=1, l1_activity=0.0
    )
    config = CohortConfig(train=train, val_steps=0, val_train_studies=0)
    plain = train_cohort(cohort["manifest"], config)
    # Large weights: the initial field is almost uniform, so both terms start small.
    regs = dataclasses.replace(train, tv_3d=1e3, ct_smoothness=1e3)
    both = train_cohort(cohort["manifest"], dataclasses.replace(config, train=regs))
    row = both.history[0]
    assert row["tv_3d"] > 0 and row["ct_smoothness"] > 0
    assert math.isnan(plain.history[0]["tv_3d"]) or plain.history[0]["tv_3d"] == 0
    # Same start, same batch: the losses differ by exactly the weighted new terms.
    extra = 1e3 * (row["tv_3d"] + row["ct_smoothness"])
    assert extra > 1e-4
    assert both.losses[0] - plain.losses[0] == pytest.approx(extra, abs=1e-6)
    assert row["data"] == plain.history[0]["data"]
    bf16 = dataclasses.replace(config, train=dataclasses.replace(regs, cpu_bf16=True))
    result = train_cohort(cohort["manifest"], bf16)
    assert result.amp == "bf16" and math.isfinite(result.losses[0])
    assert result.losses[0] == pytest.approx(both.losses[0], rel=0.05)


def test_cohort_of_collimated_studies_renders_whole_views_with_the_blur(cohort, tmp_path) -> None:
    """Studies that name a collimator train on whole views with its blur (``render="auto"``), as
    in `fit`: the step's data term is each study's whole-view term weighted by its samples."""
    from recon.cohort.training import _CohortObjective, _mix
    from recon.training.terms import data_term

    paths = []
    for k in (0, 1):
        study = read_study(cohort["folder"] / f"s{k}.h5")
        acq = dataclasses.replace(study.acquisition, collimator="HE", radius_mm=250.0)
        paths.append(tmp_path / f"he{k}.h5")
        write_study(paths[-1], dataclasses.replace(study, acquisition=acq))
    train = dataclasses.replace(
        TrainConfig.from_toml(cohort["toml"]), steps=2, l1_activity=0.0, tv_ray=0.0, latent_l2=0.0
    )
    config = CohortConfig(train=train, val_steps=0, val_train_studies=1)
    obj = _CohortObjective(Manifest.from_paths(paths), config, DistInfo())
    assert obj.views == [True, True] and obj.notes[0].startswith("HE at 140.5 keV")
    batch = obj.draw(1)
    loss, parts = obj.loss(batch, contextlib.nullcontext)
    n = torch.bincount(batch.studies, minlength=2).double()
    direct = 0.0
    for s in (0, 1):
        field = obj.model.study_field(s, obj.levels[s])
        g = torch.Generator().manual_seed(_mix("cohort-views", train.seed, 1, s))
        rendered = obj.store[s].data.render_views(field, train.n_samples, jitter=True, generator=g)
        term, _ = data_term(rendered.expected, rendered.counts, obj.count_levels[s])
        direct += float(n[s] / n.sum()) * float(term.detach())
    assert float(loss.detach()) == pytest.approx(direct, rel=1e-6)
    assert float(parts["data"]) == pytest.approx(direct, rel=1e-6)
    result = train_cohort(Manifest.from_paths(paths), config, tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert saved["cohort"]["render"] == ["views", "views"]
    assert math.isfinite(result.history[-1]["train_val_psnr"])
    # A checkpoint of a run that rendered lines (older files record nothing) cannot continue here.
    del saved["cohort"]["render"]
    save_checkpoint(saved, tmp_path / "lines.pt")
    with pytest.raises(ValueError, match="rendered the studies as"):
        train_cohort(Manifest.from_paths(paths), config, resume=tmp_path / "lines.pt")


def _single_study_checkpoint(cohort, tmp_path: Path) -> Path:
    from recon.nerf.field import EmissionField
    from recon.nerf.training import fit

    study = read_study(cohort["val"])
    config = dataclasses.replace(
        TrainConfig.from_toml(cohort["toml"]),
        steps=1,
        val_every=0,
        checkpoint_every=1,
        l1_activity=0.0,
    )
    fit(EmissionField(study.grid, config.field), study, config, out_dir=tmp_path / "single")
    return tmp_path / "single" / "checkpoint-last.pt"


# -- a new study with the cohort as a prior ----------------------------------------------------


def test_fit_with_prior_code_only_then_fine_tune(cohort, torchrun, tmp_path) -> None:
    study = read_study(cohort["val"])
    loaded = load_cohort_model(torchrun["model"])
    shared = {k: v for k, v in loaded.model.field.state_dict().items() if k not in ("latent",)}
    config = TrainConfig(steps=6, rays_per_step=64, n_samples=16, lr=1e-2, val_every=3,
                         log_every=3, checkpoint_every=3)  # fmt: skip

    code = fit_with_prior(study, torchrun["model"], config=config, out_dir=tmp_path / "p1")
    state = code.representation.state_dict()
    for name, value in shared.items():  # the network is frozen
        if name != "scale":
            assert torch.equal(state[name], value), name
    assert not torch.equal(state["latent"], loaded.model.mean_code())
    assert code.config.field == loaded.model.field_config
    assert code.steps_done == 6 and len(code.losses) == 6
    assert code.prior["code_steps"] == 6 and code.prior["fine_tune_steps"] == 0
    assert code.prior["cohort_used_3d_supervision"] is True
    assert float(state["scale"]) == pytest.approx(code.activity_level)

    tuned = fit_with_prior(study, loaded, fine_tune=True, config=config, out_dir=tmp_path / "p2")
    assert tuned.prior["code_steps"] == 3 and tuned.prior["fine_tune_steps"] == 3
    assert [int(r["step"]) for r in tuned.history] == [3, 6]
    assert len(tuned.losses) == 6 and tuned.steps_done == 6
    tuned_state = tuned.representation.state_dict()
    assert not torch.equal(tuned_state["layers.0.weight"], shared["layers.0.weight"])
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == ["code", "fine-tune"]

    # The result is an ordinary NeRF result: it reads back without the cohort file.
    result = to_result(tuned, study)
    field = load_field(result)
    assert torch.allclose(
        sample_on_grid(field, study.grid), torch.as_tensor(result.activity), rtol=1e-5
    )
    # Resume from the fine-tuning phase's checkpoint continues to the same end.
    again = fit_with_prior(
        study, loaded, fine_tune=True, config=config, out_dir=tmp_path / "p2",
        resume=tmp_path / "p2" / "fine-tune" / "checkpoint-000003.pt",
    )  # fmt: skip
    assert again.steps_done == 6 and len(again.losses) == 6


def test_cli_train_cohort_plain_and_recon_nerf_prior(cohort, torchrun, tmp_path) -> None:
    runner = CliRunner()
    model = tmp_path / "model.pt"
    args = ["train-cohort", str(cohort["manifest"]), "-o", str(model), "--config",
            str(cohort["toml"]), "--steps", "2", "--val-steps", "0", "--device", "cpu"]  # fmt: skip
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "3 training, 1 held out" in done.output and model.is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output

    out = tmp_path / "r.h5"
    done = runner.invoke(
        app, ["recon", "nerf", str(cohort["val"]), "-o", str(out), "--prior",
              str(torchrun["model"]), "--steps", "4", "--rays-per-step", "64", "--samples", "16"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    result = read_result(out)
    assert result.method == "nerf" and result.parameters["prior"]["code_steps"] == 4
    assert result.parameters["representation"]["field_config"]["latent_dim"] == 4
    bad = runner.invoke(
        app, ["recon", "nerf", str(cohort["val"]), "-o", str(tmp_path / "x.h5"), "--fine-tune"]
    )
    assert bad.exit_code != 0 and "--prior" in bad.output


# -- GPUs --------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.gpu
def test_cuda_one_process_matches_cpu(cohort, torchrun) -> None:
    config = _config_of(torchrun["model"])
    gpu = train_cohort(cohort["manifest"], dataclasses.replace(config, device="cuda"))
    assert gpu.device.startswith("cuda")
    cpu = load_checkpoint(torchrun["model"])
    # Different kernels (and atomic adds in the hash grid's backward) on the GPU: loose.
    assert gpu.losses == pytest.approx(cpu["losses"], rel=1e-3)
    for name, value in gpu.model.state_dict().items():
        assert torch.allclose(value.cpu(), cpu["model"][name], atol=1e-3), name


def _nccl_worker(rank: int, world: int, port: int, manifest: str, config: CohortConfig, out: str):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    config = dataclasses.replace(config, backend="nccl", device="cuda")
    train_cohort(manifest, config, model_path=Path(out) / "nccl.pt")


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2
    or not dist.is_nccl_available(),
    reason="needs 2 CUDA devices and NCCL",
)  # fmt: skip
def test_two_gpus_nccl_match_one_gpu(cohort, torchrun, tmp_path) -> None:
    config = _config_of(torchrun["model"])
    one = train_cohort(cohort["manifest"], dataclasses.replace(config, device="cuda"))
    mp.spawn(
        _nccl_worker, args=(2, _free_port(), str(cohort["manifest"]), config, str(tmp_path)),
        nprocs=2, join=True,
    )  # fmt: skip
    two = load_cohort_model(tmp_path / "nccl.pt")
    assert load_checkpoint(tmp_path / "nccl.pt")["world_size"] == 2
    for name, value in one.model.state_dict().items():
        assert torch.allclose(value.cpu(), two.model.state_dict()[name], atol=1e-4), name

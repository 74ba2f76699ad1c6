"""The phantom population (recon.data.phantoms.population) and `spect cohort make`."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.cohort import read_manifest
from recon.cohort.make import MANIFEST_NAME, POPULATION_NAME, make_cohort
from recon.data.phantoms import (
    FIRST_LESION_LABEL,
    LABELS,
    OrganPose,
    TorsoPhantom,
    default_grid,
    make_torso,
    structure_at,
)
from recon.data.phantoms.population import (
    POSED_ORGANS,
    TRACERS,
    PopulationConfig,
    _shares,
    sample_population,
    sample_torso,
    simulate_sample,
)
from recon.data.phantoms.torso import _rotated_ellipsoid
from recon.io import read_study
from spectproj import hu_to_mu_per_mm
from tests.helpers import assert_ok, assert_one_line_error, invoke

SEED = 7


@pytest.fixture(scope="module")
def samples() -> dict[str, tuple]:
    return {t: sample_population(PopulationConfig(tracer=t), 6, SEED) for t in TRACERS}


def test_sampling_is_seeded_and_per_member(samples) -> None:
    c = PopulationConfig()
    first = samples["lu177-dotatate"]
    assert sample_torso(c, SEED, 3) == first[3]  # the same member whatever n is
    assert sample_population(c, 2, SEED, start=4) == first[4:6]
    assert sample_torso(c, SEED + 1, 3) != first[3]
    widths = {round(s.phantom.body_width_mm, 3) for s in first}
    assert len(widths) == len(first)  # every member is an anatomy of its own
    volumes = [s.anatomy_summary()["liver_volume_factor"] for s in first]
    assert max(volumes) / min(volumes) > 1.1


def test_organs_inside_the_body_and_not_hidden(samples) -> None:
    for tracer, members in samples.items():
        for s in members:
            assert s.tries <= PopulationConfig().max_tries, (tracer, s.index)
            assert {p.organ for p in s.phantom.organ_poses} == set(POSED_ORGANS)
            reference = _shares(replace(s.phantom, organ_poses=(), lesions=()))
            shares = _shares(replace(s.phantom, lesions=()))
            for organ, (inside, own) in shares.items():
                assert inside >= min(0.97, reference[organ][0]), (tracer, s.index, organ, inside)
                assert own >= 0.85 * reference[organ][1], (tracer, s.index, organ, own)


def test_uptake_within_the_tracers_ranges(samples) -> None:
    for tracer, members in samples.items():
        info = TRACERS[tracer]
        for s in members:
            for name in LABELS:
                lo, hi = info.concentration_range(name)
                assert lo <= s.phantom.concentration(name) <= hi, (tracer, name)
            lo, hi = info.concentration_range("lesion")
            for lesion in s.phantom.lesions:
                assert lo <= lesion.concentration <= hi
                assert 15.0 <= lesion.diameter_mm <= 40.0
            assert 0.0 <= s.variant.heterogeneity_rms <= 0.2
            assert s.nuclide == info.nuclide
    # The tracers differ where the literature says they do.
    dota, mdp = TRACERS["lu177-dotatate"], TRACERS["tc99m-mdp"]
    assert dota.uptake_range("spleen")[0] > dota.uptake_range("liver")[1] / 2
    assert mdp.uptake_range("spine")[0] > mdp.uptake_range("liver")[1]
    assert mdp.lesion_sites == ("spine",)


def test_lesions_inside_their_hosts_and_apart(samples) -> None:
    n_lesions = 0
    for members in samples.values():
        for s in members:
            ph = s.phantom
            anatomy = replace(ph, lesions=())
            scale = np.array(
                [ph.body_length_mm / 380, ph.body_depth_mm / 220, ph.body_width_mm / 340]
            )
            centres = [np.array(les.centre_mm) * scale for les in ph.lesions]
            for lesion, centre in zip(ph.lesions, centres, strict=True):
                host = lesion.name.split("_", 2)[2]
                probe = torch.from_numpy(centre[None] + np.eye(3) * lesion.diameter_mm / 2.0)
                assert (structure_at(anatomy, probe) == LABELS[host]).all(), lesion.name
                n_lesions += 1
            for i in range(len(centres)):
                for j in range(i):
                    gap = np.linalg.norm(centres[i] - centres[j])
                    radii = (ph.lesions[i].diameter_mm + ph.lesions[j].diameter_mm) / 2
                    assert gap >= radii + 2.0
    assert n_lesions >= 10


def test_rotated_ellipsoid_and_posed_organ_volume() -> None:
    # 90° about z turns the local x axis (semi-axis 80) onto −y: extent 80 along y, 70 along x.
    rot = OrganPose("liver", rotation_deg=(90.0, 0.0, 0.0)).rotation()
    part = _rotated_ellipsoid(1, (0.0, 0.0, 0.0), (60.0, 70.0, 80.0), rot)
    z, y, x = (torch.tensor([v], dtype=torch.float64)[:, None, None] for v in (0.0, 0.0, 0.0))
    pts = {(0.0, 78.0, 0.0): True, (0.0, 0.0, 68.0): True, (0.0, 0.0, 75.0): False}
    for (pz, py, px), inside in pts.items():
        got = part.inside(z + pz, y + py, x + px)
        assert bool(got.reshape(-1)[0]) is inside, (pz, py, px)
    assert part.box[2:4] == pytest.approx((-80.0, 80.0)) and part.box[4:] == pytest.approx(
        (-70.0, 70.0)
    )
    # A rotated, scaled kidney keeps its analytic volume (4/3·π·abc, the kidney is uncovered).
    grid = default_grid(48)
    pose = OrganPose("kidney_left", scale=(1.1, 0.9, 1.0), rotation_deg=(15.0, -10.0, 5.0))
    ph = make_torso(grid, config=TorsoPhantom(lesions=(), organ_poses=(pose,)), supersample=4)
    expected = 4 / 3 * math.pi * (50 * 1.1) * (28 * 0.9) * 25 * 1e-3
    assert ph.volumes_ml[LABELS["kidney_left"]] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"organ": "body"}, "OrganPose.organ"),
        ({"organ": "liver", "scale": (1.0, 0.0, 1.0)}, "scale"),
        ({"organ": "liver", "rotation_deg": (0.0, 120.0, 0.0)}, "rotation_deg"),
        ({"organ": "liver", "shift_mm": (0.0, math.nan, 0.0)}, "shift_mm"),
    ],
)
def test_bad_organ_poses(kwargs, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        OrganPose(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tracer": "f18-fdg"}, "tracer"),
        ({"body_width_mm": (380.0, 300.0)}, "body_width_mm"),
        ({"lesion_count": (3, 1)}, "lesion_count"),
        ({"heterogeneity_rms": (0.0, 1.0)}, "heterogeneity_rms"),
        ({"necrotic_probability": 1.5}, "necrotic_probability"),
        ({"organ_rotation_deg": 45.0}, "organ_rotation_deg"),
    ],
)
def test_bad_population_configs(kwargs, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        PopulationConfig(**kwargs)


def test_population_config_round_trip() -> None:
    c = PopulationConfig(tracer="lu177-psma", lesion_count=(0, 2))
    assert PopulationConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="colour"):
        PopulationConfig.from_dict({"colour": 1})


def test_simulated_sample_has_ct_mu_truth_and_segmentation(samples) -> None:
    s = samples["lu177-dotatate"][2]
    study = simulate_sample(s, size=16, noise=False)
    assert study.ct_hu is not None and study.mu_per_mm is not None
    energy = study.acquisition.energy_keV
    assert np.allclose(study.mu_per_mm, hu_to_mu_per_mm(study.ct_hu.astype(np.float64), energy),
                       rtol=1e-5, atol=1e-7)  # fmt: skip  # μ comes from the CT
    assert study.ct_hu.min() == -1000.0 and 0.0 < study.ct_hu.max() < 800.0
    assert study.label_names[LABELS["bowel"]] == "bowel"
    lesion_names = {n for v, n in study.label_names.items() if v >= FIRST_LESION_LABEL}
    assert study.anatomy is not None and not lesion_names & set(study.anatomy.names.values())
    described = json.loads(study.provenance["population_sample"])
    assert described["index"] == 2 and described["tracer"] == "lu177-dotatate"
    assert study.acquisition.isotope == "Lu-177"
    with pytest.raises(ValueError, match="fov_mm"):
        simulate_sample(s, size=16, fov_mm=300.0)


def test_make_cohort_writes_studies_manifest_and_population(tmp_path: Path) -> None:
    folder = tmp_path / "cohort"
    made = make_cohort(folder, 3, PopulationConfig(tracer="tc99m-mdp"), seed=2, size=12,
                       val_fraction=0.34)  # fmt: skip
    manifest = read_manifest(folder / MANIFEST_NAME)
    assert [e.study_id for e in manifest.entries] == ["p0000", "p0001", "p0002"]
    assert len(manifest.val) == 1 and made.manifest.val[0].study_id == manifest.val[0].study_id
    population = json.loads((folder / POPULATION_NAME).read_text())
    assert population["seed"] == 2 and len(population["studies"]) == 3
    study = read_study(folder / "p0001.h5")
    expected = simulate_sample(sample_torso(PopulationConfig(tracer="tc99m-mdp"), 2, 1), size=12)
    assert np.array_equal(study.projections, expected.projections.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no temporary left
    with pytest.raises(FileExistsError, match="already exist"):
        make_cohort(folder, 1, size=12)
    assert len(list(folder.glob("*.h5"))) == 3  # untouched


def test_make_cohort_leaves_nothing_on_failure(tmp_path: Path, monkeypatch) -> None:
    import recon.cohort.make as make

    real = make.simulate_sample

    def fail_second(sample, **kwargs):
        if sample.index == 1:
            raise RuntimeError("disk full")
        return real(sample, **kwargs)

    monkeypatch.setattr(make, "simulate_sample", fail_second)
    with pytest.raises(RuntimeError, match="disk full"):
        make_cohort(tmp_path / "cohort", 3, size=12)
    assert list(tmp_path.iterdir()) == []


def test_cli_cohort_make(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    assert_ok(invoke("cohort", "make", 2, "-o", folder, "--size", 12, "--tracer", "lu177-psma"))
    assert (folder / MANIFEST_NAME).is_file() and len(list(folder.glob("*.h5"))) == 2
    assert_one_line_error(invoke("cohort", "make", 2, "-o", folder, "--size", 12), "already exist")
    assert_one_line_error(
        invoke("cohort", "make", 2, "-o", tmp_path / "no" / "c", "--size", 12), "does not exist"
    )
    bad = invoke("cohort", "make", 2, "-o", tmp_path / "d", "--tracer", "fdg")
    assert bad.exit_code == 2 and "Traceback" not in bad.output

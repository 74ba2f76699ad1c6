"""The normalised modulation's fast path: each component's mean modulation estimated on a fixed,
seeded subsample of its voxels (`OrganCodeConfig.normalise_sample`) against the exact
reference (``None``: every voxel)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from recon.cohort.training import CohortConfig
from recon.nerf.anatomy_field import AnatomyFeatureConfig, AnatomyFeatures
from recon.nerf.organ_field import (
    NORMALISE_SAMPLE,
    OrganAnchor,
    OrganAnchoredField,
    OrganCodeConfig,
    OrganFieldConfig,
    ResidualAnchor,
    anchor_log_concentration,
    normalised_log_concentration,
)
from recon.training.runtime import voxel_points
from spectproj import ImageGrid
from tests.test_cohort_organ_code import FIELD

GRID = ImageGrid(shape=(30, 40, 50), spacing_mm=(4.0, 4.0, 4.0))
#: Entries per component of the big anchor: three large ones and a small one (taken whole).
SIZES = (30000, 20000, 300, 9700)


def _big_anchor() -> ResidualAnchor:
    """60 000 voxels in four components, values in (0, 1], plus a "source" overlapping them."""
    g = torch.Generator().manual_seed(5)
    n = math.prod(GRID.shape)
    comp = torch.cat([torch.full((k,), i) for i, k in enumerate(SIZES)])
    voxel = torch.randperm(n, generator=g)
    source = torch.randperm(n, generator=g)[:8000]
    voxel = torch.cat([voxel, source])
    comp = torch.cat([comp, torch.full((8000,), 4)])
    value = torch.rand(len(voxel), generator=g) * 0.9 + 0.1
    return ResidualAnchor(GRID, voxel, comp, value)


def _raw(points: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for the network: a wavy log-modulation of ±B·tanh(1.5)."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return (1.5 * torch.sin(x / 17.0) * torch.cos(y / 23.0 + z / 11.0))[:, None]


def test_the_subsample_is_stratified_fixed_and_seeded() -> None:
    anchor = _big_anchor()
    _, component, _ = anchor.entries()
    keep = anchor.normalising_entries(1000)
    counts = torch.bincount(component[keep]).tolist()
    assert counts == [1000, 1000, 300, 1000, 1000]  # the small component whole
    assert bool((keep[1:] > keep[:-1]).all())  # sorted, no repeats
    assert torch.equal(anchor.normalising_entries(1000), keep)  # cached, the same
    again = ResidualAnchor(GRID)
    again.load_state_dict(anchor.state_dict())
    assert torch.equal(again.normalising_entries(1000), keep)  # seeded: the same after a reload
    assert torch.equal(anchor.normalising_entries(10**6), torch.arange(len(component)))
    # the organ anchor has the same mechanism
    organ = OrganAnchor(GRID, (torch.arange(math.prod(GRID.shape)) % 3).reshape(GRID.shape))
    assert torch.bincount(organ.entries()[1][organ.normalising_entries(500)]).tolist() == [500] * 3


@pytest.mark.parametrize("per_component", [512, 4096])
def test_sampled_means_match_the_exact_ones_within_their_standard_error(per_component) -> None:
    anchor = _big_anchor()
    log_c = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    exact_cfg = OrganCodeConfig(anchor="residual", normalise=True, normalise_sample=None)
    fast_cfg = OrganCodeConfig(anchor="residual", normalise=True, normalise_sample=per_component)
    exact = anchor_log_concentration(anchor, log_c, _raw, exact_cfg).double()
    fast = anchor_log_concentration(anchor, log_c, _raw, fast_cfg).double()
    # exact path == the plain formula over every entry
    voxel, component, value = anchor.entries()
    log_mod = 0.7 * torch.tanh(_raw(voxel_points(GRID, voxel))[:, 0]).double()
    reference = normalised_log_concentration(log_c, component, value, log_mod)
    torch.testing.assert_close(exact, reference, rtol=0, atol=1e-6)
    # preserved totals: the sampled normalisation keeps exp(ℓ)·Σv to M/M̂ = exp(fast − exact)
    ratio = torch.exp(fast - exact)
    for i in range(5):
        sel = component == i
        w, m = value[sel].double(), torch.exp(log_mod[sel])
        n = int(sel.sum())
        if n <= per_component:
            assert ratio[i] == pytest.approx(1.0, abs=1e-6), i  # taken whole: exact
            continue
        mean = float((w * m).sum() / w.sum())
        spread = float(torch.sqrt((w * (m - mean) ** 2).sum() / w.sum()))
        se = spread / mean * math.sqrt((1 - per_component / n) / per_component)
        assert abs(float(ratio[i]) - 1) < 4 * se, (i, float(ratio[i]), se)
        # the stated tolerance, for a modulation spread over most of [e^-B, e^B] (a network's
        # is narrower): 5 % at 512 voxels, 1.5 % at the default 4096
        assert abs(float(ratio[i]) - 1) < (0.05 if per_component == 512 else 0.015), i
    assert float((ratio - 1).abs().max()) > 0  # the fast path is an estimate, not a copy


def test_a_field_reports_its_actual_totals_with_the_fast_path() -> None:
    """`component_activities` is the field's own total per component (the voxel volume's), the
    code's up to the sampled mean's error; with ``None`` exactly the code's."""
    grid = ImageGrid(shape=(6, 7, 8), spacing_mm=(4.0, 4.0, 4.0))
    n = math.prod(grid.shape)
    g = torch.Generator().manual_seed(2)
    anchor = ResidualAnchor(grid, torch.arange(n), torch.arange(n) % 3, torch.rand(n, generator=g))
    features = AnatomyFeatureConfig(embedding_dim=2, segment_names=("a",))
    names = ("a", "b", "background")
    gaps = {}
    for sample in (None, 40):
        organ = OrganCodeConfig(residual=False, anchor="residual", normalise=True,
                                normalise_sample=sample)  # fmt: skip
        field = OrganAnchoredField(grid, OrganFieldConfig(FIELD, features, organ, names),
                                   AnatomyFeatures(grid, features), anchor,
                                   np.array([1.0, 2.0, 0.5]))  # fmt: skip
        with torch.no_grad():  # every weight random: a modulation that varies in space
            weights = torch.Generator().manual_seed(0)
            for p in field.network.parameters():
                p.copy_(torch.randn(p.shape, generator=weights))
        acts, code = field.component_activities(), field.code_activities()
        cz, cy, cx = (grid.centres_mm(a) for a in range(3))
        zz, yy, xx = torch.meshgrid(cz, cy, cx, indexing="ij")
        centres = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3).float()
        with torch.no_grad():
            total = float(field(centres).double().sum()) * grid.voxel_volume_mm3 * 1e-3
        assert total == pytest.approx(sum(acts.values()), rel=1e-5)
        gaps[sample] = max(abs(acts[k] / code[k] - 1) for k in names)
    assert gaps[None] < 1e-5
    assert 1e-4 < gaps[40] < 0.1, gaps


def test_settings_defaults_and_old_files() -> None:
    assert OrganCodeConfig().normalise_sample == NORMALISE_SAMPLE == 4096
    assert CohortConfig().organ_normalise_sample == NORMALISE_SAMPLE
    from cli.commands.cohort import train_cohort

    default = inspect.signature(train_cohort).parameters["organ_normalise_sample"].default
    assert default == NORMALISE_SAMPLE  # the CLI's literal default is the library's
    for bad in (0, -3, True, 2.5, "4096"):
        with pytest.raises(ValueError, match="normalise_sample must be an integer >= 1 or None"):
            OrganCodeConfig(normalise=True, normalise_sample=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalise_sample"):
        CohortConfig(anatomy=True, organ_code=True, organ_normalise=True,
                     organ_normalise_sample=0)  # fmt: skip
    # a file of before the setting (its normalisation was exact) reads as exact
    old = OrganCodeConfig.from_dict({"bound": 0.7, "residual": False, "anchor": "residual",
                                     "normalise": True})  # fmt: skip
    assert old.normalise_sample is None
    assert OrganCodeConfig.from_dict(OrganCodeConfig().to_dict()) == OrganCodeConfig()

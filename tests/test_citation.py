"""CITATION.cff is valid Citation File Format 1.2.0 and names this version of spect."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml  # pyyaml, in the test extra

REPO = Path(__file__).resolve().parents[1]


def test_citation_file_is_cff_1_2_0():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # required by the CFF 1.2.0 schema
        assert cff[key], key
    assert cff["authors"] == [{"name": "spect developers"}]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert cff["version"] == project["version"]
    assert cff["license"] == project["license"]["text"]

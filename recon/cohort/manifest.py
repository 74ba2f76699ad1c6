"""Cohort manifests: which study files make up a cohort, and which of them are held out.

A manifest is either

- a **CSV file** with a header row and the columns ``path`` (required: the study file, relative
  to the CSV's folder unless absolute), ``id`` (optional: a unique name of the study, default the
  file's stem) and ``split`` (optional: ``train`` or ``val``, default ``train``). Blank lines and
  lines starting with ``#`` are ignored::

      id,path,split
      p001,studies/p001.h5,train
      p002,studies/p002.h5,train
      p003,studies/p003.h5,val

- or a **folder**: every ``*.h5`` file directly inside it (sorted by name) is a study, all of them
  training studies.

Without a ``split`` column a seeded fraction of the studies can be held out for validation
(``val_fraction``). The order of the training studies is the order of their latent codes in the
cohort model. Studies are only named here; they are read by `recon.cohort.training`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPLITS", "Manifest", "ManifestEntry", "read_manifest", "write_manifest"]

#: Allowed values of the ``split`` column.
SPLITS = ("train", "val")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "validation": "val"}


@dataclass(frozen=True)
class ManifestEntry:
    """One study of a cohort.

    Attributes
    ----------
    study_id:
        Unique name of the study.
    path:
        The study file (absolute, or as given when the manifest was built in memory).
    split:
        ``"train"`` (has a latent code in the cohort model) or ``"val"`` (held out).
    """

    study_id: str
    path: Path
    split: str = "train"

    def __post_init__(self) -> None:
        if not isinstance(self.study_id, str) or not self.study_id.strip():
            raise ValueError(f"a study id must be a non-empty string, got {self.study_id!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class Manifest:
    """The studies of a cohort, in order.

    Attributes
    ----------
    entries:
        Every study, training and held out, in manifest order.
    source:
        The CSV file or folder it was read from (``None`` when built in memory).
    """

    entries: tuple[ManifestEntry, ...]
    source: Path | None = None

    def __post_init__(self) -> None:
        entries = tuple(self.entries)
        if not all(isinstance(e, ManifestEntry) for e in entries):
            raise TypeError("entries must be ManifestEntry objects")
        seen: dict[str, int] = {}
        for k, e in enumerate(entries):
            if e.study_id in seen:
                raise ValueError(
                    f"{self._where()}study id {e.study_id!r} appears twice (entries "
                    f"{seen[e.study_id] + 1} and {k + 1}); ids must be unique"
                )
            seen[e.study_id] = k
        object.__setattr__(self, "entries", entries)

    def _where(self) -> str:
        return "" if self.source is None else f"{self.source}: "

    @property
    def train(self) -> tuple[ManifestEntry, ...]:
        """The training studies (one latent code each), in manifest order."""
        return tuple(e for e in self.entries if e.split == "train")

    @property
    def val(self) -> tuple[ManifestEntry, ...]:
        """The held-out studies, in manifest order."""
        return tuple(e for e in self.entries if e.split == "val")

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_paths(
        cls,
        train: Sequence[str | os.PathLike[str]],
        val: Sequence[str | os.PathLike[str]] = (),
    ) -> Manifest:
        """A manifest of study files, ids from their stems (which must then be unique)."""
        entries = [ManifestEntry(Path(p).stem, Path(p), "train") for p in train]
        entries += [ManifestEntry(Path(p).stem, Path(p), "val") for p in val]
        return cls(tuple(entries))

    def with_val_fraction(self, fraction: float, seed: int = 0) -> Manifest:
        """A copy with ``round(fraction · n)`` studies (chosen by ``seed``) moved to ``val``.

        At least one study stays in training. Existing ``val`` entries are kept.
        """
        if not (isinstance(fraction, (int, float)) and math.isfinite(fraction)):
            raise ValueError(f"val_fraction must be a number in [0, 1), got {fraction!r}")
        if not 0 <= fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")
        train = [k for k, e in enumerate(self.entries) if e.split == "train"]
        n_val = min(round(fraction * len(self.entries)), len(train) - 1)
        if n_val <= 0:
            return self
        chosen = set(random.Random(int(seed)).sample(train, n_val))
        entries = tuple(
            ManifestEntry(e.study_id, e.path, "val") if k in chosen else e
            for k, e in enumerate(self.entries)
        )
        return Manifest(entries, self.source)


def read_manifest(
    path: str | os.PathLike[str], *, val_fraction: float = 0.0, seed: int = 0
) -> Manifest:
    """Read a cohort manifest: a CSV file or a folder of study files (see the module notes).

    Parameters
    ----------
    path:
        The CSV file or the folder.
    val_fraction:
        When no entry is marked ``val``, hold out this fraction of the studies (chosen by
        ``seed``; at least one study stays in training).
    seed:
        Seed of that choice.

    Returns
    -------
    Manifest
        Paths are absolute (resolved against the CSV's folder).

    Raises
    ------
    FileNotFoundError
        No such file or folder.
    ValueError
        A CSV without a ``path`` column, an empty path, an unknown split, duplicate ids, no
        training study, or a folder without ``*.h5`` files.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob("*.h5") if f.is_file())
        if not files:
            raise ValueError(f"{p}: the folder holds no study files (*.h5)")
        entries = tuple(ManifestEntry(f.stem, f.resolve(), "train") for f in files)
        manifest = Manifest(entries, p)
    elif p.is_file():
        manifest = Manifest(_read_csv(p), p)
    else:
        raise FileNotFoundError(f"{p}: no such manifest (a CSV file or a folder of studies)")
    if not manifest.train:
        raise ValueError(f"{p}: the manifest has no training study (split = train)")
    if not manifest.val and val_fraction > 0:
        manifest = manifest.with_val_fraction(val_fraction, seed)
    return manifest


def _read_csv(path: Path) -> tuple[ManifestEntry, ...]:
    from recon.io.text import read_text

    text = read_text(path)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: the manifest is empty")
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    columns = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
    if "path" not in columns:
        raise ValueError(
            f"{path}: the manifest needs a 'path' column (optional: 'id', 'split'); found {columns}"
        )
    reader.fieldnames = columns
    entries = []
    for k, row in enumerate(reader, start=2):
        file = (row.get("path") or "").strip()
        if not file:
            raise ValueError(f"{path}: line {k}: empty path")
        study = Path(file).expanduser()
        if not study.is_absolute():
            study = (path.parent / study).resolve()
        study_id = (row.get("id") or "").strip() or study.stem
        raw = (row.get("split") or "").strip().lower() or "train"
        if raw not in _SPLIT_ALIASES:
            raise ValueError(f"{path}: line {k}: split must be 'train' or 'val', got {raw!r}")
        entries.append(ManifestEntry(study_id, study, _SPLIT_ALIASES[raw]))
    return tuple(entries)


def write_manifest(
    path: str | os.PathLike[str], manifest: Manifest, *, overwrite: bool = False
) -> None:
    """Write ``manifest`` as a CSV (``id,path,split``), atomically.

    Paths inside the CSV's folder are written relative to it, others as they are.
    """
    from recon.io.atomic import atomic_output

    target = Path(path)
    folder = target.parent.resolve()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "path", "split"])
    for e in manifest.entries:
        file = e.path
        try:
            file = e.path.resolve().relative_to(folder)
        except ValueError:
            pass
        writer.writerow([e.study_id, file.as_posix(), e.split])
    with atomic_output(target, overwrite=overwrite) as tmp:
        Path(tmp).write_text(text.getvalue(), encoding="utf-8")

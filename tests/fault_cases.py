"""The table of fault and bad-input cases run by tests/test_faults.py and benchmarks/fault_table.py.

Each `Case` builds its inputs in an empty folder, optionally a previous output file, and runs one
``spect`` command in-process (typer's CliRunner) with an optional fault hook
(`recon.io.atomic.set_fault_hook`: a full disk, a read-only folder, a signal at a chosen point of
a write). `run_case` checks what every case must give: the documented exit code, one line
``Error: ...`` on stderr naming the problem, no traceback, no temporary left in the folder, and
the previous output byte-identical.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: Bytes of every "previous output" file a case puts in place before the command runs.
PREVIOUS = b"previous output: must survive untouched\n"

Setup = Callable[[Path], list[str]]
Hook = Callable[[str, Path], None]


@dataclass(frozen=True)
class Case:
    """One fault or bad input: ``setup(folder)`` returns the command's arguments."""

    id: str
    category: str
    tried: str
    setup: Setup
    code: int
    match: str
    output: str | None = None  # an output that exists before (PREVIOUS) and must survive
    hook: Hook | None = None


@dataclass(frozen=True)
class Outcome:
    """What a case gave."""

    case: Case
    exit_code: int
    message: str
    problems: tuple[str, ...]


# -- shared inputs (built once per process) --------------------------------------------------

_BASE: dict[str, Path] = {}


def _invoke(*args: object) -> Any:
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def base_files() -> dict[str, Path]:
    """A tiny study (8³, AP/PA) and a 2-iteration MLEM result of it, made once."""
    if not _BASE:
        folder = Path(tempfile.mkdtemp(prefix="spect-faults-"))
        study, result = folder / "study.h5", folder / "result.h5"
        r = _invoke("simulate", "-o", study, "--size", 8, "--counts", 1e5)
        assert r.exit_code == 0, r.output
        r = _invoke("recon", "mlem", study, "-o", result, "--iterations", 2)
        assert r.exit_code == 0, r.output
        _BASE.update(study=study, result=result)
    return _BASE


def _copy(d: Path, name: str) -> Path:
    target = d / f"{name}.h5"
    shutil.copy(base_files()[name], target)
    return target


def _previous(d: Path, name: str) -> None:
    (d / name).write_bytes(PREVIOUS)


# -- fault hooks -----------------------------------------------------------------------------


def raise_errno(code: int, point: str = "write") -> Hook:
    """A hook raising ``OSError(code)`` at ``point`` of every write (a full disk, ...)."""

    def hook(at: str, path: Path) -> None:
        if at == point:
            raise OSError(code, os.strerror(code), os.fspath(path))

    return hook


def send_signal(signum: int, point: str, times: int = 1) -> Hook:
    """A hook sending this process ``signum`` (``times`` times) at ``point`` of a write."""

    def hook(at: str, path: Path) -> None:
        if at == point:
            for _ in range(times):
                os.kill(os.getpid(), signum)

    return hook


# -- building bad inputs ---------------------------------------------------------------------


def _edit(name: str, edit: Callable[[h5py.File], None]) -> Setup:
    def setup(d: Path) -> list[str]:
        path = _copy(d, name)
        with h5py.File(path, "r+") as f:
            edit(f)
        return [path.name]

    return setup


def _replace_dataset(
    where: str, shape: tuple[int, ...], **options: Any
) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        attrs = dict(f[where].attrs)
        del f[where]
        ds = f.create_dataset(where, shape=shape, dtype="f4", **options)
        for k, v in attrs.items():
            ds.attrs[k] = v

    return edit


def _set_value(where: str, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[where][(0,) * f[where].ndim] = value

    return edit


def _set_attr(where: str, name: str, value: Any) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[where].attrs[name] = value

    return edit


def _bytes_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return make


def _nifti(d: Path, name: str = "vol.nii", srow_x: tuple[float, ...] | None = None) -> Path:
    """An 8³ NIfTI volume of 4 mm voxels; ``srow_x``: the sform's first row written into the
    header as given (nibabel refuses to save a singular or NaN affine itself)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    nib.save(image, d / name)
    if srow_x is not None:
        raw = bytearray((d / name).read_bytes())
        raw[252:256] = np.array([0, 1], "<i2").tobytes()  # qform_code 0, sform_code 1
        raw[280:296] = np.asarray(srow_x, "<f4").tobytes()
        (d / name).write_bytes(bytes(raw))
    return d / name


def _nifti_declaring(d: Path, shape: tuple[int, ...], gz: bool) -> Path:
    import nibabel as nib

    path = _nifti(d, "vol.nii.gz" if gz else "vol.nii")
    header = nib.load(path).header.copy()
    header.set_data_shape(shape)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 64
    if gz:
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def _interfile(
    d: Path, *, name: str = "proj.img", data: np.ndarray | None = None, lines: tuple[str, ...] = ()
) -> Path:
    values = np.ones((2, 8, 8), np.float32) if data is None else data
    if name == "proj.img":
        values.tofile(d / "proj.img")
    header = [
        "!INTERFILE :=",
        f"!name of data file := {name}",
        "!number format := float",
        "imagedata byte order := LITTLEENDIAN",
        "!number of bytes per pixel := 4",
        "!matrix size [1] := 8",
        "!matrix size [2] := 8",
        "!number of projections := 2",
        "process status := acquired",
        "scaling factor (mm/pixel) [1] := 4",
        "scaling factor (mm/pixel) [2] := 4",
        "extent of rotation := 360",
        *lines,
        "!END OF INTERFILE :=",
    ]
    (d / "proj.h33").write_text("\n".join(header) + "\n")
    return d / "proj.h33"


def _npy_declaring(d: Path, shape: tuple[int, ...]) -> Path:
    from numpy.lib import format as npy

    path = d / "ap.npy"
    with open(path, "wb") as fh:
        npy.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 64)
    return path


def _pienerf(d: Path, ap: Callable[[Path], Path]) -> list[str]:
    ap_path = ap(d)
    np.save(d / "pa.npy", np.ones((8, 8), np.float32))
    np.save(d / "ct.npy", np.zeros((8, 8, 8), np.float32))
    (d / "m.csv").write_text(
        f"patient_id,ap_path,pa_path,ct_path\np1,{ap_path.name},pa.npy,ct.npy\n"
    )
    return [
        "convert",
        "pienerf",
        "m.csv",
        "-o",
        "out",
        "--spacing-mm",
        "4",
        "4",
        "4",
        "--energy-kev",
        "140",
    ]


def _dicom(d: Path, *, truncate: bool = False, rows: int = 8) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(d / "nm.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "NM"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, 8, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing = [4.0, 4.0]
    ds.PixelData = np.ones((2, 8, 8), np.uint16).tobytes()
    ds.save_as(d / "nm.dcm", enforce_file_format=True)
    if truncate:
        raw = (d / "nm.dcm").read_bytes()
        (d / "nm.dcm").write_bytes(raw[: len(raw) - 60])
    return d / "nm.dcm"


# -- the table -------------------------------------------------------------------------------

_ERRNOS = {
    "ENOSPC": (errno.ENOSPC, "no space left on device"),
    "EDQUOT": (errno.EDQUOT, "disk quota exceeded"),
    "EROFS": (errno.EROFS, "read-only file system"),
    "EACCES": (errno.EACCES, "permission denied"),
    "EIO": (errno.EIO, "cannot write"),
}

#: Commands that write one file, with the output's name: (label, setup).
_WRITERS: dict[str, tuple[str, Setup]] = {
    "simulate": ("s.h5", lambda d: ["simulate", "-o", "s.h5", "--size", "8", "--force"]),
    "recon mlem": (
        "r.h5",
        lambda d: [
            "recon",
            "mlem",
            _copy(d, "study").name,
            "-o",
            "r.h5",
            "--iterations",
            "1",
            "--force",
        ],
    ),
    "project": (
        "p.h5",
        lambda d: ["project", _copy(d, "study").name, "-o", "p.h5", "--force"],
    ),
    "show": ("f.png", lambda d: ["show", _copy(d, "study").name, "-o", "f.png", "--force"]),
    "convert to-nifti": (
        "v.nii",
        lambda d: ["convert", "to-nifti", _copy(d, "result").name, "-o", "v.nii", "--force"],
    ),
    "eval --json": (
        "e.json",
        lambda d: [
            "eval",
            _copy(d, "result").name,
            "--truth",
            _copy(d, "study").name,
            "-o",
            "e.json",
            "--force",
        ],
    ),
}

_SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143)}
if hasattr(signal, "SIGHUP"):
    _SIGNALS["SIGHUP"] = (signal.SIGHUP, 129)


def _cases() -> Iterator[Case]:
    # Disk faults: every errno at the write of every single-file writer.
    for command, (out, setup) in _WRITERS.items():
        for name, (code, text) in _ERRNOS.items():
            yield Case(
                f"disk-{name}-{command.replace(' ', '-')}",
                "disk",
                f"`spect {command}` with {name} on write",
                setup,
                1,
                text,
                out,
                raise_errno(code),
            )
    # A full disk at each point of a write (creating the temporary, writing, fsync, rename).
    for point in ("open", "write", "written", "commit"):
        out, setup = _WRITERS["recon mlem"]
        yield Case(
            f"disk-ENOSPC-at-{point}",
            "disk",
            f"`spect recon mlem`, ENOSPC at the '{point}' step of the write",
            setup,
            1,
            "no space left on device",
            out,
            raise_errno(errno.ENOSPC, point),
        )
    yield Case(
        "disk-ENOSPC-compare-folder",
        "disk",
        "`spect compare` report folder, disk full",
        lambda d: ["compare", _copy(d, "study").name, _copy(d, "result").name, "-o", "rep"],
        1,
        "no space left on device",
        hook=raise_errno(errno.ENOSPC),
    )
    # Signals at each point of a write.
    for sig_name, (signum, code) in _SIGNALS.items():
        for command in ("simulate", "convert to-nifti") if sig_name == "SIGTERM" else ("simulate",):
            out, setup = _WRITERS[command]
            for point in ("open", "write", "written", "commit"):
                yield Case(
                    f"signal-{sig_name}-{command.replace(' ', '-')}-{point}",
                    "signal",
                    f"`spect {command}`, {sig_name} at the '{point}' step of the write",
                    setup,
                    code,
                    f"interrupted by {sig_name}",
                    out,
                    send_signal(signum, point),
                )
    yield Case(
        "signal-SIGINT-twice",
        "signal",
        "`spect simulate`, two Ctrl-C in a row",
        _WRITERS["simulate"][1],
        130,
        "interrupted by SIGINT",
        "s.h5",
        send_signal(signal.SIGINT, "written", times=2),
    )
    yield Case(
        "signal-SIGTERM-compare-folder",
        "signal",
        "`spect compare`, SIGTERM before the report folder is moved into place",
        lambda d: ["compare", _copy(d, "study").name, _copy(d, "result").name, "-o", "rep"],
        143,
        "interrupted by SIGTERM",
        hook=send_signal(signal.SIGTERM, "commit"),
    )

    # Oversized declarations (limits before allocation).
    huge = (16, 200000, 200000)
    yield from (
        Case(
            "size-projections-info",
            "oversized",
            "study declaring projections 16×200000×200000 (`spect info`)",
            lambda d: [
                "info",
                *_edit(
                    "study",
                    _replace_dataset(
                        "/projections/counts", huge, chunks=(1, 64, 64), compression="gzip"
                    ),
                )(d),
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-projections-mlem",
            "oversized",
            "the same study, `spect recon mlem`",
            lambda d: [
                "recon",
                "mlem",
                *_edit(
                    "study",
                    _replace_dataset(
                        "/projections/counts", huge, chunks=(1, 64, 64), compression="gzip"
                    ),
                )(d),
                "-o",
                "r.h5",
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-projections-show",
            "oversized",
            "the same study, `spect show`",
            lambda d: [
                "show",
                *_edit(
                    "study",
                    _replace_dataset(
                        "/projections/counts", huge, chunks=(1, 64, 64), compression="gzip"
                    ),
                )(d),
                "-o",
                "f.png",
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-projections-raw",
            "oversized",
            "uncompressed projections 2×800×800 in a small file (header larger than the file)",
            lambda d: [
                "recon",
                "mlem",
                *_edit("study", _replace_dataset("/projections/counts", (2, 800, 800)))(d),
                "-o",
                "r.h5",
            ],
            1,
            "cannot be stored in the file",
        ),
        Case(
            "size-grid-mlem",
            "oversized",
            "grid of 100000³ voxels (`spect recon mlem`)",
            lambda d: [
                "recon",
                "mlem",
                *_edit("study", _set_attr("/grid", "shape", np.array([100000] * 3)))(d),
                "-o",
                "r.h5",
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-grid-convert",
            "oversized",
            "grid of 100000³ voxels (`spect convert to-nifti`)",
            lambda d: [
                "convert",
                "to-nifti",
                *_edit("result", _set_attr("/grid", "shape", np.array([100000] * 3)))(d),
                "-o",
                "v.nii",
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-activity-eval",
            "oversized",
            "result declaring activity 4000³ (`spect eval`)",
            lambda d: [
                "eval",
                *_edit(
                    "result",
                    _replace_dataset(
                        "/activity", (4000, 4000, 4000), chunks=(8, 64, 64), compression="gzip"
                    ),
                )(d),
                "--truth",
                _copy(d, "study").name,
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-truth-compare",
            "oversized",
            "study declaring a truth 4000³ (`spect compare`)",
            lambda d: [
                "compare",
                *_edit(
                    "study",
                    _replace_dataset(
                        "/truth/activity",
                        (4000, 4000, 4000),
                        chunks=(8, 64, 64),
                        compression="gzip",
                    ),
                )(d),
                _copy(d, "result").name,
                "-o",
                "rep",
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-budget-env",
            "oversized",
            "a normal study with SPECT_MAX_MEMORY_GB=1e-9",
            lambda d: ["recon", "mlem", _copy(d, "study").name, "-o", "r.h5"],
            1,
            "memory limit",
        ),
        Case(
            "size-nifti",
            "oversized",
            "NIfTI header declaring 5000³ float32",
            lambda d: [
                "convert",
                "nifti-to-result",
                _nifti_declaring(d, (5000, 5000, 5000), False).name,
                "-o",
                "r.h5",
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-nifti-raw",
            "oversized",
            "NIfTI header declaring 300³ in a 500-byte .nii",
            lambda d: [
                "convert",
                "nifti-to-result",
                _nifti_declaring(d, (300, 300, 300), False).name,
                "-o",
                "r.h5",
            ],
            1,
            "cannot be stored in the file",
        ),
        Case(
            "size-nifti-gz",
            "oversized",
            "gzipped NIfTI header declaring 1000³ (past gzip's 1032:1 limit)",
            lambda d: [
                "convert",
                "nifti-to-result",
                _nifti_declaring(d, (1000, 1000, 1000), True).name,
                "-o",
                "r.h5",
            ],
            1,
            "compression limit",
        ),
        Case(
            "size-npy",
            "oversized",
            ".npy header declaring 200000×200000",
            lambda d: _pienerf(d, lambda d: _npy_declaring(d, (200000, 200000))),
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-npy-raw",
            "oversized",
            ".npy header declaring 1000×1000 in 200 bytes",
            lambda d: _pienerf(d, lambda d: _npy_declaring(d, (1000, 1000))),
            1,
            "cannot be stored in the file",
        ),
        Case(
            "size-interfile",
            "oversized",
            "Interfile matrix 100000×100000 × 2",
            lambda d: [
                "convert",
                "interfile",
                _set_matrix(d).name,
                "-o",
                "s.h5",
                "--energy-kev",
                "140",
            ],
            1,
            "exceeds the memory limit",
        ),
        Case(
            "size-interfile-header",
            "oversized",
            "a 2 MB binary file given as the Interfile header",
            lambda d: [
                "convert",
                "interfile",
                _bytes_file("big.h33", b"\0" * (2 << 20))(d).name,
                "-o",
                "s.h5",
                "--energy-kev",
                "140",
            ],
            1,
            "not an Interfile header",
        ),
        Case(
            "size-dicom",
            "oversized",
            "DICOM declaring 60000×8 pixels × 60000 frames",
            lambda d: ["convert", "dicom-planar", _dicom_huge(d).name, "-o", "s.h5"],
            1,
            "exceeds the memory limit",
        ),
    )

    # Corrupt or wrong files.
    junk = bytes(range(256)) * 8
    for command, args in (
        ("info", lambda p: ["info", p]),
        ("recon mlem", lambda p: ["recon", "mlem", p, "-o", "r.h5"]),
        ("show", lambda p: ["show", p, "-o", "f.png"]),
        ("eval", lambda p: ["eval", p, "--truth", p]),
    ):
        key = command.replace(" ", "-")
        yield Case(
            f"corrupt-hdf5-random-{key}",
            "corrupt",
            f"random bytes as a study (`spect {command}`)",
            lambda d, a=args: a(_bytes_file("x.h5", junk)(d).name),
            1,
            "not an HDF5 file",
        )
        yield Case(
            f"corrupt-hdf5-empty-{key}",
            "corrupt",
            f"0-byte study (`spect {command}`)",
            lambda d, a=args: a(_bytes_file("x.h5", b"")(d).name),
            1,
            "not an HDF5 file",
        )
        yield Case(
            f"corrupt-hdf5-truncated-{key}",
            "corrupt",
            f"study truncated to half (`spect {command}`)",
            lambda d, a=args: a(_truncated_study(d).name),
            1,
            "x.h5",
        )
    nifti_cases: list[tuple[str, str, Callable[[Path], Path], str]] = [
        ("random", "random bytes as .nii", _bytes_file("v.nii", junk), "not a readable NIfTI"),
        ("empty-gz", "0-byte .nii.gz", _bytes_file("v.nii.gz", b""), "empty file"),
        ("truncated-gz", ".nii.gz cut in half", _truncated_nifti_gz, "truncated or damaged"),
        (
            "text",
            "a text file named .nii",
            _bytes_file("v.nii", b"hello\n" * 100),
            "not a readable NIfTI",
        ),
        (
            "singular",
            "NIfTI with a singular affine (zero voxel size)",
            lambda d: _nifti(d, srow_x=(0.0, 0.0, 0.0, 0.0)),
            "affine is singular",
        ),
        (
            "nan-affine",
            "NIfTI with NaN in the affine",
            lambda d: _nifti(d, srow_x=(np.nan, 0.0, 0.0, 0.0)),
            "NaN",
        ),
    ]
    for key, tried, make, text in nifti_cases:
        yield Case(
            f"corrupt-nifti-{key}",
            "corrupt",
            tried + " (`spect convert nifti-to-result`)",
            lambda d, m=make: ["convert", "nifti-to-result", m(d).name, "-o", "r.h5"],
            1,
            text,
        )
    yield Case(
        "corrupt-nifti-anatomy",
        "corrupt",
        "random bytes as --anatomy of `spect recon organs`",
        lambda d: [
            "recon",
            "organs",
            _copy(d, "study").name,
            "--anatomy",
            _bytes_file("seg.nii.gz", junk)(d).name,
            "-o",
            "o.h5",
        ],
        1,
        "seg.nii.gz",
    )
    yield Case(
        "corrupt-dicom-random",
        "corrupt",
        "random bytes as DICOM",
        lambda d: ["convert", "dicom-planar", _bytes_file("x.dcm", junk)(d).name, "-o", "s.h5"],
        1,
        "x.dcm",
    )
    yield Case(
        "corrupt-dicom-truncated",
        "corrupt",
        "DICOM cut 60 bytes short",
        lambda d: ["convert", "dicom-planar", _dicom(d, truncate=True).name, "-o", "s.h5"],
        1,
        "nm.dcm",
    )
    yield Case(
        "corrupt-dicom-empty",
        "corrupt",
        "0-byte DICOM",
        lambda d: ["convert", "dicom-planar", _bytes_file("x.dcm", b"")(d).name, "-o", "s.h5"],
        1,
        "x.dcm",
    )
    interfile_cases: list[tuple[str, str, Setup, str]] = [
        (
            "garbage",
            "random bytes as the header",
            lambda d: [_bytes_file("proj.h33", junk)(d).name],
            "proj.h33",
        ),
        (
            "missing-data",
            "header naming a missing data file",
            lambda d: [_interfile(d, name="none.img").name],
            "not found",
        ),
        (
            "short-data",
            "data file shorter than the header says",
            lambda d: [_interfile(d, data=np.ones((1, 8, 8), np.float32)).name],
            "bytes",
        ),
        (
            "nan",
            "data file holding NaN",
            lambda d: [_interfile(d, data=np.full((2, 8, 8), np.nan, np.float32)).name],
            "NaN/Inf",
        ),
        (
            "outside",
            "header naming ../outside.img",
            lambda d: [str(_interfile_outside(d, "../outside.img"))],
            "outside the header's folder",
        ),
        (
            "absolute",
            "header naming an absolute path elsewhere",
            lambda d: [str(_interfile_outside(d, None))],
            "outside the header's folder",
        ),
        (
            "bad-number",
            "header with a non-numeric matrix size",
            lambda d: [_bad_matrix(d).name],
            "matrix size",
        ),
    ]
    for key, tried, setup, text in interfile_cases:
        yield Case(
            f"corrupt-interfile-{key}",
            "corrupt",
            tried + " (`spect convert interfile`)",
            lambda d, s=setup: ["convert", "interfile", *s(d), "-o", "s.h5", "--energy-kev", "140"],
            1,
            text,
        )
    npy_cases: list[tuple[str, str, Callable[[Path], Path], str]] = [
        (
            "text",
            "a text file named .npy",
            _bytes_file("ap.npy", b"1 2 3\n4 5 6\n"),
            "not a NumPy .npy file",
        ),
        ("object", "an object (pickled) .npy", _object_npy, "Python objects"),
        ("truncated", "a .npy cut short", _truncated_npy, "cannot be stored in the file"),
    ]
    for key, tried, make, text in npy_cases:
        yield Case(
            f"corrupt-npy-{key}",
            "corrupt",
            tried + " (`spect convert pienerf`)",
            lambda d, m=make: _pienerf(d, m),
            1,
            text,
        )
    yield Case(
        "corrupt-csv-latin1",
        "corrupt",
        "non-UTF-8 CSV manifest (`spect convert pienerf`)",
        lambda d: _latin1_manifest(d),
        1,
        "not UTF-8 text",
    )
    yield Case(
        "corrupt-toml-latin1",
        "corrupt",
        "non-UTF-8 --config TOML (`spect recon nerf`)",
        lambda d: [
            "recon",
            "nerf",
            _copy(d, "study").name,
            "-o",
            "n.h5",
            "--config",
            _bytes_file("c.toml", "lr = 0.01 # caf\xe9\n".encode("latin-1"))(d).name,
        ],
        1,
        "not UTF-8 text",
    )
    yield Case(
        "corrupt-toml-syntax",
        "corrupt",
        "invalid --config TOML (`spect recon nerf`)",
        lambda d: [
            "recon",
            "nerf",
            _copy(d, "study").name,
            "-o",
            "n.h5",
            "--config",
            _bytes_file("c.toml", b"lr = = 1\n")(d).name,
        ],
        1,
        "not valid TOML",
    )
    yield Case(
        "corrupt-checkpoint-junk",
        "corrupt",
        "random bytes as --resume checkpoint",
        lambda d: [
            "recon",
            "nerf",
            _copy(d, "study").name,
            "-o",
            "n.h5",
            "--resume",
            _bytes_file("c.pt", junk)(d).name,
        ],
        1,
        "not a loadable spect checkpoint",
    )
    yield Case(
        "size-checkpoint",
        "oversized",
        "a --resume checkpoint whose zip entry declares 4 GB",
        lambda d: [
            "recon",
            "nerf",
            _copy(d, "study").name,
            "-o",
            "n.h5",
            "--resume",
            _checkpoint_declaring(d, 0xFFFFFFFF).name,
        ],
        1,
        "checkpoint tensors: declared shape",
    )
    yield Case(
        "corrupt-checkpoint-code",
        "corrupt",
        "a checkpoint holding a Python object (code could run on load)",
        lambda d: [
            "recon",
            "nerf",
            _copy(d, "study").name,
            "-o",
            "n.h5",
            "--resume",
            _evil_checkpoint(d).name,
        ],
        1,
        "refused",
    )

    # Numbers.
    for key, where, value, text in (
        ("counts-3e38", "/projections/counts", 3e38, "above 1e+15"),
        ("counts-nan", "/projections/counts", np.nan, "NaN/Inf"),
        ("counts-inf", "/projections/counts", np.inf, "NaN/Inf"),
        ("counts-negative", "/projections/counts", -1.0, "negative"),
        ("counts-2e15", "/projections/counts", 2e15, "above 1e+15"),
        ("mu-nan", "/attenuation/mu", np.nan, "NaN/Inf"),
        ("truth-nan", "/truth/activity", np.nan, "NaN/Inf"),
    ):
        yield Case(
            f"numeric-{key}",
            "numeric",
            f"study with {value!r} in {where} (`spect recon mlem`)",
            lambda d, w=where, v=value: [
                "recon",
                "mlem",
                *_edit("study", _set_value(w, v))(d),
                "-o",
                "r.h5",
            ],
            1,
            text,
        )
    yield Case(
        "numeric-result-nan",
        "numeric",
        "result with NaN activity (`spect eval`)",
        lambda d: [
            "eval",
            *_edit("result", _set_value("/activity", np.nan))(d),
            "--truth",
            _copy(d, "study").name,
        ],
        1,
        "NaN/Inf",
    )

    # Outputs.
    yield from (
        Case(
            "output-same-as-input-mlem",
            "output",
            "`spect recon mlem s.h5 -o s.h5 --force`",
            lambda d: ["recon", "mlem", _copy(d, "study").name, "-o", "study.h5", "--force"],
            1,
            "is also the input",
        ),
        Case(
            "output-same-as-input-project",
            "output",
            "`spect project s.h5 -o s.h5 --force`",
            lambda d: ["project", _copy(d, "study").name, "-o", "study.h5", "--force"],
            1,
            "is also the input",
        ),
        Case(
            "output-hard-link-of-input",
            "output",
            "output a hard link of the input, --force",
            lambda d: ["recon", "mlem", _copy(d, "study").name, "-o", _link(d).name, "--force"],
            1,
            "is also the input",
        ),
        Case(
            "output-exists",
            "output",
            "existing output without --force",
            lambda d: ["recon", "mlem", _copy(d, "study").name, "-o", "r.h5"],
            1,
            "already exists",
            "r.h5",
        ),
        Case(
            "output-folder-missing",
            "output",
            "-o in a folder that does not exist",
            lambda d: ["recon", "mlem", _copy(d, "study").name, "-o", "no/r.h5"],
            1,
            "does not exist",
        ),
        Case(
            "output-is-folder",
            "output",
            "-o naming a folder",
            lambda d: ["recon", "mlem", _copy(d, "study").name, "-o", _mkdir(d, "r.h5")],
            1,
            "is a folder",
        ),
        Case(
            "output-parent-is-file",
            "output",
            "-o under a file (x.h5/r.h5)",
            lambda d: ["recon", "mlem", _copy(d, "study").name, "-o", "study.h5/r.h5"],
            1,
            "is a file, not a folder",
        ),
        Case(
            "output-out-dir-is-file",
            "output",
            "`spect recon nerf --out-dir` naming a file",
            lambda d: [
                "recon",
                "nerf",
                _copy(d, "study").name,
                "-o",
                "n.h5",
                "--out-dir",
                _copy(d, "result").name,
                "--steps",
                "1",
            ],
            1,
            "result.h5 is a file, not a folder",
        ),
        Case(
            "output-compare-is-file",
            "output",
            "`spect compare -o` naming a file",
            lambda d: [
                "compare",
                _copy(d, "study").name,
                _copy(d, "result").name,
                "-o",
                "result.h5",
            ],
            1,
            "not a folder",
        ),
        Case(
            "output-read-only-folder",
            "output",
            "read-only folder (EACCES creating the "
            "temporary): message names the output, not the temporary",
            _WRITERS["simulate"][1],
            1,
            "s.h5: cannot write: permission denied",
            "s.h5",
            raise_errno(errno.EACCES, "open"),
        ),
    )


def _set_matrix(d: Path) -> Path:
    header = _interfile(d)
    text = header.read_text().replace("!matrix size [1] := 8", "!matrix size [1] := 100000")
    header.write_text(text.replace("!matrix size [2] := 8", "!matrix size [2] := 100000"))
    return header


def _bad_matrix(d: Path) -> Path:
    header = _interfile(d)
    header.write_text(header.read_text().replace("!matrix size [1] := 8", "!matrix size [1] := x"))
    return header


def _interfile_outside(d: Path, name: str | None) -> Path:
    inner = d / "inner"
    inner.mkdir()
    np.ones((2, 8, 8), np.float32).tofile(d / "outside.img")
    target = name if name is not None else str((d / "outside.img").resolve())
    path = _interfile(inner, name="other.img")
    path.write_text(path.read_text().replace("other.img", target))
    return Path("inner") / path.name


def _dicom_huge(d: Path) -> Path:
    path = _dicom(d)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows, ds.NumberOfFrames = 60000, 60000
    ds.save_as(path)
    return path


def _truncated_study(d: Path) -> Path:
    raw = base_files()["study"].read_bytes()
    (d / "x.h5").write_bytes(raw[: len(raw) // 2])
    return d / "x.h5"


def _truncated_nifti_gz(d: Path) -> Path:
    import nibabel as nib

    nib.save(
        nib.Nifti1Image(
            np.random.default_rng(0).random((16, 16, 16)).astype(np.float32),
            np.diag([4.0, 4.0, 4.0, 1.0]),
        ),
        d / "v.nii.gz",
    )
    raw = (d / "v.nii.gz").read_bytes()
    (d / "v.nii.gz").write_bytes(raw[: len(raw) // 2])
    return d / "v.nii.gz"


def _object_npy(d: Path) -> Path:
    np.save(d / "ap.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return d / "ap.npy"


def _truncated_npy(d: Path) -> Path:
    np.save(d / "ap.npy", np.ones((64, 64), np.float32))
    raw = (d / "ap.npy").read_bytes()
    (d / "ap.npy").write_bytes(raw[:1000])
    return d / "ap.npy"


def _latin1_manifest(d: Path) -> list[str]:
    args = _pienerf(
        d, lambda d: (np.save(d / "ap.npy", np.ones((8, 8), np.float32)), d / "ap.npy")[1]
    )
    (d / "m.csv").write_bytes(
        "patient_id,ap_path,pa_path,ct_path\nJos\xe9,ap.npy,pa.npy,ct.npy\n".encode("latin-1")
    )
    return args


def _checkpoint_declaring(d: Path, size: int) -> Path:
    """A small zip (as torch writes checkpoints) whose central directory declares an entry of
    ``size`` uncompressed bytes."""
    import zipfile

    path = d / "big.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data/0", b"\0" * 64)
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the entry's central directory header
    data[central + 24 : central + 28] = size.to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(data))
    return path


def _evil_checkpoint(d: Path) -> Path:
    import torch

    torch.save({"format": "spect-nerf-checkpoint", "version": 1, "x": _Evil()}, d / "c.pt")
    return d / "c.pt"


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def _link(d: Path) -> Path:
    os.link(d / "study.h5", d / "alias.h5")
    return d / "alias.h5"


def _mkdir(d: Path, name: str) -> str:
    (d / name).mkdir()
    return name


CASES: tuple[Case, ...] = tuple(_cases())


# -- running a case --------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(case: Case) -> Iterator[None]:
    """The case's fault hook and environment; signal handlers restored afterwards."""
    from recon.io.atomic import set_fault_hook

    handlers = {s: signal.getsignal(s) for s in _stop_signals()}
    before = os.environ.get("SPECT_MAX_MEMORY_GB")
    if case.id == "size-budget-env":
        os.environ["SPECT_MAX_MEMORY_GB"] = "1e-9"
    previous = set_fault_hook(case.hook)
    try:
        yield
    finally:
        set_fault_hook(previous)
        for s, h in handlers.items():
            signal.signal(s, h)
        if before is None:
            os.environ.pop("SPECT_MAX_MEMORY_GB", None)
        else:
            os.environ["SPECT_MAX_MEMORY_GB"] = before


def _stop_signals() -> tuple[int, ...]:
    from recon.io.signals import STOP_SIGNALS

    return STOP_SIGNALS


def leftovers(folder: Path) -> list[str]:
    """Temporaries and staging folders left anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".tmp-" in p.name)


def run_case(case: Case, folder: Path) -> Outcome:
    """Run ``case`` in the empty ``folder`` and check it; `Outcome.problems` lists failures."""
    folder.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        args = case.setup(folder)
        if case.output is not None:
            _previous(folder, case.output)
        with _environment(case):
            result = _invoke(*args)
    finally:
        os.chdir(cwd)
    problems: list[str] = []
    stderr = result.stderr.strip()
    lines = stderr.splitlines()
    message = lines[-1] if lines else ""
    if result.exit_code != case.code:
        problems.append(f"exit code {result.exit_code}, expected {case.code}")
    if result.exit_code is not None and result.exit_code < 0:
        problems.append("crashed")
    if "Traceback" in result.output or (
        result.exception and not isinstance(result.exception, SystemExit)
    ):
        problems.append(f"traceback or uncaught {type(result.exception).__name__}")
    if len(lines) != 1 or not message.startswith("Error: "):
        problems.append(f"stderr is not one 'Error:' line: {stderr[:300]!r}")
    if case.match not in message:
        problems.append(f"message lacks {case.match!r}: {message[:300]!r}")
    left = leftovers(folder)
    if left:
        problems.append(f"leftovers: {left}")
    if case.output is not None and (folder / case.output).read_bytes() != PREVIOUS:
        problems.append(f"previous {case.output} was changed")
    return Outcome(case, int(result.exit_code or 0), message, tuple(problems))

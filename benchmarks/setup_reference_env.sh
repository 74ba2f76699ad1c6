#!/usr/bin/env bash
# Build (or bring up to date) the virtual environment that benchmarks/bench_projector.py runs in:
# PyTomography 3.4.0 + kornia 0.9.0 on the CPU build of torch 2.13.0, plus this repository
# installed in editable mode so that `import spectproj` works beside it.
#
#   bash benchmarks/setup_reference_env.sh
#   benchmarks/.env-pytomography/bin/python benchmarks/bench_projector.py
#
# Idempotent: run it again at any time; it only installs what is missing or at another version.
# Set ENV_DIR to put the environment elsewhere (default: benchmarks/.env-pytomography, git-ignored).
#
# Why not a plain `pip install pytomography==3.4.0`? Its declared dependencies pull in
# matplotlib, uproot/awkward, torchrbf and the GUI build of OpenCV, none of which the projector
# needs. PyTomography is therefore installed with --no-deps, and only the packages that
# `pytomography.projectors.SPECT` imports (directly or through pytomography.io) are added, with
# the headless OpenCV build standing in for opencv-python (rt-utils imports cv2 at import time).
# torch is pinned by a constraint on every pip call, so nothing can replace the CPU build with a
# multi-GB CUDA one.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${ENV_DIR:-$REPO/benchmarks/.env-pytomography}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

if [[ ! -x "$ENV_DIR/bin/python" ]]; then
    echo "creating $ENV_DIR"
    "$PYTHON" -m venv "$ENV_DIR"
fi
PY="$ENV_DIR/bin/python"

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"

pip_install() {
    "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"
}

# 1. torch first, alone (the CPU wheel: a local one if pip's find-links has it, else PyPI's).
pip_install "torch==$TORCH_VERSION"

# 2. PyTomography and rt-utils without their declared dependencies (see above).
echo "note: pip's complaints that pytomography needs matplotlib/torchrbf/uproot and rt-utils needs"
echo "      opencv-python/dataclasses are expected: those are left out on purpose (see the header)."
pip_install --no-deps "pytomography==3.4.0" "rt-utils==1.2.7"

# 3. What they import, and what spectproj needs (numpy scipy h5py typer).
pip_install \
    "kornia==0.9.0" \
    "pydicom==3.0.2" \
    "opencv-python-headless==5.0.0.93" \
    "nibabel==5.4.2" \
    "pandas==3.1.1" \
    "fft-conv-pytorch==1.2.0" \
    numpy scipy h5py typer

# 4. This repository, editable, without its dependencies (they are all above).
pip_install --no-deps -e "$REPO"

# 5. Check: torch is still the pinned CPU build, and PyTomography's SPECT projector imports.
"$PY" - "$TORCH_VERSION" <<'EOF'
import sys
import warnings

import torch

want = sys.argv[1]
if torch.__version__.split("+")[0] != want:
    sys.exit(f"torch {torch.__version__} installed, expected {want}")
from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta  # noqa: E402,F401
from pytomography.projectors.SPECT import SPECTSystemMatrix  # noqa: E402,F401
from pytomography.transforms.SPECT import SPECTAttenuationTransform  # noqa: E402,F401

warnings.resetwarnings()
try:
    import spectproj  # noqa: F401
    spect = "importable"
except ImportError as exc:  # the benchmark's --pytomography-only mode still works
    spect = f"NOT importable ({exc})"
import pytomography  # noqa: E402

print(f"ok: torch {torch.__version__}, pytomography {pytomography.__version__}, spectproj {spect}")
EOF

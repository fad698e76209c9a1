#!/usr/bin/env bash
# Create .venv from this repository's own files (idempotent). torch is pinned here to the CPU build that
# lies on this machine's disk; pyproject.toml keeps a range so other machines may use other builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tgalore-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/bootstrap.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  # The Well's dataset class, for datamodules/well.py and its tests. --no-deps: the-well 1.2 pins fsspec==2024.10.0
  # exactly, which conflicts with lightning's fsspec; its other requirements (h5py, numpy, pyyaml, torch, fsspec)
  # are installed above, and local reads work with the newer fsspec (tests/datamodules/test_well.py). einops is
  # its one import not otherwise installed. See pyproject.toml's `well` extra.
  .venv/bin/python -m pip install --quiet --no-deps "the-well>=1.2,<2" "einops>=0.8"
  touch "$stamp"
fi

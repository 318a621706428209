#!/usr/bin/env bash
# Create .venv with adamk and its test dependencies. PyTorch comes first as torch==2.13.0,
# the CPU build this machine keeps on disk, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

#!/usr/bin/env bash
# Create .venv with adamk and its test dependencies.
#
#   bash scripts/setup.sh            # the versions in constraints.txt (what CI runs)
#   bash scripts/setup.sh --latest   # the newest releases the registry serves (a fresh .venv-latest)
#   bash scripts/setup.sh --freeze [VENV]   # write VENV's versions (default .venv) into constraints.txt
#
# Moving to newer releases: bash scripts/setup.sh --latest && .venv-latest/bin/python -m pytest -q -n 2
# and, once that passes, bash scripts/setup.sh --freeze .venv-latest; commit constraints.txt.
#
# PyTorch comes first as torch==2.13.0, the CPU build this machine keeps on disk, so nothing
# pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv constraints=(-c constraints.txt)
case "${1:-}" in
  "") ;;
  --latest) venv=.venv-latest constraints=() ;;
  --freeze)
    { sed -n '1,/^$/p' constraints.txt | grep '^#'
      "${2:-.venv}/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/^torch==\(.*\)+cpu$/torch==\1/'
    } > constraints.txt.new && mv constraints.txt.new constraints.txt
    echo "wrote constraints.txt"; exit 0 ;;
  *) echo "usage: bash scripts/setup.sh [--latest | --freeze]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "${constraints[@]}" -e ".[test,mlir]"
if [ "$venv" != .venv ]; then
  echo "installed the newest releases into $venv: run $venv/bin/python -m pytest -q -n 2"
fi

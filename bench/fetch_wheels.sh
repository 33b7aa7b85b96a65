#!/usr/bin/env bash
# Refill bench/wheels/ with the wheels bench/gpu.sh installs, offline, on the GPU machine that lacks them:
# jaxft's required ml_collections, tensorboardX and seqeval. All three are pure Python (py3-none-any, ~180 KB
# together) and committed, so a GPU run needs nothing from here; rerun this only to change a version.
#
#   bench/fetch_wheels.sh
#
# Needs the package index (run it here, never on the GPU machine). Versions: those the project's .venv runs
# with. Their own dependencies (absl-py, PyYAML, protobuf, numpy, packaging, scikit-learn) are in the GPU
# machine's image already, as are pytest, matplotlib and torch: --no-deps everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
dest=bench/wheels
mkdir -p "$dest"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dest" ml_collections==1.1.0 tensorboardX==2.6.5
# seqeval has only an sdist on the index: build its (pure-Python) wheel here.
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$dest" seqeval==1.2.2
ls -l "$dest"

#!/usr/bin/env bash
# Builds the wheels that carry the peer libraries (learn2learn, higher, TorchOpt) to a Python 3.12
# x86-64 machine with no network that already has torch, torchvision, numpy, scipy, requests, tqdm and
# cloudpickle. learn2learn 0.2.0 ships Cython output that no longer compiles on 3.12 (longintrepr.h),
# so its .pyx files are re-cythonized here; gym 0.26.2 ships only an sdist. Everything else is a
# pinned wheel from PyPI. Usage: benchmarks/build_peer_wheels.sh [OUT_DIR=.whl]
set -euo pipefail

OUT=$(realpath -m "${1:-.whl}")
PY312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

"$PY312" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q "cython>=3.1" setuptools wheel

# learn2learn: drop the shipped .c files and cythonize afresh (setup.py does so under build_ext).
$PIP download -q --no-deps --no-binary :all: learn2learn==0.2.0 gym==0.26.2 -d "$WORK/sdist"
tar xzf "$WORK/sdist/learn2learn-0.2.0.tar.gz" -C "$WORK"
(
  cd "$WORK/learn2learn-0.2.0"
  rm -rf .eggs learn2learn/data/*.c
  CFLAGS="-g0 -O2" LDFLAGS="-s" "$WORK/venv/bin/python" setup.py -q build_ext bdist_wheel -d "$OUT" >/dev/null
)
# gym (pure Python, sdist only).
$PIP wheel -q --no-deps --no-build-isolation "$WORK/sdist/gym-0.26.2.tar.gz" -w "$OUT"

# The rest: wheels for CPython 3.12 on manylinux x86-64. qpth (learn2learn imports it lazily) is left out.
$PIP download -q --no-deps --only-binary :all: --implementation cp --python-version 3.12 --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  higher==0.2.1 torchopt==0.7.3 optree==0.20.0 graphviz==0.21 gym-notices==0.1.0 -d "$OUT"

ls -l "$OUT"
du -sh "$OUT"

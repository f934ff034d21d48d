#!/usr/bin/env bash
# Wheels the GPU check needs beyond the GPU machine's python (see benchmarks/gpu_check.sh): rasterio, shapely,
# pyproj, affine and their small dependencies (the set ../shared/tools/gpu-wheels.sh downloads for the main
# checkout, same versions) plus the fast map encoders (isal, zstandard, the versions `make venv` installs),
# cp312 manylinux x86-64, into the git-ignored .whl/ of this checkout (a worktree too). Run here, once, before
# a GPU session. Exact versions: a rerun must not leave two versions of one package in .whl/ (pip --no-index
# would refuse them).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .whl
for spec in rasterio==1.4.4 shapely==2.2.0 pyproj==3.7.2 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2 \
    isal==1.9.1 zstandard==0.25.0 py-spy==0.4.3; do  # py-spy: benchmarks/translate_profile.py's thread profiles
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$spec"
done
ls .whl

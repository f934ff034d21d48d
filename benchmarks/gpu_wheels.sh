#!/usr/bin/env bash
# Wheels the GPU check needs beyond the GPU machine's python (see benchmarks/gpu_check.sh): the shared set
# (rasterio, shapely, pyproj, affine, ...) plus the fast map encoders (isal, zstandard), cp312 manylinux x86-64,
# into the git-ignored .whl/ of this checkout. Run here, once, before a GPU session.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/tools/gpu-wheels.sh
for spec in isal zstandard; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
ls .whl

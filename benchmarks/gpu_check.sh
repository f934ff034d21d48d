#!/usr/bin/env bash
# The whole GPU check in one go, for a CUDA machine that has python3 with torch, numpy, click, tqdm, pillow and
# pytest but not rasterio/shapely/pyproj/affine and no package access (see README "GPU check").
#
#   here, once:        benchmarks/gpu_wheels.sh               # fills the git-ignored .whl/
#   on the GPU machine, from the project root, with .whl/ carried along:
#                      OUT=/some/folder bash benchmarks/gpu_check.sh [quick]
#
# Writes under $OUT (default ./gpu-check): env.txt, tests.log, translate_bench.log, train_bench.log.
# "quick" runs the CUDA tests and smaller benchmarks only (for a second try when time is short).
# DEVICE=cpu runs the same script on a CPU as a dry run (tiny sizes; the CUDA tests skip).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import rasterio" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, rasterio, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'rasterio', rasterio.__version__, 'gdal', rasterio.__gdal_version__, 'numpy', numpy.__version__)"
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
status=0
step() {  # step NAME TIMEOUT COMMAND...: run, log to $OUT/NAME.log, remember failures, keep going
  local name=$1 limit=$2; shift 2
  echo "== $name"
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc in $((SECONDS - started)) s"
  tail -n 40 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}
python3 -m geo_sat2map --help > /dev/null || exit 1
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then
  SIZE=1024; COG=2048; WIDTH="--width 8"; TRAIN="--table --tiles 4 --ngf 8 --batches 1 2 --workers 0"
else
  SIZE=16384; COG=16384; WIDTH=""; TRAIN=""
fi
if [ "${1:-}" = quick ]; then
  step tests 240 python3 -m pytest -q -x -p no:cacheprovider -m cuda tests
  step translate_bench 240 python3 benchmarks/translate_bench.py --device "$DEVICE" --suite gpu $WIDTH \
    --size $((SIZE / 2)) --seconds 2
  exit $status
fi
step tests 300 python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" tests
step translate_bench 300 python3 benchmarks/translate_bench.py --device "$DEVICE" --suite gpu $WIDTH --size $SIZE \
  --seconds 3
step cog_bench 120 python3 benchmarks/cog_bench.py --size $COG --threads 4,8,16 --deflate-levels 1 --skip-gdal
step train_bench 240 python3 benchmarks/train_bench.py --device "$DEVICE" --baseline $TRAIN
exit $status

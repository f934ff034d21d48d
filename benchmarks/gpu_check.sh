#!/usr/bin/env bash
# The GPU check in one device call (at most 600 s; the machine is lent for 15 min in all, start-up included),
# for a CUDA machine that has python3 with torch, numpy, click, tqdm, pillow and pytest but not
# rasterio/shapely/pyproj/affine and no package access (see README "GPU check").
#
#   here, once:        benchmarks/gpu_wheels.sh               # fills the git-ignored .whl/ (exact versions)
#   on the GPU machine, from the project root, with .whl/ carried along:
#                      OUT=/some/folder bash benchmarks/gpu_check.sh          # default: <= 500 s on an H200
#                      OUT=/some/folder bash benchmarks/gpu_check.sh suite    # the CPU suite, GPU hidden
#
# Default: the `-m cuda` tests on the GPU, the translate bench at 16384² (default options and --compile), the
# train bench (batch 1 and 16, ngf/ndf 64), the palette's share of the kernel time (8192², torch.profiler) and the
# COG bench. Every step has a time limit; the limits add up to 485 s. Writes $OUT/summary.md (default OUT ./gpu-check), the one table of every figure the GPU issues ask for
# (gpu_summary.py), and $OUT/logs.tgz: env.txt, one NAME.log per step, translate.json, train.json, snap.json,
# cog.json and steps.tsv.
# "suite" runs the CPU test suite with CUDA_VISIBLE_DEVICES= (about 300 s; a call of its own).
# DEVICE=cpu runs the same script on a CPU as a dry run (tiny sizes; the CUDA tests skip).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
# Every log and JSON goes to $OUT/work, packed into $OUT/logs.tgz at the end: the device tool brings back at most
# 8 files from $OUT. summary.md stays beside it.
FINAL=$OUT
OUT=$FINAL/work
mkdir -p "$OUT"
pack() { tar -czf "$FINAL/logs.tgz" -C "$FINAL" work && rm -rf "$FINAL/work"; }
trap pack EXIT
export PYTHONUNBUFFERED=1
if ! python3 -c "import rasterio" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, rasterio, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'rasterio', rasterio.__version__, 'gdal', rasterio.__gdal_version__, 'numpy', numpy.__version__)"
  echo "$(nproc) CPUs"
  df -hT /tmp | tail -n 1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
status=0
: > "$OUT/steps.tsv"
STEPS=${STEPS:-tests translate_bench train_bench snap_kernels cog_bench}  # a subset for a rerun, e.g. STEPS="translate_bench"
step() {  # step NAME LIMIT COMMAND...: run, log to $OUT/NAME.log, record exit status and seconds, keep going
  local name=$1 limit=$2; shift 2
  case " $STEPS cpu_suite " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name (limit $limit s)"
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >> "$OUT/steps.tsv"
  echo "   exit $rc in $((SECONDS - started)) s"
  tail -n 25 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}
python3 -m geo_sat2map --help > /dev/null || exit 1
if [ "${1:-}" = suite ]; then
  step cpu_suite 560 env CUDA_VISIBLE_DEVICES= python3 -m pytest -q -p no:cacheprovider -m "not slow" tests
  exit $status
fi
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then
  SIZE=1024; COG=2048; WIDTH="--width 8"; TRAIN="--tiles 4 --ngf 8 --workers 0"
else
  SIZE=16384; COG=8192; WIDTH=""; TRAIN=""  # a 16384² COG image takes ~30 s to make before it is timed
fi
step tests 140 python3 -m pytest -q -p no:cacheprovider -m cuda tests
step translate_bench 170 env TORCH_LOGS=recompiles,graph_breaks python3 benchmarks/translate_bench.py --device "$DEVICE" --suite check $WIDTH \
  --size $SIZE --seconds 2 --json "$OUT/translate.json"
step train_bench 80 python3 benchmarks/train_bench.py --device "$DEVICE" --table --batches 1 16 $TRAIN \
  --json "$OUT/train.json"
step snap_kernels 60 python3 benchmarks/translate_profile.py --device "$DEVICE" --snap-share $WIDTH --size $((SIZE / 2)) \
  --out "$OUT/profile" --json "$OUT/snap.json"
step cog_bench 35 python3 benchmarks/cog_bench.py --size $COG --threads "$(nproc)" --deflate-levels 1 \
  --engines isa-l,zlib --zstd-levels "" --skip-gdal --json "$OUT/cog.json"
python3 benchmarks/gpu_summary.py "$OUT" > "$FINAL/summary.md"
cat "$FINAL/summary.md"
exit $status

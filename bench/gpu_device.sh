#!/usr/bin/env bash
# The GPU check on the lent GPU machine, in one call (bench/README.md, issue 27). That machine is offline and
# has its own python3 (3.12, torch 2.11, transformers 5.17); this installs the kit's wheels (bench/gpu_kit.py,
# carried as .whl) into a temporary target with --no-index --no-deps, puts src/ on PYTHONPATH (torch and
# transformers stay the image's), runs bench/gpu.py inside its budget and leaves in $OUT:
#   gpu_check.json (every figure), gpu_check.md (the summary, also printed last), gpu_log.txt (the log).
# Dry run here: PYTHON=.venv/bin/python GPU_KIT=.whl-cp311 OUT=/tmp/out bash bench/gpu_device.sh --device cpu --length 300
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_out}"
KIT="${GPU_KIT:-.whl}"
PY="${PYTHON:-python3}"
BUDGET="${GPU_BUDGET:-450}"
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
SITE="$(mktemp -d /tmp/unipo-site-XXXXXX)"
{
  echo "gpu_device.sh: $(date -u '+%F %T UTC'), $("$PY" --version 2>&1), kit $KIT ($(ls "$KIT"/*.whl 2>/dev/null | wc -l) wheels)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
} 2>&1 | tee "$LOG"
if ! ls "$KIT"/*.whl >/dev/null 2>&1; then
  echo "gpu_device.sh: no wheels in $KIT: build the kit with bench/gpu_kit.py and carry its folder" | tee -a "$LOG"
  exit 3
fi
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$KIT"/*.whl >>"$LOG" 2>&1; then
  tail -5 "$LOG"
  echo "gpu_device.sh: the kit's wheels did not install into $SITE (log: $LOG): rebuild it with bench/gpu_kit.py" | tee -a "$LOG"
  exit 3
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
# the budget bounds every part; the outer timeout only guards against a hang outside them
timeout --kill-after=10 $((${BUDGET%.*} + 60)) "$PY" bench/gpu.py --budget "$BUDGET" --kit "$KIT" \
  --out "$OUT/gpu_check.json" "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
rm -rf "$SITE"
if [ "$(stat -c %s "$LOG")" -gt 15000000 ]; then tail -c 15000000 "$LOG" >"$LOG.tmp" && mv "$LOG.tmp" "$LOG"; fi
echo
cat "$OUT/gpu_check.md" 2>/dev/null || echo "gpu_device.sh: no summary written (exit $status; log: $LOG)"
exit "$status"

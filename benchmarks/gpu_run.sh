#!/usr/bin/env bash
# The whole GPU benchmark and every GPU-only test, in one command, in under 8 minutes:
#   bash benchmarks/gpu_run.sh            (on the CUDA machine; results in $OUT/gpu, else .cache/gpu-run/gpu)
#   bash benchmarks/gpu_run.sh --dry-run  (anywhere: CPU, tiny models, checks the script's logic)
# Every part is independent; results.json and report.md are rewritten after each measurement, so a run
# stopped by its time limit still leaves what it measured. Carried wheels (.whl/*.whl: soundfile, soxr)
# are installed into /tmp/site first when present.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
DEST="${OUT:-$PWD/.cache/gpu-run}/gpu"
mkdir -p "$DEST"
export PYTHONPATH="$PWD"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
fi
echo "[gpu_run] $(date -u +%FT%TZ) python: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$DEST/nvidia-smi.txt"

# 1. the benchmark (hard stop at 430 s; its own budget is 380 s)
timeout -k 10 430 "$PY" -m benchmarks.gpu_bench --out "$DEST" --budget-s 380 "$@" 2>&1 | tee "$DEST/gpu_bench.log"
echo "[gpu_run] benchmark exit: ${PIPESTATUS[0]}"

# 2. GPU-only tests: those marked gpu (exit 5 = none collected), hard stop at 90 s
timeout -k 5 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -n 30 | tee "$DEST/pytest_gpu.log"
code=${PIPESTATUS[0]}
"$PY" - "$DEST" "$code" <<'PYEOF'
import json, sys
from pathlib import Path
dest, code = Path(sys.argv[1]), int(sys.argv[2])
path = dest / "results.json"
results = json.loads(path.read_text()) if path.is_file() else {}
meaning = {0: "passed", 5: "no test is marked gpu", 124: "timed out"}.get(code, "failed")
results["pytest"] = f"pytest -m gpu tests: exit {code} ({meaning})"
path.write_text(json.dumps(results, indent=1) + "\n")
with (dest / "report.md").open("a") as f:
    f.write(f"\n## GPU tests\n\n`{results['pytest']}` (log: pytest_gpu.log)\n")
PYEOF
echo "[gpu_run] done: $DEST/report.md"

#!/usr/bin/env bash
# The whole GPU benchmark and every GPU-only check, in one command, in under 8 minutes on a 16-core H100/H200:
#   bash benchmarks/gpu_run.sh            (on the CUDA machine; results in $OUT/gpu, else .cache/gpu-run/gpu)
#   bash benchmarks/gpu_run.sh --dry-run  (anywhere: CPU, tiny models, checks the script's logic)
# Steps, each under a hard time limit (seconds): the benchmark (260; it writes its 512 x 30 s FLAC clips
# first), gpu_check (TF32 parity, CUDA training; 35), the AOTInductor CUDA packages built and gated (120),
# pytest -m gpu (45): at most 460 s. results.json and report.md are rewritten as results land, so a run stopped by a
# limit still leaves what it measured. Wheels carried in .whl/ (soundfile, soxr, threadpoolctl: ignored by
# git, so name .whl in the run's carry list) are installed into /tmp/site first when present.
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

# Appends one step's exit status (and the tail of its log) to results.json and report.md.
record() {
  "$PY" - "$DEST" "$1" "$2" "$3" <<'PYEOF'
import json, sys
from pathlib import Path
dest, name, code, logfile = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
meaning = {0: "passed", 5: "nothing collected", 124: "timed out", 137: "killed at its time limit"}.get(code, "failed")
path = dest / "results.json"
results = json.loads(path.read_text()) if path.is_file() else {}
tail = logfile.read_text(errors="replace").strip().splitlines()[-3:] if logfile.is_file() else []
results.setdefault("steps", {})[name] = {"exit": code, "meaning": meaning, "log": logfile.name, "tail": tail}
path.write_text(json.dumps(results, indent=1) + "\n")
with (dest / "report.md").open("a") as f:
    f.write(f"\n## {name}\n\nexit {code} ({meaning}); log `{logfile.name}`\n\n" + "".join(f"    {l}\n" for l in tail))
PYEOF
}

# 1. the benchmark
timeout -k 10 260 "$PY" -m benchmarks.gpu_bench --out "$DEST" --budget-s 240 "$@" 2>&1 | tee "$DEST/gpu_bench.log"
echo "[gpu_run] benchmark exit: ${PIPESTATUS[0]}"
if [ "${1:-}" = "--dry-run" ]; then echo "[gpu_run] dry run: GPU-only checks skipped"; exit 0; fi

# 2. what fp32 computes on CUDA (TF32 on / off against the CPU), CUDA training
timeout -k 5 35 "$PY" -m benchmarks.gpu_check --out "$DEST" > "$DEST/gpu_check.log" 2>&1
record gpu_check $? "$DEST/gpu_check.log"

# 3. AOTInductor packages compiled for CUDA, through the export parity gate, scored against the CPU
timeout -k 5 120 "$PY" tests/export/gpu_aoti_check.py "$DEST/aoti" > "$DEST/aoti_check.log" 2>&1
record aoti_cuda_check $? "$DEST/aoti_check.log"

# 4. the tests marked gpu (device resampler, device path = host path, CUDA graphs, CUDA tensors in)
timeout -k 5 45 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests > "$DEST/pytest_gpu.log" 2>&1
record "pytest -m gpu" $? "$DEST/pytest_gpu.log"
rm -rf "$DEST/aoti"  # the tiny bundle itself: only its log is part of the report
echo "[gpu_run] done: $DEST/report.md"

#!/usr/bin/env bash
# The one prepared GPU check of issue 18, for a fresh machine with an NVIDIA GPU (at most 8 minutes there):
#   1. install the gpu extra (onnxruntime-gpu with its CUDA and cuDNN wheels) next to the export extra;
#   2. export random weights (nst-export runs its own parity check on the CPU provider);
#   3. the parity check against PyTorch autograd on the CUDA provider;
#   4. per iteration, host against device placement at 256, 512, 1024 and 2048 px: the loss graph, the step,
#      the host's work (bench.placement), and the peak GPU memory of each size (nvidia-smi, one process per size);
#   5. throughput of one nst-server with 1, 2 and 4 concurrent 512 px jobs;
#   6. one JSON file (bench/results/gpu.json) and the BENCHMARKS.md section between the GPU_SH markers.
#
# Usage: bash bench/gpu.sh [--dry-run] [--out DIR]
#   --dry-run: on any machine, in the current environment, at small sizes and on the CPU provider, writing into
#              --out (default: a temporary directory) and never into BENCHMARKS.md; the CUDA-only steps say
#              "skipped: no CUDA". CI runs it (tests/bench/test_gpu_dry_run.py) so that the script keeps working.
set -euo pipefail

dry_run=0
out=""
while (($#)); do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) out="$2"; shift ;;
        *) echo "usage: bash bench/gpu.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
python="${PYTHON:-python}"
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*"; }

if ((dry_run)); then
    out="${out:-$(mktemp -d)}"
    device=cpu sides=64,96 iterations=2 repeats=1 side=64 evaluations=3 jobs=1,2
else
    out="${out:-bench/results}"
    device=cuda sides=256,512,1024,2048 iterations=10 repeats=2 side=512 evaluations=30 jobs=1,2,4
fi
mkdir -p "$out"
json="$out/gpu.json"
rm -f "$json"

step "1. the gpu extra"
if ((dry_run)); then
    echo "skipped: no CUDA (a dry run uses this environment's onnxruntime)"
else
    "$python" -m pip install -q ".[export]"
    "$python" -m pip uninstall -q -y onnxruntime
    "$python" -m pip install -q ".[gpu]" "onnxruntime-gpu[cuda,cudnn]"
    "$python" -c 'import onnxruntime as o; p = o.get_available_providers(); assert "CUDAExecutionProvider" in p, p'
fi
"$python" -m bench.gpu machine --json "$json"

step "2. random weights"
model="$out/random-max"
rm -rf "$model"
nst-export --weights random --seed 0 --out "$model" 2>/dev/null

step "3. parity with PyTorch on $device"
((dry_run)) && echo "parity on cuda: skipped: no CUDA (checked on the CPU provider instead)"
"$python" -m bench.gpu parity --model "$model" --device "$device" --json "$json"

step "4. host against device placement at $sides px, and peak device memory"
"$python" -m bench.gpu placement --model "$model" --device "$device" --sides "$sides" \
    --iterations "$iterations" --repeats "$repeats" --json "$json"

step "5. throughput with $jobs concurrent jobs"
"$python" -m bench.gpu throughput --model "$model" --device "$device" --side "$side" \
    --evaluations "$evaluations" --jobs "$jobs" --json "$json"

step "6. the report"
if ((dry_run)); then
    "$python" -m bench.gpu report --json "$json" --markdown "$out/gpu.md"
else
    "$python" -m bench.gpu report --json "$json" --markdown "$out/gpu.md" --benchmarks BENCHMARKS.md
fi
rm -rf "$model"
step "done: $json"

#!/usr/bin/env bash
# The one prepared GPU check (issues 18 and 26), for a pre-provisioned machine with an NVIDIA GPU and no network:
#   1. onnxruntime: with --wheelhouse DIR, remove onnxruntime and install onnxruntime-gpu==PIN from DIR alone
#      (PIN: deploy/docker/onnxruntime-gpu.version, the GPU image's), into this interpreter's environment; then
#      the smoke test: preload_dlls(), a one-Conv session with CUDA first, get_providers()[0] must be CUDA; the
#      versions of onnxruntime, the CUDA runtime and cuDNN go into the JSON. A host whose CUDA cannot load stops
#      here, within seconds, saying why; every step after it is then skipped;
#   2. random weights exported with `python -m nst_export` (its own parity check on the CPU), into a directory
#      outside --out (or --model DIR, an exported model, e.g. made where torch is);
#   3. parity with PyTorch on CUDA with TF32 off, held to the float32 tolerances, and the error with TF32 on;
#   4. per size: host against device placement, the first (cold) evaluation beside the warm ones, peak GPU memory,
#      with each CUDA setting (TF32 off and on; cuDNN's exhaustive and heuristic algorithm search);
#   5. throughput of one nst-server with 1, 2 and 4 concurrent 512 px jobs (not with --quick);
#   6. the report: gpu.md beside gpu.json and, only with --benchmarks, the section of BENCHMARKS.md between the
#      GPU_SH markers. The JSON is the run's product: `python -m bench.gpu report --json F --markdown M` makes the
#      report from it later, on any machine.
#
# Usage: bash bench/gpu.sh [--dry-run] [--quick] [--sides LIST] [--wheelhouse DIR | --use-installed] [--model DIR]
#                          [--out DIR] [--step-timeout S] [--benchmarks]
#   --wheelhouse DIR  install onnxruntime-gpu==PIN offline from DIR (pip --no-index --find-links DIR): the wheel and
#                     any of its dependencies this environment lacks. Without it the environment is used as it is
#                     (--use-installed, the default). Either way, when the project is not installed its packages
#                     run from this source tree (PYTHONPATH), and a missing extra skips only the steps needing it.
#   --quick           steps 1 to 4 at 512 and 1024 px only, TF32 off and on: about 3 minutes on an H200 by estimate
#                     (README, "GPU"), never measured; --sides LIST overrides the sizes of either.
#   --step-timeout S  each step is stopped after S seconds (default 600; step 4: S per size and setting), recorded
#                     as failed, and the rest go on; the exit status is then 1. Every step prints and records its
#                     elapsed time.
#   --dry-run         on any machine, on the CPU provider at 64 and 96 px, writing into --out (default: a temporary
#                     directory); the CUDA-only parts say "skipped: no CUDA". With --wheelhouse it reinstalls this
#                     environment's onnxruntime (the CPU build) from DIR. CI runs it (tests/bench/test_gpu_dry_run.py).
# PYTHON names the interpreter (default: python).
set -uo pipefail  # no -e: a failing step is recorded and the others go on

usage="usage: bash bench/gpu.sh [--dry-run] [--quick] [--sides LIST] [--wheelhouse DIR | --use-installed] \
[--model DIR] [--out DIR] [--step-timeout S] [--benchmarks]"
dry_run=0 quick=0 benchmarks=0 use_installed=0 sides="" wheelhouse="" model="" out="" step_timeout=600
while (($#)); do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --quick) quick=1 ;;
        --benchmarks) benchmarks=1 ;;
        --use-installed) use_installed=1 ;;
        --sides) sides="${2:?$usage}"; shift ;;
        --wheelhouse) wheelhouse="${2:?$usage}"; shift ;;
        --model) model="${2:?$usage}"; shift ;;
        --out) out="${2:?$usage}"; shift ;;
        --step-timeout) step_timeout="${2:?$usage}"; shift ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
    shift
done
if ((use_installed)) && [[ -n "$wheelhouse" ]]; then
    echo "bench/gpu.sh: --wheelhouse installs onnxruntime-gpu, --use-installed installs nothing: give one" >&2
    exit 2
fi
if ((dry_run && benchmarks)); then
    echo "bench/gpu.sh: a dry run never writes BENCHMARKS.md (--benchmarks is for a GPU run)" >&2
    exit 2
fi
for dir in "$wheelhouse" "$model"; do
    [[ -z "$dir" || -d "$dir" ]] || { echo "bench/gpu.sh: $dir: no such directory" >&2; exit 2; }
done
[[ -z "$wheelhouse" ]] || wheelhouse="$(cd "$wheelhouse" && pwd)"
[[ -z "$model" ]] || model="$(cd "$model" && pwd)"
[[ -z "$out" ]] || { mkdir -p "$out" && out="$(cd "$out" && pwd)"; }  # relative to where it was asked for
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
python="${PYTHON:-python}"
pin="$(<deploy/docker/onnxruntime-gpu.version)"
started=$SECONDS

if ((dry_run)); then
    out="${out:-$(mktemp -d)}"
    device=cpu distribution=onnxruntime version=installed settings=off:exhaustive
    sides="${sides:-64,96}" iterations=2 repeats=1 side=64 evaluations=3 jobs=1,2
else
    out="${out:-bench/results}"
    device=cuda distribution=onnxruntime-gpu version="$pin" settings=off:exhaustive,on:exhaustive,off:heuristic
    sides="${sides:-$( ((quick)) && echo 512,1024 || echo 256,512,1024,2048)}"
    iterations=10 repeats=2 side=512 evaluations=30 jobs=1,2,4
    ((quick)) && settings=off:exhaustive,on:exhaustive
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
json="$out/gpu.json"
rm -f "$json"

# The project's packages: installed, or this source tree's (bench/ is found from the working directory).
if ! "$python" -c "import nst_server, nst_client, nst_export, nst" 2>/dev/null; then
    export PYTHONPATH="$repo_root/server:$repo_root/client:$repo_root/export:$repo_root/protos${PYTHONPATH:+:$PYTHONPATH}"
    echo "the project is not installed in $("$python" -c 'import sys; print(sys.prefix)'): running it from source" \
        "(PYTHONPATH=$PYTHONPATH)"
fi

failed=()
record() {  # name, status, seconds
    "$python" -m bench.gpu step --json "$json" --name "$1" --status "$2" --seconds "$3" ||
        echo "(could not record step $1 in $json)" >&2
}
run_step() {  # name, command...: at most $limit seconds (default --step-timeout); outcome and time are recorded
    local name="$1" begun=$SECONDS status=ok code limit="${limit:-$step_timeout}"
    shift
    echo "== [$((SECONDS - started)) s] $name"
    timeout --kill-after=10 "$limit" "$@"
    code=$?
    if ((code == 124 || code == 137)); then
        status="timed out after $limit s"
    elif ((code)); then
        status="failed (exit $code)"
    fi
    [[ $status == ok ]] || failed+=("$name")
    echo "-- $name: $status, $((SECONDS - begun)) s"
    record "$name" "$status" "$((SECONDS - begun))"
    [[ $status == ok ]]
}
skip_step() {  # name, reason
    echo "== [$((SECONDS - started)) s] $1: skipped: $2"
    record "$1" "skipped: $2" 0
}
needs() {  # step: prints what it lacks and fails when an extra it needs is missing
    "$python" -m bench.gpu needs "$1"
}

"$python" -m bench.gpu machine --json "$json" || echo "(machine not recorded)" >&2
"$python" -m bench.gpu environment --json "$json" || echo "(environment not recorded)" >&2

install=()
[[ -z "$wheelhouse" ]] || install=(--wheelhouse "$wheelhouse" --distribution "$distribution" --version "$version")
wanted="$distribution==$version"
((dry_run)) && wanted="$distribution (the version installed here)"
name="1. onnxruntime${wheelhouse:+: install $wanted from $wheelhouse,} smoke test on $device"
if run_step "$name" "$python" -m bench.gpu onnxruntime --device "$device" "${install[@]}" --json "$json"; then
    ready=1
else
    ready=0
    echo "step 1 failed: onnxruntime cannot run on $device here, so every step after it is skipped"
fi
((dry_run)) && echo "CUDA smoke test: skipped: no CUDA (a one-Conv session on the CPU provider instead)"

own_model=0
if [[ -z "$model" ]]; then
    model="$(mktemp -d)/random-max"  # outside --out: what the run leaves there is its results only
    own_model=1
    if ((!ready)); then
        skip_step "2. random weights" "step 1 failed"
    elif lacking="$(needs export)"; then
        run_step "2. random weights" "$python" -m nst_export --weights random --seed 0 --out "$model"
    else
        skip_step "2. random weights" "$lacking; give --model DIR, a model exported elsewhere"
    fi
fi
have_model=0
[[ -f "$model/loss_and_grad.onnx" ]] && have_model=1

gated() {  # name, step, command...: run when step 1 passed, the model exists and the extras are there
    local name="$1" step="$2" lacking
    shift 2
    if ((!ready)); then
        skip_step "$name" "step 1 failed"
    elif ((!have_model)); then
        skip_step "$name" "no model (step 2)"
    elif ! lacking="$(needs "$step")"; then
        skip_step "$name" "$lacking"
    else
        run_step "$name" "$@"
    fi
}

on_cuda_note=""
((dry_run)) || on_cuda_note=", CUDA settings (TF32:search) $settings"
gated "3. parity with PyTorch on $device" parity \
    "$python" -m bench.gpu parity --model "$model" --device "$device" --json "$json"
((dry_run)) && echo "parity on cuda: skipped: no CUDA (checked on the CPU provider instead; TF32 on: skipped: no CUDA)"

# One process per size and setting, each with --step-timeout of its own inside bench.gpu placement.
IFS=, read -ra size_list <<<"$sides"
IFS=, read -ra setting_list <<<"$settings"
limit=$((step_timeout * ${#size_list[@]} * ${#setting_list[@]})) \
    gated "4. placement, first and warm evaluations, peak memory at $sides px$on_cuda_note" placement \
    "$python" -m bench.gpu placement --model "$model" --device "$device" --sides "$sides" --settings "$settings" \
    --iterations "$iterations" --repeats "$repeats" --timeout "$step_timeout" --json "$json"

if ((quick)); then
    skip_step "5. throughput" "--quick"
else
    gated "5. throughput with $jobs concurrent jobs" throughput \
        "$python" -m bench.gpu throughput --model "$model" --device "$device" --side "$side" \
        --evaluations "$evaluations" --jobs "$jobs" --json "$json"
fi

report=("$python" -m bench.gpu report --json "$json" --markdown "$out/gpu.md")
((benchmarks)) && report+=(--benchmarks BENCHMARKS.md)
run_step "6. the report" "${report[@]}"
((own_model)) && rm -rf "$(dirname "$model")"

echo "== [$((SECONDS - started)) s] done: $json"
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi

#!/usr/bin/env bash
# The container images for real, on a Docker engine: build the `cpu` and `gpu` targets, run them, stylize
# through the cpu one, stop it under load, then scale it out to 3 replicas with docker-compose
# (tests/deploy/scaleout.py). Called by .ci/run after the test suite; run it alone from anywhere:
#
#   bash tests/deploy/docker.sh
#
#   NST_SKIP_DOCKER=1     skip everything, saying so (the explicit opt-out; nothing is ever skipped silently)
#   NST_DOCKER_CACHE=1    keep the images (and the stand-in base image) for the next run, which then reuses them;
#                         default: remove every image this run built. BuildKit's layer cache stays in the engine
#                         either way (`docker builder prune` reclaims it; pruning it here cost minutes)
#   PYTHON_IMAGE          the base image (default python:3.11-slim-bookworm). When it is neither present nor
#                         pullable, a stand-in is made from Debian's packages with debootstrap + `docker import`
#   NST_DOCKER_CA         PEM certificates pip must trust inside the builds (default: the host's locally added
#                         CAs, /usr/local/share/ca-certificates/*.crt, e.g. a TLS-intercepting proxy's). Passed as
#                         a BuildKit secret; the script checks that it is in neither image
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, TORCH_INDEX_URL
#                         passed on as build args when set to http(s) URLs. torch 2.13.0's wheel, when the host's
#                         pip finds it in a local folder, goes into wheels/ and TORCH_INDEX_URL defaults to empty
#
# Needs root (or a user in the docker group) and, when the engine is missing, apt-get. If no engine runs, it
# installs docker.io (and docker-compose, debootstrap) and starts dockerd, and stops that dockerd at the end.
# If the engine cannot start, it fails with the reason. Everything it starts is removed by id at exit.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

if [[ "${NST_SKIP_DOCKER:-}" == "1" ]]; then
    echo "SKIPPED: tests/deploy/docker.sh (NST_SKIP_DOCKER=1): the images were NOT built or run"
    exit 0
fi

start_s=$SECONDS
python_image="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
cache="${NST_DOCKER_CACHE:-0}"
run_id="nst-ci-$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/nst-docker.XXXXXX")"
containers=()
images=()
dockerd_pid=""
compose_project=""
linked_wheel=""

step() { printf '\n== [%4ds] %s\n' "$((SECONDS - start_s))" "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

cleanup() {
    local status=$?
    set +e
    if [[ -n "$compose_project" ]]; then
        docker-compose --project-name "$compose_project" --file tests/deploy/compose.yaml down --volumes \
            --remove-orphans --timeout 5 >/dev/null 2>&1
    fi
    for id in "${containers[@]}"; do
        docker rm --force --volumes "$id" >/dev/null 2>&1
    done
    if [[ "$cache" != "1" ]]; then
        for id in "${images[@]}"; do
            docker image rm --force "$id" >/dev/null 2>&1
        done
    fi
    rm -rf "$work"
    [[ -z "$linked_wheel" || "$cache" == "1" ]] || rm -f "$linked_wheel"
    if [[ -n "$dockerd_pid" ]]; then
        kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
    fi
    if [[ $status -eq 0 ]]; then
        printf '\nOK: tests/deploy/docker.sh passed in %ds\n' "$((SECONDS - start_s))"
    else
        printf '\nFAILED: tests/deploy/docker.sh (exit %d) after %ds\n' "$status" "$((SECONDS - start_s))" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

# ---- the engine -------------------------------------------------------------------------------------------
step "Docker engine"
apt_install() {
    command -v apt-get >/dev/null || fail "no Docker engine and no apt-get to install one ($*)"
    echo "installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >"$work/apt.log" 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get update >>"$work/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$work/apt.log" 2>&1
    } || { tail -n 20 "$work/apt.log" >&2; fail "apt-get install $* failed"; }
}
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
if ! docker info >/dev/null 2>&1; then
    echo "no engine answers; starting dockerd (log: $work/dockerd.log)"
    dockerd >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        tail -n 20 "$work/dockerd.log" >&2
        fail "the Docker engine did not start (dockerd log above)"
    fi
fi
# BuildKit is needed for the Dockerfile's RUN mounts. Docker 23+ clients build with buildx; older ones (Debian's
# docker.io 20.10) have BuildKit built in behind DOCKER_BUILDKIT=1. A new client without buildx cannot build,
# so take the first client on PATH that can.
docker_build=()
for client in $(which -a docker | awk '!seen[$0]++'); do
    if "$client" buildx version >/dev/null 2>&1; then
        docker_build=("$client" buildx build --load)
        break
    fi
    major="$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 23)); then
        docker_build=(env DOCKER_BUILDKIT=1 "$client" build)
        break
    fi
done
[[ ${#docker_build[@]} -gt 0 ]] || fail "no docker client here can build with BuildKit: install docker-buildx"
echo "engine $(docker version --format '{{.Server.Version}}'), builds with: ${docker_build[*]}"

# ---- the base image ---------------------------------------------------------------------------------------
step "base image $python_image"
base_built=""
if docker image inspect "$python_image" >/dev/null 2>&1; then
    echo "present"
elif timeout 60 docker pull --quiet "$python_image" >"$work/pull.log" 2>&1; then
    echo "pulled"
else
    echo "cannot pull it ($(tail -n 1 "$work/pull.log")); making a stand-in from Debian packages"
    python_image="nst-base:python3.11-bookworm-debootstrap"
    if docker image inspect "$python_image" >/dev/null 2>&1; then
        echo "reusing $python_image (NST_DOCKER_CACHE kept it)"
    else
        command -v debootstrap >/dev/null || apt_install debootstrap
        rootfs="$work/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
            "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
            { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
        # Python and pip on PATH as in the official image: a virtualenv at /opt/python (Debian's own Python
        # refuses pip installs into the system, PEP 668).
        chroot "$rootfs" /usr/bin/python3 -m venv /opt/python
        rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
        tar -C "$rootfs" --numeric-owner -c . | docker import \
            --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$python_image" >/dev/null
        rm -rf "$rootfs"
    fi
    base_built="$(docker image inspect --format '{{.Id}}' "$python_image")"
    images+=("$base_built")
fi

# ---- build inputs -----------------------------------------------------------------------------------------
step "build inputs"
build_args=(--build-arg "PYTHON_IMAGE=$python_image" --build-arg WEIGHTS=random)
ca="${NST_DOCKER_CA:-}"
if [[ -z "$ca" ]] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    ca="$work/ca.pem"
    cat /usr/local/share/ca-certificates/*.crt >"$ca"
fi
if [[ -n "$ca" ]]; then
    [[ -s "$ca" ]] || fail "NST_DOCKER_CA=$ca is empty or missing"
    build_args+=(--secret "id=ca,src=$ca")
    echo "extra CA for pip (BuildKit secret): $(grep -c 'BEGIN CERTIFICATE' "$ca") certificate(s)"
fi
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS; do
    value="${!name:-}"
    if [[ "$value" =~ ^https?:// ]]; then
        build_args+=(--build-arg "$name=$value")
        echo "$name=$value"
    fi
done
# torch 2.13.0's CPU wheel from the folders the host's pip finds links in (its config and $PIP_FIND_LINKS)
torch_wheel=""
for folder in $(
    { pip3 config list 2>/dev/null || true; } | sed -n "s/.*find-links='\(.*\)'/\1/p"
    echo "${PIP_FIND_LINKS:-}"
); do
    folder="${folder#file://}"
    for wheel in "$folder"/torch-2.13.0*-cp311-cp311-*linux*_x86_64.whl; do
        [[ -f "$wheel" ]] && torch_wheel="$wheel" && break 2
    done
done
if [[ -n "$torch_wheel" ]]; then
    if [[ ! -f "wheels/${torch_wheel##*/}" ]]; then
        ln "$torch_wheel" wheels/ 2>/dev/null || cp "$torch_wheel" wheels/
        linked_wheel="wheels/${torch_wheel##*/}"
    fi
    build_args+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}")
    echo "torch from $torch_wheel (into wheels/), TORCH_INDEX_URL='${TORCH_INDEX_URL:-}'"
elif [[ -n "${TORCH_INDEX_URL+set}" ]]; then
    build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

# ---- build ------------------------------------------------------------------------------------------------
for target in cpu gpu; do
    step "build --target $target"
    if ! "${docker_build[@]}" --progress=plain --target "$target" --iidfile "$work/$target.iid" "${build_args[@]}" \
        --tag "nst-ci:$target" . >"$work/build-$target.log" 2>&1; then
        tail -n 40 "$work/build-$target.log" >&2
        fail "docker build --target $target failed"
    fi
    grep -E '^#[0-9]+ (DONE|CACHED)' "$work/build-$target.log" | tail -n 3 || true
    images+=("$(cat "$work/$target.iid")")
done
cpu_image="$(cat "$work/cpu.iid")"
gpu_image="$(cat "$work/gpu.iid")"

# ---- the host side: the bundled client ---------------------------------------------------------------------
venv="${NST_VENV:-$repo_root/.venv}"
if [[ ! -x "$venv/bin/nst" ]]; then
    step "client venv $venv (the base install is the client library)"
    [[ -x "$venv/bin/python" ]] || python3.11 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet .
fi
nst="$venv/bin/nst"
py="$venv/bin/python"

started_id=""
run_server() { # run_server IMAGE [server flags...] -> $started_id; gRPC and HTTP ports on free loopback ports
    started_id="$(docker run --detach --publish 127.0.0.1::50051 --publish 127.0.0.1::8080 "$@")"
    containers+=("$started_id")
}
host_port() { docker port "$1" 50051/tcp | head -n 1 | sed 's/.*://'; }
wait_healthy() { # the image's own HEALTHCHECK (nst health every 15 s) must say healthy
    local id=$1 state
    for _ in $(seq 120); do
        state="$(docker inspect --format '{{.State.Health.Status}}' "$id")"
        [[ "$state" == "healthy" ]] && return 0
        [[ "$(docker inspect --format '{{.State.Running}}' "$id")" == "true" ]] || break
        sleep 1
    done
    docker logs "$id" 2>&1 | tail -n 20 >&2
    fail "container ${id:0:12} never became healthy (last: $state)"
}

# ---- cpu: healthy, stylize, non-root, stop under load -------------------------------------------------------
step "cpu image: run, HEALTHCHECK"
run_server "$cpu_image" --drain 1 --grace 3
cpu="$started_id"
wait_healthy "$cpu"
address="127.0.0.1:$(host_port "$cpu")"
echo "healthy after $(docker inspect --format '{{len .State.Health.Log}}' "$cpu") check(s); serving on $address"

step "cpu image: stylize from the host through $nst"
"$py" - "$work" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for name, (w, h) in {"content.png": (96, 64), "style.png": (64, 64)}.items():
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(Path(sys.argv[1]) / name)
EOF
"$nst" stylize "$work/content.png" "$work/style.png" -o "$work/styled.png" --server "$address" \
    --size 64 --max-evaluations 5 --progress json >"$work/stylize.jsonl"
"$py" -c "
from PIL import Image; import sys
size = Image.open(sys.argv[1]).size
assert max(size) == 64 and size[0] > size[1], size
print('styled.png', size)" "$work/styled.png"

step "cpu image: the page and Connect's JSON on the HTTP port (8080)"
http_url="http://127.0.0.1:$(docker port "$cpu" 8080/tcp | head -n 1 | sed 's/.*://')"
"$py" - "$http_url" <<'EOF'
import json, sys, urllib.request
url = sys.argv[1]
page = urllib.request.urlopen(url + "/", timeout=30).read().decode()
assert 'src="nst.js"' in page, page[:200]
call = urllib.request.Request(url + "/nst.v1.StyleTransferService/DescribeModel", data=b"{}",
                              headers={"Content-Type": "application/json"})
models = json.load(urllib.request.urlopen(call, timeout=30))["models"]
print("the page and DescribeModel over Connect JSON:", [model["name"] for model in models])
EOF

step "cpu image: non-root"
uid="$(docker exec "$cpu" id -u)"
[[ "$uid" != "0" ]] || fail "the server runs as root"
echo "uid $uid ($(docker exec "$cpu" id -un 2>/dev/null || echo '?'))"

step "cpu image: docker stop with a job running"
"$nst" stylize "$work/content.png" "$work/style.png" -o "$work/never.png" --server "$address" \
    --size 96 --max-evaluations 5000 --progress json >"$work/long.jsonl" 2>"$work/long.err" &
long_pid=$!
for _ in $(seq 120); do
    grep -q '"iteration"' "$work/long.jsonl" 2>/dev/null && break
    sleep 0.5
done
grep -q '"iteration"' "$work/long.jsonl" || fail "the long job never reported progress: $(cat "$work/long.err")"
stop_start=$SECONDS
docker stop --time 30 "$cpu" >/dev/null
stop_s=$((SECONDS - stop_start))
exit_code="$(docker inspect --format '{{.State.ExitCode}}' "$cpu")"
long_status=0
wait "$long_pid" || long_status=$?
echo "docker stop took ${stop_s}s (drain 1 s + grace 3 s, stop timeout 30 s), exit code $exit_code"
echo "the running job: exit $long_status, $(tail -n 1 "$work/long.err")"
[[ "$exit_code" == "0" ]] || fail "nst-server exited $exit_code on docker stop, not 0"
((stop_s < 30)) || fail "docker stop needed the full timeout (${stop_s}s): SIGTERM was not handled"
[[ $long_status -ne 0 ]] && grep -q "unavailable: server shut down" "$work/long.err" ||
    fail "the running job did not end UNAVAILABLE with the shutdown message: $(cat "$work/long.err")"
[[ ! -e "$work/never.png" ]] || fail "a cancelled job wrote an image"

step "gpu image: loads the model (--device cpu) and answers health"
run_server "$gpu_image" --device cpu --drain 1 --grace 3
gpu="$started_id"
wait_healthy "$gpu"
gpu_address="127.0.0.1:$(host_port "$gpu")"
"$nst" health --server "$gpu_address"
"$nst" info --server "$gpu_address" | tee "$work/gpu-info.txt"
grep -q "random" "$work/gpu-info.txt" || fail "the gpu image does not describe the exported model"
docker logs "$gpu" 2>&1 | grep -E "loaded model|onnxruntime" | head -n 3
docker exec "$gpu" python -c "import onnxruntime as o; print('onnxruntime-gpu', o.__version__, o.get_available_providers())"
docker stop --time 30 "$gpu" >/dev/null
[[ "$(docker inspect --format '{{.State.ExitCode}}' "$gpu")" == "0" ]] || fail "the gpu image did not exit 0"

step "the extra CA is in neither image"
if [[ -n "$ca" ]]; then
    marker="$(grep -v -e '-----' "$ca" | sed -n '5p')" # a line from inside the first certificate's body
    for image in "$cpu_image" "$gpu_image"; do
        probe="$(docker create "$image")"
        containers+=("$probe")
        found="$(docker export "$probe" | grep -c -F -- "$marker" || true)"
        history="$(docker history --no-trunc "$image" | grep -c -F -- "$marker" || true)"
        [[ "$found" == "0" && "$history" == "0" ]] || fail "the build CA is inside image ${image:7:12}"
        echo "${image:7:12}: not in the filesystem, not in the history"
    done
else
    echo "no extra CA was passed"
fi

step "image sizes"
for target in cpu gpu; do
    iid="$(cat "$work/$target.iid")"
    printf '%s  %s  %d MB\n' "$target" "${iid:7:12}" "$(($(docker image inspect --format '{{.Size}}' "$iid") / 1000000))"
done | tee "$work/sizes.txt"
base_mb="$(($(docker image inspect --format '{{.Size}}' "$python_image") / 1000000))"
echo "base  $python_image  $base_mb MB"

# ---- scale-out ---------------------------------------------------------------------------------------------
step "scale-out: 3 replicas with docker-compose, a client on dns:///nst:50051"
compose_project="$run_id"
"$py" tests/deploy/scaleout.py --image "$cpu_image" --project "$compose_project"
compose_project=""

#!/usr/bin/env bash
# The main job on one machine, from nothing: install, export VGG19 to ONNX, start nst-server, stylize with
# the nst client, leave the image on disk, stop the server.
#
#   bash deploy/local.sh [--weights imagenet|caffe|random|ranvgg|PATH] [--out FILE] [CONTENT STYLE [STYLE ...]]
#                        [-- extra `nst stylize` flags, e.g. --size 384 --max-evaluations 150]
#   bash deploy/local.sh --page [--open] [--weights ...]
#
# The server also serves the page to paint with (--http-port) and the script prints its address. With --page it
# runs no job itself: it keeps the server up for the browser until Ctrl-C; --open also opens the page in one.
# Defaults: ImageNet weights (downloaded once, hash-checked), out/styled-WEIGHTS.png (named for the weights that
# made it), and the sample photo and painting in deploy/samples/. Where the ImageNet weights cannot be downloaded
# and --weights was not given, it says so loudly and continues with --weights ranvgg (random weights rescaled to
# a trained net's activations: recognisable pictures, not ImageNet's). NST_VENV picks the virtualenv (.venv).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
weights="imagenet"
weights_given=false
out=""
images=()
stylize_flags=()
page=false
open_page=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --weights) weights="$2"; weights_given=true; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --) shift; stylize_flags=("$@"); break ;;
        --page) page=true; shift ;;
        --open) page=true; open_page=true; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) images+=("$1"); shift ;;
    esac
done
if [[ ${#images[@]} -eq 0 ]]; then
    images=("$repo_root/deploy/samples/tubingen.jpg" "$repo_root/deploy/samples/starry_night.jpg")
fi
if [[ ${#images[@]} -lt 2 ]]; then
    echo "deploy/local.sh: give a content photo and at least one style image: bash deploy/local.sh PHOTO PAINTING" >&2
    exit 2
fi

venv="${NST_VENV:-$repo_root/.venv}"
[[ -x "$venv/bin/python" ]] || python3.11 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
echo "== installing neuralstyletransfer[server,export] into $venv"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet ".[server,export]"

exit_weights_unavailable=3  # nst-export's status when published weights cannot be downloaded (nst_export.cli)
export_model() {  # export_model WEIGHTS: the model directory of those weights, exported once
    model_dir="models/vgg19-$(basename "$1" .pth)"
    [[ -d "$model_dir" ]] && return 0
    echo "== exporting $1 weights to $model_dir"
    nst-export --weights "$1" --out "$model_dir"
}
status=0
export_model "$weights" || status=$?
if [[ $status -eq $exit_weights_unavailable && $weights_given == false ]]; then
    rule="!! $(printf '=%.0s' {1..100})"
    echo "$rule"
    echo "!! WARNING: the ImageNet VGG19 weights cannot be downloaded here (no internet?)."
    echo "!! Continuing with --weights ranvgg: random weights rescaled to a trained net's activations (README, Models)."
    echo "!! The picture will be recognisable, but it is not what ImageNet's weights would paint."
    echo "$rule"
    weights="ranvgg"
    status=0
    export_model "$weights" || status=$?
fi
if [[ $status -ne 0 ]]; then
    echo "deploy/local.sh: the export failed (above). Offline, pass a local torchvision-layout VGG19 state dict" \
         "(--weights /path/to/vgg19.pth), --weights ranvgg (random weights that still make recognisable pictures)" \
         "or --weights random (runs end to end, but the picture is not art)." >&2
    exit 1
fi
[[ -n "$out" ]] || out="out/styled-$(basename "$weights" .pth).png"

log="$(mktemp)"
echo "== starting nst-server (log: $log)"
nst-server --model "$model_dir" --port 0 --http-port "${NST_HTTP_PORT:-0}" 2>"$log" &
server_pid=$!
trap 'kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true' EXIT
address="$(bash deploy/server-address.sh "$log" "$server_pid")"
page_url="$(sed -n 's/.*the page on \(http[^ ]*\).*/\1/p' "$log" | head -n 1)"
echo "== the page to paint with: $page_url"
if [[ $page == true ]]; then
    if [[ $open_page == true ]]; then
        python -m webbrowser "$page_url" >/dev/null 2>&1 || echo "(no browser to open here: visit the address above)"
    fi
    echo "== serving gRPC on $address and the page on $page_url until Ctrl-C"
    wait "$server_pid"
    exit 0
fi

echo "== stylizing ${images[0]} in the style of ${images[*]:1} via $address"
mkdir -p "$(dirname "$out")"
nst stylize "${images[@]}" -o "$out" --server "$address" --progress bar "${stylize_flags[@]}"
echo "== wrote $out (weights: $weights)"

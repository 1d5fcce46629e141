#!/usr/bin/env bash
# Makes the README's pictures: exports ranVGG (random weights rescaled layer by layer, He et al. 2016; not ImageNet),
# ranVGG with average pooling and today's He-initialised random weights, starts nst-server on them, and runs the
# `nst stylize` commands below, exactly as the README captions them, from a folder holding the sample images
# (NST_SERVER points them at the server). tests/test_gallery.py checks the README quotes each command.
#
#   bash docs/gallery/make.sh [PICTURE ...]    (default: all; e.g. `bash docs/gallery/make.sh blend luminance`)
#
# IMAGES (default ../shared/images) holds the inputs; the PNGs land in docs/gallery/. NST_VENV picks the virtualenv
# (default .venv, with the package installed). Everything runs under `nice -n 19`: on a 2-core machine at load 7-13 a
# 128 px picture took 2-4 minutes (each one's seconds and the load are printed).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
gallery="$repo_root/docs/gallery"
images="$(cd "${IMAGES:-$repo_root/../shared/images}" && pwd)"
venv="${NST_VENV:-$repo_root/.venv}"
# shellcheck disable=SC1091
source "$venv/bin/activate"

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The first model is the server's default: the gallery's commands use ranVGG (max pooling) without naming it. The
# other two are exported only when a picture wanted (all, by default) names them.
models=("ranvgg:--weights ranvgg" "ranvgg-avg:--weights ranvgg --pooling avg" "random:--weights random")
served=()
for entry in "${models[@]}"; do
    name="${entry%%:*}"
    if [[ "$name" == ranvgg || $# -eq 0 || " $* " =~ -$name\  ]]; then
        # shellcheck disable=SC2086  # the flags are words
        nice -n 19 nst-export ${entry#*:} --seed 0 --out "$work/models/$name" 2>&1 | tail -n 1
        served+=(--model "$work/models/$name")
    fi
done
log="$work/server.log"
nice -n 19 nst-server "${served[@]}" --port 0 2>"$log" &
server_pid=$!
address="$(bash "$repo_root/deploy/server-address.sh" "$log" "$server_pid")"
export NST_SERVER="$address"

cd "$work"
for image in "$images"/*.jpg; do ln -s "$image" .; done
# Masks for the masked picture, at the photo's aspect ratio: tubingen's sky (the top 40%) and the town and river
# below it, soft across 8% of the height and adding up to 1 everywhere.
python - <<'EOF'
import numpy as np
from PIL import Image

with Image.open("tubingen.jpg") as photo:
    width, height = photo.size
rows = np.linspace(0.0, 1.0, height)[:, None]
sky = np.round(np.clip((0.40 - rows) / 0.08 + 0.5, 0.0, 1.0) * np.ones((1, width)) * 255).astype(np.uint8)
Image.fromarray(sky).save("sky.png")
Image.fromarray(255 - sky).save("town.png")
EOF

wanted=("$@")
picture() {  # picture NAME COMMAND...: run COMMAND (writing NAME.png) if NAME is wanted, print it, keep the PNG
    local name="$1"
    shift
    if [[ ${#wanted[@]} -gt 0 && ! " ${wanted[*]} " =~ \ $name\  ]]; then
        return
    fi
    echo "== $name: $*"
    local start=$SECONDS
    nice -n 19 "$@"
    echo "   $((SECONDS - start)) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
    cp "$name.png" "$gallery/$name.png"
}

# Every stylisation says --init content: the pictures were made when the photo itself was the default start (the
# default is now the photo in the painting's colours, --init matched; issue 27).
# Side by side: ranVGG (max pooling, the export's default), ranVGG with average pooling (reconstruction only) and
# today's random weights: reconstruction from relu4_2, texture, stylisation.
picture reconstruction-ranvgg nst stylize tubingen.jpg -o reconstruction-ranvgg.png --model ranvgg --size 128 \
    --max-evaluations 100 --content-layers relu4_2
picture reconstruction-ranvgg-avg nst stylize tubingen.jpg -o reconstruction-ranvgg-avg.png --model ranvgg-avg \
    --size 128 --max-evaluations 100 --content-layers relu4_2
picture reconstruction-random nst stylize tubingen.jpg -o reconstruction-random.png --model random --size 128 \
    --max-evaluations 100 --content-layers relu4_2
picture texture-ranvgg nst stylize starry_night_google.jpg --texture -o texture-ranvgg.png --model ranvgg \
    --size 128 --max-evaluations 100
picture stylize-ranvgg nst stylize tubingen.jpg starry_night_google.jpg -o stylize-ranvgg.png --model ranvgg \
    --size 128 --max-evaluations 100 --init content
picture texture-random nst stylize starry_night_google.jpg --texture -o texture-random.png --model random \
    --size 128 --max-evaluations 100
picture stylize-random nst stylize tubingen.jpg starry_night_google.jpg -o stylize-random.png --model random \
    --size 128 --max-evaluations 100 --init content

# The gallery (ranVGG, the server's default model), one scale unless said.
picture blend nst stylize tubingen.jpg starry_night_google.jpg the_scream.jpg -o blend.png --size 128 \
    --max-evaluations 100 --blend-weights 0.5,0.5 --init content
picture luminance nst stylize tubingen.jpg starry_night_google.jpg -o luminance.png --size 128 \
    --max-evaluations 100 --preserve-colour luminance --init content
# At 256 px the server's coarse-to-fine schedule runs 128 px, then 256 px from its result.
picture coarse-to-fine nst stylize tubingen.jpg starry_night_google.jpg -o coarse-to-fine.png --size 256 \
    --max-evaluations 100 --coarse-to-fine --init content
picture masks nst stylize tubingen.jpg the_scream.jpg starry_night_google.jpg -o masks.png --size 128 \
    --max-evaluations 100 --style-masks sky.png,town.png --init content
picture tileable nst stylize starry_night_google.jpg --texture --tileable -o tileable.png --size 128 \
    --max-evaluations 100
if [[ -f tileable.png ]]; then  # four copies edge to edge: a seam would show as a cross through the middle
    python -c 'from PIL import Image
tile = Image.open("tileable.png")
grid = Image.new("RGB", (2 * tile.width, 2 * tile.height))
for x in (0, tile.width):
    for y in (0, tile.height):
        grid.paste(tile, (x, y))
grid.save("tileable-2x2.png")'
    cp tileable-2x2.png "$gallery/"
fi

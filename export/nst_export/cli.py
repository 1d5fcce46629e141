"""`nst-export`: VGG19 weights in, a checked model directory out (or nothing at all)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx
import torch
from nst.manifest import Manifest, Preprocessing

from .onnx_graphs import OPSET, tile_geometry, write_graphs
from .parity import check_parity, random_images
from .vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, RELU_LAYERS, VGG19Features, deepest_layer
from .weights import (
    PUBLISHED,
    ExportError,
    WeightsUnavailable,
    fetch_published,
    init_random,
    init_ranvgg,
    load_into,
    read_state_dict,
    weights_sha256,
)

log = logging.getLogger("nst_export")

# The exit status when published weights cannot be downloaded (any other failure exits 1): deploy/local.sh then
# falls back to --weights ranvgg, loudly.
EXIT_WEIGHTS_UNAVAILABLE = 3

# Non-square and not a multiple of 16, so that pooling's dropped edges are part of the check.
PARITY_SIZE = (37, 53)
# The plain loss (no regions), two guided regions, and the circular-padding graphs.
PARITY_VARIANTS: dict[str, tuple[bool, bool]] = {  # (guided, circular)
    "plain": (False, False),
    "guided": (True, False),
    "circular": (False, True),
}

RANDOM_WARNING = (
    "WARNING: random weights. The graphs compute the exact Gatys loss of an untrained network: use them for "
    "tests and offline runs, but the pictures they make are NOT art. Use --weights imagenet or caffe, or "
    "ranvgg offline."
)
RANVGG_NOTE = (
    "NOTE: ranvgg weights are random (He et al. 2016), rescaled layer by layer: they make textures and style "
    "transfers offline, not ImageNet's. With max pooling a reconstruction from relu4_2 stays noise; --pooling avg "
    "gives a blurred one. See README, Models."
)
SEEDED = ("random", "ranvgg")


def _layers(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in RELU_LAYERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated ReLU layers from {', '.join(RELU_LAYERS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nst-export",
        description="Export VGG19 to ONNX graphs computing Gatys et al.'s targets, loss and image gradient.",
    )
    parser.add_argument(
        "--weights",
        required=True,
        metavar="{imagenet,caffe,random,ranvgg,PATH}",
        help="published weights (downloaded once, hash-checked), random (seeded, not art), ranvgg (seeded random "
        "weights rescaled layer by layer, He et al. 2016: textures and style transfer offline) or a local .pth "
        "state dict in torchvision layout",
    )
    parser.add_argument(
        "--preprocessing",
        choices=("imagenet", "caffe"),
        default="imagenet",
        help="input convention of a local .pth: imagenet (RGB [0,1], mean/std) or caffe (BGR 0-255, mean); "
        "default imagenet",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random or ranvgg (default 0)")
    parser.add_argument("--pooling", choices=("max", "avg"), default="max", help="default max")
    parser.add_argument("--content-layers", type=_layers, default=DEFAULT_CONTENT_LAYERS, help="default relu4_2")
    parser.add_argument(
        "--style-layers",
        type=_layers,
        default=DEFAULT_STYLE_LAYERS,
        help="default relu1_1,relu2_1,relu3_1,relu4_1,relu5_1",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="download cache (default: torch.hub's, $TORCH_HOME/hub/checkpoints)"
    )
    parser.add_argument("--out", required=True, type=Path, help="model directory to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    return parser


def _exporter() -> str:
    try:
        ours = version("neuralstyletransfer")
    except PackageNotFoundError:
        ours = "source"
    return f"nst_export {ours} (onnx {onnx.__version__}, torch {torch.__version__})"


def _load_model(args: argparse.Namespace, model: VGG19Features) -> tuple[str, Preprocessing, str | None]:
    """Fill ``model`` with the requested weights; return (weights name, preprocessing, recipe of seeded weights)."""
    if args.weights == "random":
        init_random(model, args.seed)
        return "random", "imagenet", "He-initialised: N(0, 2/fan_out) weights, zero biases (torchvision's VGG init)"
    if args.weights == "ranvgg":
        return "ranvgg", "imagenet", init_ranvgg(model, args.seed, "imagenet")
    if args.weights in PUBLISHED:
        published = PUBLISHED[args.weights]
        path = fetch_published(published, args.cache_dir)
        load_into(model, read_state_dict(path), str(path))
        return published.name, published.preprocessing, None
    path = Path(args.weights)
    load_into(model, read_state_dict(path), str(path))
    return path.name, args.preprocessing, None


def _staging_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise ExportError(f"cannot write to {out.parent} ({error.strerror}); choose another --out") from error


def export(args: argparse.Namespace) -> Path:
    """Export into a staging directory, check parity there, then move it into place."""
    out: Path = args.out
    if out.exists() and not args.force:
        raise ExportError(f"{out} exists; pass --force to replace it or choose another --out")
    content_layers, style_layers = args.content_layers, args.style_layers
    model = VGG19Features(deepest_layer(content_layers + style_layers), args.pooling)
    weights, preprocessing, recipe = _load_model(args, model)
    if weights == "random":
        print(RANDOM_WARNING, file=sys.stderr)
    elif weights == "ranvgg":
        print(RANVGG_NOTE, file=sys.stderr)
    manifest = Manifest(
        weights=weights,
        weights_sha256=weights_sha256(model),
        pooling=args.pooling,
        preprocessing=preprocessing,
        content_layers=content_layers,
        style_layers=style_layers,
        opset=OPSET,
        exporter=_exporter(),
        seed=args.seed if weights in SEEDED else None,
        recipe=recipe,
        tile_halo_px=tile_geometry(model.layers)[0],
        tile_align_px=tile_geometry(model.layers)[1],
    )
    staging = _staging_dir(out)
    try:
        write_graphs(model, manifest, staging)
        for variant, (guided, circular) in PARITY_VARIANTS.items():
            images = random_images(*PARITY_SIZE, seed=args.seed)
            report = check_parity(staging, model, *images, guided=guided, circular=circular)
            if not report.passed:
                raise ExportError(f"parity check ({variant}) against PyTorch failed: {report}; nothing was written")
            log.info("parity with PyTorch autograd at %dx%d (%s): %s", *PARITY_SIZE, variant, report)
        staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of `nst-export`; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        out = export(args)
    except WeightsUnavailable as error:
        print(f"nst-export: error: {error}", file=sys.stderr)
        return EXIT_WEIGHTS_UNAVAILABLE
    except ExportError as error:
        print(f"nst-export: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"nst-export: error: {error}", file=sys.stderr)
        return 1
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

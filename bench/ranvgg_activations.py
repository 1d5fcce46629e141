"""Mean ReLU output per layer of `--weights random` and `--weights ranvgg` on the reference noise and on images.

    python -m bench.ranvgg_activations [--seed 0] [--side 256] [IMAGE ...]   (default: ../shared/images/*.jpg)

ranVGG's per-layer factors are measured on seeded 1/f noise (``nst_export.weights.reference_image``); this prints
how far real photos and paintings are from the mean of 1 it sets, and what the He-initialised weights give instead.
Each image is resized so that its longer side is ``--side``, as the server would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from nst_export.reference import preprocess
from nst_export.vgg import RELU_LAYERS, VGG19Features
from nst_export.weights import init_random, init_ranvgg, reference_image
from PIL import Image

DEEPEST = "relu5_1"
RELUS = RELU_LAYERS[: RELU_LAYERS.index(DEEPEST) + 1]


def _load(path: Path, side: int) -> torch.Tensor:
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    scale = side / max(picture.size)
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, nargs="*")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()
    images = args.images or sorted((Path(__file__).resolve().parents[1] / ".." / "shared" / "images").glob("*.jpg"))
    inputs = {"reference (seed)": reference_image(args.seed), "reference (seed + 1)": reference_image(args.seed + 1)}
    inputs |= {path.stem: _load(path, args.side) for path in images}
    torch.set_num_threads(1)
    for name, init in (("random", init_random), ("ranvgg", init_ranvgg)):
        model = VGG19Features(DEEPEST)
        init(model, args.seed)
        print(f"--weights {name} --seed {args.seed}: mean ReLU output, {RELUS[0]} .. {RELUS[-1]}")
        for label, image in inputs.items():
            with torch.no_grad():
                means = [float(v.mean()) for v in model(preprocess(image, "imagenet"), RELUS).values()]
            print(f"  {label:24s} min {min(means):.3g} max {max(means):.3g}  " + " ".join(f"{m:.3g}" for m in means))


if __name__ == "__main__":
    main()

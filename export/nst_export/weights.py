"""Where VGG19 weights come from: a published URL (hash-checked, cached like torch.hub), a local file, or seeds.

Every failure is an ``ExportError`` whose message says what to do; the CLI prints it as one line.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from nst.manifest import Preprocessing
from torch import nn

from .reference import preprocess
from .vgg import CONV_LAYERS, VGG19Features


class ExportError(Exception):
    """An export failed for a reason the user can act on; the message says how."""


class WeightsUnavailable(ExportError):
    """Published weights could not be downloaded (an offline machine): ``nst-export`` exits with its own status,
    EXIT_WEIGHTS_UNAVAILABLE, so that a script can fall back to generated weights and say so."""


@dataclass(frozen=True, slots=True)
class PublishedWeights:
    """A torchvision-layout VGG19 state dict at a URL whose file name carries its sha256 prefix."""

    name: str
    url: str
    preprocessing: Preprocessing


PUBLISHED: dict[str, PublishedWeights] = {
    # torchvision's own ImageNet weights: RGB in [0, 1], ImageNet mean/std.
    "imagenet": PublishedWeights("imagenet", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "imagenet"),
    # The original Caffe VGG19 converted to torchvision layout (jcjohnson/pytorch-vgg): BGR, 0-255, mean only.
    "caffe": PublishedWeights("caffe", "https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth", "caffe"),
}

# torch.hub's convention: `name-<first 8+ hex digits of sha256>.ext`.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (weight files are ~550 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_published(weights: PublishedWeights, cache_dir: Path | None = None) -> Path:
    """Download (once) into torch.hub's checkpoint cache and verify the sha256 prefix in the file name."""
    cache = cache_dir or Path(torch.hub.get_dir()) / "checkpoints"
    file_name = weights.url.rsplit("/", 1)[-1]
    match = _HASH_IN_NAME.search(file_name)
    if match is None:
        raise ExportError(f"{weights.url}: file name carries no sha256 prefix to check against")
    expected = match.group(1)
    target = cache / file_name
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(target), hash_prefix=expected, progress=False)
        except (urllib.error.URLError, OSError) as error:
            raise WeightsUnavailable(
                f"cannot download {weights.name} weights from {weights.url} ({error}); on an offline machine "
                f"copy the file to {target}, pass a local state dict (--weights PATH), or use --weights ranvgg (random "
                "weights at a trained net's scale) or --weights random"
            ) from error
        except RuntimeError as error:  # torch.hub's hash mismatch
            raise ExportError(f"{weights.url}: {error}; the download is corrupt or was replaced") from error
    actual = file_sha256(target)
    if not actual.startswith(expected):
        raise ExportError(
            f"{target}: sha256 {actual[:16]}... does not start with {expected} as its name says; delete the "
            "file and run again to download it afresh"
        )
    return target


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` state dict safely (tensors only, no pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise ExportError(f"{path}: no such file; pass imagenet, caffe, random or the path of a .pth") from error
    except Exception as error:  # torch raises many types for a corrupt or non-torch file
        raise ExportError(f"{path}: not a readable PyTorch state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    return state


def load_into(model: VGG19Features, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a torchvision-layout VGG19 state dict into ``model``; classifier keys are ignored.

    All sixteen convs of VGG19 must be present with torchvision's shapes, so that a VGG16, a renamed or
    a transposed state dict is refused rather than silently half-loaded.
    """
    for layer in CONV_LAYERS:
        for suffix, shape in (
            ("weight", (layer.out_channels, layer.in_channels, 3, 3)),
            ("bias", (layer.out_channels,)),
        ):
            key = f"features.{layer.index}.{suffix}"
            tensor = state.get(key)
            if tensor is None:
                raise ExportError(
                    f"{source}: missing {key}; expected a torchvision-layout VGG19 state dict "
                    "(features.N.weight/bias, as torchvision.models.vgg19().state_dict() writes)"
                )
            if tuple(tensor.shape) != shape:
                raise ExportError(f"{source}: {key} has shape {tuple(tensor.shape)}, VGG19 needs {shape}")
    wanted = {k: v.float() for k, v in state.items() if k in model.state_dict()}
    model.load_state_dict(wanted, strict=True)


def _he_normal(conv: nn.Conv2d, generator: torch.Generator) -> None:
    """torchvision's initialisation of a new VGG conv: N(0, 2 / fan_out) weights, zero bias."""
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    std = (2.0 / fan_out) ** 0.5
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
    if conv.bias is not None:  # always, in VGG
        conv.bias.zero_()


def init_random(model: VGG19Features, seed: int) -> None:
    """He-initialise every conv from ``seed`` as torchvision does for a new VGG (fan-out, zero bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, nn.Conv2d):
                _he_normal(module, generator)


# ranVGG (He, Wang and Hopcroft, "A Powerful Generative Model Using Random Weights for the Deep Image
# Representation", NIPS 2016): random weights are enough for textures and style transfer once the layers'
# magnitudes are put right. He-initialised VGG19's mean ReLU output is 0.09 at relu1_1 and 0.03-0.04 from relu3_4 on
# (tubingen at 256 px): its content loss (2nd power of the features) and style loss (4th power) are then tiny next
# to the total variation term, which acts on the pixels and does not shrink, and the optimiser returns a smear.
RANVGG_MEAN_ACTIVATION = 1.0
RANVGG_REFERENCE_PX = 224  # VGG's own input size; the means hardly depend on it (the convs are zero-padded)
_SCALE_DIGITS = 4  # scales are rounded to 4 significant digits, so float noise across CPUs cannot change them


def reference_image(seed: int, size: int = RANVGG_REFERENCE_PX) -> torch.Tensor:
    """Seeded 1/f noise, RGB in [0, 1], (1, 3, size, size): the input ranVGG's layer scales are measured on.

    Photos and paintings have amplitude spectra close to 1/f (Field 1987); white noise puts far more of its energy
    in the finest scales, where a random 3x3 filter responds differently. The noise is generated rather than read
    from a file so that the export needs no image on disk. Channels share a luminance field plus a weaker field of
    their own, as natural colours are strongly correlated. Mean 0.5, standard deviation about 0.2, clipped to [0, 1].
    """
    generator = torch.Generator().manual_seed(seed)
    white = torch.randn((4, size, size), generator=generator, dtype=torch.float64)
    fy = torch.fft.fftfreq(size, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(size, dtype=torch.float64).view(1, -1)
    frequency = torch.sqrt(fx**2 + fy**2)
    frequency[0, 0] = 1.0
    spectrum = torch.fft.rfft2(white) / frequency
    spectrum[:, 0, 0] = 0.0  # zero mean
    fields = torch.fft.irfft2(spectrum, s=(size, size))
    fields = fields / fields.std(dim=(1, 2), keepdim=True)
    rgb = fields[:1] + 0.35 * fields[1:]
    rgb = (0.5 + 0.2 * rgb / rgb.std()).clamp(0.0, 1.0)
    image: torch.Tensor = rgb.float().unsqueeze(0)
    return image


def init_ranvgg(model: VGG19Features, seed: int, preprocessing: Preprocessing = "imagenet") -> str:
    """ranVGG: ``init_random``'s weights, each conv then scaled so that its ReLU's mean output is 1; returns the recipe.

    Layer by layer, in forward order, on ``reference_image(seed)`` preprocessed as the graph will:
        a_l = relu(conv_l(x_{l-1})),  s_l = 1 / mean(a_l) (over channels and positions),  W_l <- s_l W_l,
    where x_{l-1} already comes from the scaled layers below. Biases are zero and ReLU and both poolings are
    positively homogeneous, so scaling W_l scales a_l, and everything above it, by exactly s_l: after the pass every
    ReLU's mean on the reference is 1 (to the 4 significant digits s_l is rounded to). He et al. normalise the
    loss's per-layer weighting factors instead; scaling the weights puts every layer's features, and so its Gram
    matrices, on a common scale in the same way for any image with statistics near the reference's (photos and
    paintings: 0.67-1.5 at every layer, README, Models), and keeps the exported graphs and the server's default
    alpha, beta, gamma unchanged. Their greedy search over candidate weights, for reconstruction, is not done.
    """
    init_random(model, seed)
    x = preprocess(reference_image(seed), preprocessing)
    scales: list[str] = []
    with torch.no_grad():
        for module in model.features:
            x = module(x)
            if not isinstance(module, nn.Conv2d):
                continue
            scale = float(f"{RANVGG_MEAN_ACTIVATION / float(torch.relu(x).mean()):.{_SCALE_DIGITS}g}")
            module.weight.mul_(scale)
            x = x * scale  # what the scaled conv gives, as its bias is zero
            scales.append(f"{scale:.{_SCALE_DIGITS}g}")
    return (
        "ranvgg (He, Wang and Hopcroft, NIPS 2016): conv weights N(0, 2/fan_out) from torch.Generator seed "
        f"{seed} in layer order, zero biases; each conv's weights then scaled, in forward order, so that its ReLU's "
        f"mean output is {RANVGG_MEAN_ACTIVATION:g} on 1/f noise of {RANVGG_REFERENCE_PX}x{RANVGG_REFERENCE_PX} px "
        f"from the same seed ({preprocessing} preprocessing); no greedy selection. Scales: {', '.join(scales)}"
    )


def weights_sha256(model: VGG19Features) -> str:
    """Hex sha256 of the exported float32 weights in layer order: identifies the numbers, whatever the file."""
    digest = hashlib.sha256()
    for _, weight, bias in model.conv_parameters():
        digest.update(weight.float().contiguous().numpy().tobytes())
        digest.update(bias.float().contiguous().numpy().tobytes())
    return digest.hexdigest()

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
from nst_server.manifest import Preprocessing
from torch import nn

from .vgg import CONV_LAYERS, VGG19Features


class ExportError(Exception):
    """An export failed for a reason the user can act on; the message says how."""


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
            raise ExportError(
                f"cannot download {weights.name} weights from {weights.url} ({error}); on an offline machine "
                f"copy the file to {target}, pass a local state dict (--weights PATH) or use --weights random"
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


def init_random(model: VGG19Features, seed: int) -> None:
    """He-initialise every conv from ``seed`` as torchvision does for a new VGG (fan-out, zero bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                std = (2.0 / fan_out) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:  # always, in VGG
                    module.bias.zero_()


def weights_sha256(model: VGG19Features) -> str:
    """Hex sha256 of the exported float32 weights in layer order: identifies the numbers, whatever the file."""
    digest = hashlib.sha256()
    for _, weight, bias in model.conv_parameters():
        digest.update(weight.float().contiguous().numpy().tobytes())
        digest.update(bias.float().contiguous().numpy().tobytes())
    return digest.hexdigest()

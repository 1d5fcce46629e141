"""ranVGG weights (`--weights ranvgg`): seeded, every layer's mean activation put to 1, recorded, exported, served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from nst.manifest import LOSS_FILE, METADATA_KEY, TARGETS_FILE, Manifest
from nst_client import StyleClient
from nst_export.cli import main
from nst_export.reference import preprocess
from nst_export.vgg import RELU_LAYERS, VGG19Features
from nst_export.weights import (
    RANVGG_MEAN_ACTIVATION,
    init_random,
    init_ranvgg,
    reference_image,
    weights_sha256,
)
from nst_server.testing import running_server

DEEPEST = "relu5_1"
RELUS = RELU_LAYERS[: RELU_LAYERS.index(DEEPEST) + 1]


def _ranvgg(seed: int, deepest: str = DEEPEST) -> tuple[VGG19Features, str]:
    model = VGG19Features(deepest)
    return model, init_ranvgg(model, seed)


def _mean_activations(model: VGG19Features, image: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        outputs = model(preprocess(image, "imagenet"), RELUS)
    return {name: float(value.mean()) for name, value in outputs.items()}


@pytest.fixture(name="ranvgg", scope="module")
def _ranvgg_fixture() -> tuple[VGG19Features, str]:
    return _ranvgg(4)


@pytest.mark.slow  # seconds: VGG19 built and run in PyTorch
def test_same_seed_same_weights_other_seed_others() -> None:
    """The weights and the recipe are a function of the seed alone (a shorter network, to be quick)."""
    model, recipe = _ranvgg(4, "relu3_1")
    again, recipe_again = _ranvgg(4, "relu3_1")
    other, recipe_other = _ranvgg(5, "relu3_1")
    assert weights_sha256(again) == weights_sha256(model)
    assert recipe_again == recipe
    assert weights_sha256(other) != weights_sha256(model)
    assert recipe_other != recipe
    assert torch.equal(reference_image(4), reference_image(4))


def test_every_relu_has_mean_one_on_the_reference(ranvgg: tuple[VGG19Features, str]) -> None:
    """What init_ranvgg's docstring says: on the seed's reference image every ReLU's mean output is 1 (4 digits)."""
    model, _ = ranvgg
    means = _mean_activations(model, reference_image(4))
    assert means == pytest.approx(dict.fromkeys(RELUS, RANVGG_MEAN_ACTIVATION), rel=1e-3)


@pytest.mark.slow  # seconds: VGG19 built and run in PyTorch
def test_it_rescales_the_random_weights_layer_by_layer(ranvgg: tuple[VGG19Features, str]) -> None:
    """ranVGG is --weights random with one positive factor per conv, and it is those factors that fix the means.

    The He-initialised network's activations shrink with depth (below 0.1 from relu2_1 on, on the reference);
    ranVGG's stay at 1, also on noise from another seed, which the scales were not measured on.
    """
    model, _ = ranvgg
    plain = VGG19Features(DEEPEST)
    init_random(plain, 4)
    for (_, scaled, _), (_, weight, _) in zip(model.conv_parameters(), plain.conv_parameters(), strict=True):
        ratio = scaled / weight
        assert float(ratio.min()) > 0
        assert float(ratio.max() - ratio.min()) <= 1e-5 * float(ratio.max())
    before = _mean_activations(plain, reference_image(4))
    assert all(mean < 0.1 for name, mean in before.items() if name != "relu1_1"), before
    unseen = _mean_activations(model, reference_image(11))
    assert unseen == pytest.approx(dict.fromkeys(RELUS, 1.0), rel=0.1)


def test_photos_and_paintings_stay_near_one(ranvgg: tuple[VGG19Features, str]) -> None:
    """On real images (../shared, when present) every layer's mean stays within 2x of 1: the scales carry over."""
    images = Path(__file__).resolve().parents[2] / ".." / "shared" / "images"
    if not images.is_dir():
        pytest.skip("../shared/images is absent")
    from PIL import Image

    model, _ = ranvgg
    for name in ("tubingen.jpg", "starry_night_google.jpg"):
        with Image.open(images / name) as opened:
            picture = opened.convert("RGB")
        picture.thumbnail((128, 128))
        image = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
        means = _mean_activations(model, image)
        assert all(0.5 < mean < 2.0 for mean in means.values()), (name, means)


@pytest.mark.slow  # seconds: VGG19 built and run in PyTorch
def test_export_records_the_recipe_and_serves(tmp_path: Path) -> None:
    """`nst-export --weights ranvgg` writes weights, seed and recipe into the metadata; the server runs a job on it."""
    out = tmp_path / "ranvgg"
    layers = ["--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"]  # a short network: a quick test
    assert main(["--weights", "ranvgg", "--seed", "9", *layers, "--out", str(out)]) == 0
    props = {p.key: p.value for p in onnx.load(str(out / LOSS_FILE), load_external_data=False).metadata_props}
    manifest = Manifest.from_json(props[METADATA_KEY])
    targets = {p.key: p.value for p in onnx.load(str(out / TARGETS_FILE), load_external_data=False).metadata_props}
    assert Manifest.from_json(targets[METADATA_KEY]) == manifest
    assert (manifest.weights, manifest.seed, manifest.preprocessing) == ("ranvgg", 9, "imagenet")
    assert manifest.recipe is not None
    assert "He, Wang and Hopcroft" in manifest.recipe
    assert "seed 9" in manifest.recipe
    model = VGG19Features("relu2_1")
    assert init_ranvgg(model, 9) == manifest.recipe
    assert weights_sha256(model) == manifest.weights_sha256
    assert len(manifest.recipe.rsplit("Scales: ", 1)[1].split(", ")) == 3  # conv1_1, conv1_2, conv2_1

    with running_server([out], "--drain", "0") as server, StyleClient(server.address) as client:
        (described,) = client.describe().models
        assert described.weights == "ranvgg"
        photo = np.full((48, 64, 3), 120, dtype=np.uint8)
        photo[:, 32:] = 200
        styled = client.stylize_image(photo, [photo[::-1]], max_side_px=64, max_evaluations=5)
        assert styled.size == (64, 48)

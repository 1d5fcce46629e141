"""Session-wide real artefacts: seeded VGG19 weights on disk and model directories exported from them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from nst_export.cli import main as export_main
from nst_export.vgg import VGG19Features
from nst_export.weights import init_random

WEIGHTS_SEED = 7


def torchvision_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A full VGG19 state dict in torchvision's layout (features.N.*, plus classifier keys), seeded."""
    model = VGG19Features("relu5_4")
    init_random(model, seed)
    with torch.no_grad():  # non-zero biases, so that a bias dropped on the way would show
        for module in model.features:
            if isinstance(module, torch.nn.Conv2d):
                module.bias.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(seed))
    state = dict(model.state_dict())
    state["classifier.0.weight"] = torch.zeros(8, 8)
    state["classifier.0.bias"] = torch.zeros(8)
    return state


@pytest.fixture(name="make_state_dict", scope="session")
def _make_state_dict() -> Callable[[int], dict[str, torch.Tensor]]:
    return torchvision_state_dict


@pytest.fixture(name="weights_file_state", scope="session")
def _weights_file_state() -> dict[str, torch.Tensor]:
    """What ``weights_file`` holds."""
    return torchvision_state_dict(WEIGHTS_SEED)


@pytest.fixture(name="weights_file", scope="session")
def _weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg19-test.pth"
    torch.save(torchvision_state_dict(WEIGHTS_SEED), path)
    return path


def _export(out: Path, *args: str) -> Path:
    assert export_main([*args, "--out", str(out)]) == 0
    return out


@pytest.fixture(name="model_dir", scope="session")
def _model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights, max pooling, ImageNet preprocessing: the model most tests serve."""
    return _export(tmp_path_factory.mktemp("models") / "random-max", "--weights", "random", "--seed", "3")


@pytest.fixture(name="caffe_avg_model_dir", scope="session")
def _caffe_avg_model_dir(tmp_path_factory: pytest.TempPathFactory, weights_file: Path) -> Path:
    """A local .pth treated as Caffe weights, with average pooling."""
    out = tmp_path_factory.mktemp("models") / "file-avg"
    return _export(out, "--weights", str(weights_file), "--preprocessing", "caffe", "--pooling", "avg")

"""Session-wide real artefacts: seeded VGG19 weights on disk and model directories exported from them."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import nst_export
import onnx
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


def _export_key(args: tuple[str, ...]) -> str:
    """What an export's output depends on: the installed nst_export's source, torch's and onnx's versions, and the
    arguments, a file argument by its content (the weights file is remade in a new temporary folder each session).
    """
    digest = hashlib.sha256(f"{torch.__version__} {onnx.__version__}".encode())
    for source in sorted(Path(nst_export.__file__).parent.rglob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    for arg in args:
        digest.update(Path(arg).read_bytes() if Path(arg).is_file() else arg.encode())
    return digest.hexdigest()[:16]


def _export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, *args: str) -> Path:
    """``nst-export ARGS`` into a new folder, or the folder a previous session exported with the same key.

    Exporting (graphs written, parity with autograd checked) takes about 10-20 s a model on 2 cores, a third of the
    quick loop's budget, so the output is kept in pytest's cache (.pytest_cache/, cleared by --cache-clear) under
    the key ``_export_key`` computes. A clean clone (CI) has no cache, and -p no:cacheprovider turns it off: such a
    session exports afresh.
    """
    cache = getattr(request.config, "cache", None)
    if cache is None:
        out = tmp_path_factory.mktemp("models") / "model"
        assert export_main([*args, "--out", str(out)]) == 0
        return out
    kept = Path(cache.mkdir("nst-models")) / _export_key(args)
    if not kept.exists():
        partial = Path(tempfile.mkdtemp(prefix="partial-", dir=kept.parent))
        assert export_main([*args, "--out", str(partial / "model")]) == 0
        with contextlib.suppress(OSError):  # another session got there first: theirs is the same
            (partial / "model").rename(kept)  # whole or not at all, should a session be stopped mid-export
        shutil.rmtree(partial)
    return kept


@pytest.fixture(name="model_dir", scope="session")
def _model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights, max pooling, ImageNet preprocessing: the model most tests serve."""
    return _export(request, tmp_path_factory, "--weights", "random", "--seed", "3")


@pytest.fixture(name="caffe_avg_model_dir", scope="session")
def _caffe_avg_model_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, weights_file: Path
) -> Path:
    """A local .pth treated as Caffe weights, with average pooling."""
    return _export(
        request, tmp_path_factory, "--weights", str(weights_file), "--preprocessing", "caffe", "--pooling", "avg"
    )

"""Loading VGG19 weights: published files by URL with a hash check, local files, and their failure modes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from nst_export.vgg import VGG19Features
from nst_export.weights import ExportError, PublishedWeights, fetch_published, load_into, read_state_dict


def _published(directory: Path, hash_prefix: str, source: Path) -> PublishedWeights:
    """A weights file served from a file:// URL whose name carries ``hash_prefix``, as torchvision's do."""
    served = directory / f"vgg19-{hash_prefix}.pth"
    served.write_bytes(source.read_bytes())
    return PublishedWeights("test", served.as_uri(), "imagenet")


def test_published_weights_download_once_and_verify(tmp_path: Path, weights_file: Path) -> None:
    """A file whose sha256 matches its name is downloaded into the cache and then read from there."""
    prefix = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:8]
    published = _published(tmp_path, prefix, weights_file)
    cached = fetch_published(published, tmp_path / "cache")
    assert cached == tmp_path / "cache" / f"vgg19-{prefix}.pth"
    assert cached.read_bytes() == weights_file.read_bytes()
    Path(published.url.removeprefix("file://")).unlink()  # a second fetch must not need the network
    assert fetch_published(published, tmp_path / "cache") == cached


def test_hash_mismatch_is_refused(tmp_path: Path, weights_file: Path) -> None:
    """A download whose sha256 does not match the prefix in its name is refused and not cached."""
    published = _published(tmp_path, "deadbeef", weights_file)
    with pytest.raises(ExportError, match="hash"):
        fetch_published(published, tmp_path / "cache")
    assert not (tmp_path / "cache" / "vgg19-deadbeef.pth").exists()


def test_corrupted_cache_is_refused(tmp_path: Path, weights_file: Path) -> None:
    """A cached file that no longer matches its name's hash is reported with what to do."""
    prefix = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:8]
    cached = fetch_published(_published(tmp_path, prefix, weights_file), tmp_path / "cache")
    cached.write_bytes(b"garbage")
    with pytest.raises(ExportError, match="delete the file"):
        fetch_published(_published(tmp_path, prefix, weights_file), tmp_path / "cache")


def test_unreachable_url_says_what_to_do(tmp_path: Path) -> None:
    """An unreachable download names the alternatives (a local path, random weights)."""
    published = PublishedWeights("test", (tmp_path / "missing-0123abcd.pth").as_uri(), "imagenet")
    with pytest.raises(ExportError, match="--weights random"):
        fetch_published(published, tmp_path / "cache")


def test_torchvision_layout_loads_exactly(weights_file: Path, weights_file_state: dict[str, torch.Tensor]) -> None:
    """features.N.weight/bias land in the matching layers; classifier keys are ignored."""
    model = VGG19Features("relu5_1")
    load_into(model, read_state_dict(weights_file), "test")
    expected = weights_file_state
    assert torch.equal(model.features[28].weight, expected["features.28.weight"])  # conv5_1
    assert torch.equal(model.features[0].bias, expected["features.0.bias"])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda s: {k.replace("features.", "body."): v for k, v in s.items()}, "missing features.0.weight"),
        # A VGG19 state dict built in PyTorch each (about a second): the quick loop keeps the first.
        pytest.param(
            lambda s: {k: v for k, v in s.items() if k != "features.34.weight"},
            "missing features.34.weight",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            lambda s: s | {"features.2.weight": s["features.2.weight"].transpose(0, 1)[:32]},
            "has shape",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["renamed", "vgg16-like", "wrong-shape"],
)
def test_wrong_layout_is_refused(
    tmp_path: Path,
    mangle: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    message: str,
    make_state_dict: Callable[[int], dict[str, torch.Tensor]],
) -> None:
    """A state dict that is not torchvision's VGG19 is refused with the key at fault."""
    path = tmp_path / "bad.pth"
    torch.save(mangle(make_state_dict(1)), path)
    with pytest.raises(ExportError, match=message):
        load_into(VGG19Features("relu5_1"), read_state_dict(path), str(path))


def test_corrupt_file_is_refused(tmp_path: Path, weights_file: Path) -> None:
    """A truncated .pth is reported as unreadable, not as a stack trace."""
    path = tmp_path / "truncated.pth"
    path.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(ExportError, match="not a readable PyTorch state dict"):
        read_state_dict(path)


def test_unreachable_published_weights_exit_with_their_own_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline, `nst-export --weights imagenet` exits EXIT_WEIGHTS_UNAVAILABLE (deploy/local.sh falls back on it),
    while any other failure exits 1, and nothing is written."""
    from nst_export import cli

    missing = PublishedWeights("imagenet", (tmp_path / "vgg19-0123abcd.pth").as_uri(), "imagenet")
    monkeypatch.setitem(cli.PUBLISHED, "imagenet", missing)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cli.main(["--weights", "imagenet", "--out", str(tmp_path / "model")]) == cli.EXIT_WEIGHTS_UNAVAILABLE == 3
    assert "cannot download imagenet weights" in capsys.readouterr().err
    assert cli.main(["--weights", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "model")]) == 1
    assert not (tmp_path / "model").exists()

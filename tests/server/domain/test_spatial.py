"""Spatial control's pieces: mask resizing, regions and their weights, the pinned content-only region, the guided
targets, and every refusal of a bad mask with its status and message through an in-process server.

What the masks do to a picture (each half towards its own style, the photo kept, seamless textures) is in
tests/e2e/test_spatial.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from nst.manifest import gram_target_name
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.domain import spatial
from nst_server.domain.evaluation import Evaluation, FloatArray
from nst_server.domain.job import Job, Options, Style
from nst_server.domain.targets import job_targets
from nst_server.runtime.graphs import LossGraphs
from nst_server.testing import running_server
from PIL import Image

from tests.images import encoded, png
from tests.requests import status_of

WIDTH, HEIGHT = 64, 48


def _half(width: int = WIDTH, height: int = HEIGHT, left: bool = True) -> FloatArray:
    mask = np.zeros((height, width), np.float32)
    mask[:, : width // 2] = 1.0
    return mask if left else 1.0 - mask


def _job(*masks: FloatArray | None, content_only: FloatArray | None = None, blend: tuple[float, ...] = ()) -> Job:
    styles = tuple(
        Style(np.zeros((1, 3, 40, 40), np.float32), blend[k] if blend else 1.0, mask) for k, mask in enumerate(masks)
    )
    content = np.zeros((1, 3, HEIGHT, WIDTH), np.float32)
    return Job("j", "m", (WIDTH, HEIGHT), content, styles, Options(), content_only=content_only)


# Masks at every scale.


@pytest.mark.parametrize("size", [(32, 24), (45, 34), (64, 48), (97, 70), (200, 150)])
def test_resized_complementary_masks_still_add_up_to_one(size: tuple[int, int]) -> None:
    """Bilinear weights are non-negative and sum to 1: no overshoot, so masks within the overlap rule stay so."""
    rng = np.random.default_rng(0)
    soft = rng.random((HEIGHT, WIDTH)).astype(np.float32)
    for a, b in ((_half(), _half(left=False)), (soft, 1.0 - soft)):
        ra, rb = spatial.resize_mask(a, size), spatial.resize_mask(b, size)
        assert ra.shape == (size[1], size[0])
        assert ra.min() >= 0.0
        np.testing.assert_allclose(ra + rb, 1.0, atol=1e-5)


# Regions and their weights.


def test_no_masks_are_no_regions() -> None:
    """A job without masks gets the plain loss: no regions at all, not one all-ones region."""
    assert spatial.regions(_job(None, None), (WIDTH, HEIGHT)) is None
    source_only = Job("j", "m", (WIDTH, HEIGHT), None, (Style(np.zeros((1, 3, 40, 40), np.float32), 1.0, None,
                      np.ones((40, 40), np.float32)),), Options())  # fmt: skip
    assert spatial.regions(source_only, (WIDTH, HEIGHT)) is None  # a source mask changes the targets only


def test_region_weights_are_the_regions_shares_times_the_relative_blend() -> None:
    """lambda_r = mean(T_r^2) * b_r / mean(b): halves weigh 1/2 each, and blend weights 3:1 make that 3/4 and 1/4."""
    left, right = _half(), _half(left=False)
    regions = spatial.regions(_job(left, right), (WIDTH, HEIGHT))
    assert regions is not None
    assert regions.guides.shape == (2, HEIGHT, WIDTH)
    np.testing.assert_array_equal(regions.guides[0], left)
    np.testing.assert_allclose(regions.weights, [0.5, 0.5])
    blended = spatial.regions(_job(left, right, blend=(3.0, 1.0)), (WIDTH, HEIGHT))
    assert blended is not None
    np.testing.assert_allclose(blended.weights, [0.75, 0.25])
    whole = spatial.regions(_job(np.ones((HEIGHT, WIDTH), np.float32)), (WIDTH, HEIGHT))
    assert whole is not None
    np.testing.assert_array_equal(whole.weights, [1.0])  # one white mask: exactly the unmasked loss


def test_the_content_only_region_is_left_out_of_every_guide() -> None:
    """T_r = min(M_r, 1 - C); without style masks one region covers all but C, weighted by its share."""
    held = np.zeros((HEIGHT, WIDTH), np.float32)
    held[:, :16] = 1.0
    regions = spatial.regions(_job(None, content_only=held), (WIDTH, HEIGHT))
    assert regions is not None
    np.testing.assert_array_equal(regions.guides, (1.0 - held)[np.newaxis])
    np.testing.assert_allclose(regions.weights, [0.75])
    masked = spatial.regions(_job(_half(), _half(left=False), content_only=held), (WIDTH, HEIGHT))
    assert masked is not None
    assert masked.guides[0, :, :16].max() == 0.0
    np.testing.assert_allclose(masked.weights, [0.25, 0.5])
    half_size = spatial.regions(_job(_half(), _half(left=False), content_only=held), (WIDTH // 2, HEIGHT // 2))
    assert half_size is not None
    assert half_size.guides.shape == (2, HEIGHT // 2, WIDTH // 2)  # resized to each scale


class _Quadratic:
    """L(x) = sum((x - t)^2), dL/dx = 2 (x - t): an evaluator whose gradient is known exactly."""

    def __init__(self, target: FloatArray) -> None:
        self.target = target
        self.seconds = 0.0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        batch, channels, height, width = self.target.shape
        return batch, channels, height, width

    def __call__(self, image: np.ndarray) -> Evaluation:
        diff = image.reshape(self.shape).astype(np.float64) - self.target
        grad = (2 * diff).astype(np.float32)
        return Evaluation(float(np.sum(diff**2)), 0.0, 0.0, 0.0, grad)


def test_pinned_region_holds_the_photo_and_its_gradient_is_exact() -> None:
    """x = C p + (1 - C) y; the gradient in y is (1 - C) dL/dx, checked against central differences."""
    rng = np.random.default_rng(1)
    photo = rng.random((1, 3, 8, 10)).astype(np.float32)
    held = np.zeros((8, 10), np.float32)
    held[:, :3], held[:, 3] = 1.0, 0.5
    pinned = spatial.Pinned(_Quadratic(rng.random((1, 3, 8, 10)).astype(np.float32)), photo, held)
    y = rng.random((1, 3, 8, 10)).astype(np.float32)
    image = pinned.image(y)
    np.testing.assert_array_equal(image[..., :3], photo[..., :3])
    np.testing.assert_allclose(image[..., 3], 0.5 * photo[..., 3] + 0.5 * y[..., 3], rtol=1e-6)
    np.testing.assert_array_equal(image[..., 4:], y[..., 4:])
    grad = pinned(y).grad.copy()
    assert np.abs(grad[..., :3]).max() == 0.0
    step = 1e-2
    for index in [(0, 0, 2, 1), (0, 1, 5, 3), (0, 2, 7, 9)]:
        up, down = y.astype(np.float64), y.astype(np.float64)
        up[index] += step
        down[index] -= step
        numeric = (pinned(up).loss - pinned(down).loss) / (2 * step)
        assert grad[index] == pytest.approx(numeric, rel=1e-3, abs=1e-4), index


# The guided targets, with the real graphs.


@pytest.fixture(name="graphs", scope="module")
def _graphs(model_dir: Path) -> LossGraphs:
    return LossGraphs(model_dir, device="cpu")


def test_per_style_targets_are_each_styles_own_guided_grams(graphs: LossGraphs) -> None:
    """Masked styles keep their own Gram matrices, stacked in the styles' order, each guided by its source mask."""
    rng = np.random.default_rng(2)
    content = rng.random((1, 3, HEIGHT, WIDTH), dtype=np.float32)
    a, b = (rng.random((1, 3, 40, 48), dtype=np.float32) for _ in range(2))
    source = np.zeros((40, 48), np.float32)
    source[:, :24] = 1.0
    stacked = job_targets(graphs, content, [a, b], [3.0, 1.0], per_style=True, source_guides=[source, None])
    name = gram_target_name(graphs.manifest.style_layers[0])
    assert stacked[name].shape[0] == 2
    np.testing.assert_array_equal(stacked[name][0], graphs.targets(a, source)[name])
    np.testing.assert_array_equal(stacked[name][1], graphs.targets(b)[name])
    assert np.abs(graphs.targets(a, source)[name] - graphs.targets(a)[name]).max() > 0.0
    blended = job_targets(graphs, content, [a, b], [3.0, 1.0])
    assert blended[name].ndim == 2


# Refusals: status and message through a server.


@pytest.fixture(name="stub", scope="module")
def _stub(model_dir: Path) -> Iterator[pb_grpc.StyleTransferServiceStub]:
    with (
        running_server([model_dir], "--tile-size", "64", "--max-side", "512", "--drain", "0") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        yield pb_grpc.StyleTransferServiceStub(channel)


def _mask(width: int = WIDTH, height: int = HEIGHT, value: int = 255, white_before: int | None = None,
          invert: bool = False) -> bytes:  # fmt: skip
    """A greyscale PNG: ``value`` everywhere, or white left of column ``white_before`` and black after (inverted)."""
    pixels = np.full((height, width), value, np.uint8)
    if white_before is not None:
        pixels[:, white_before:] = 0
    return encoded(Image.fromarray(255 - pixels if invert else pixels, "L"))


def _request(masks: list[bytes], sources: list[bytes] | None = None, content: bool = True, scale: float = 1.0,
             **options: object) -> pb.StylizeRequest:  # fmt: skip
    """A request whose styles (at ``scale``) carry ``masks`` (b"" for none); a 64x48 content image unless
    ``content`` is False."""
    sources = sources or [b""] * len(masks)
    styles = [pb.StyleImage(image=png(48, 48, seed=2 + k), mask=m, source_mask=s, scale=scale) for k, (m, s) in
              enumerate(zip(masks, sources, strict=True))]  # fmt: skip
    options = {"max_side_px": WIDTH, "max_evaluations": 1, **options}
    return pb.StylizeRequest(
        content_image=png(WIDTH, HEIGHT, seed=1) if content else b"", style_images=styles,
        options=pb.StylizeOptions(**options),
    )  # fmt: skip


LEFT, RIGHT = _mask(white_before=WIDTH // 2), _mask(white_before=WIDTH // 2, invert=True)
REFUSALS = {
    "one of two styles masked": (
        _request([LEFT, b""]),
        "style_images[].mask: given for 1 of 2 styles; give a mask for every style or for none",
    ),
    "more regions than the limit": (
        _request([LEFT] * 5),
        "style_images[].mask: 5 masked styles; at most 4 regions are allowed",
    ),
    "undecodable mask": (
        _request([b"not an image", RIGHT]),
        "style_images[0].mask: not an image in a format this server decodes",
    ),
    "all-black mask": (
        _request([LEFT, _mask(value=0)]),
        "style_images[1].mask: all black, so it selects nothing; white marks where it applies",
    ),
    "all-black source mask": (
        _request([b""], [_mask(48, 48, value=0)]),
        "style_images[0].source_mask: all black, so it selects nothing",
    ),
    "mask at another aspect ratio": (
        _request([_mask(64, 64), _mask(64, 64, value=0)]),
        "style_images[0].mask: 64x64 has aspect ratio 1.000; the output is 64x48 (1.333), and a mask must match "
        "it within 2%",
    ),
    "source mask at another aspect ratio": (
        _request([b""], [_mask(64, 48)]),
        "style_images[0].source_mask: 64x48 has aspect ratio 1.333; its style image is 64x64 (1.000)",
    ),
    "overlapping masks": (
        _request([_mask(), LEFT]),
        "style_images[].mask: they add up to 2.00 at x=0, y=0 of the output; at every pixel the masks may add up "
        "to at most 1 (within 0.04): soft masks that blend styles share 1 between them",
    ),
    "content-only region over a style's mask": (
        _request([LEFT, RIGHT], content_only_mask=_mask(white_before=8)),
        "style_images[].mask, options.content_only_mask: they add up to 2.00 at x=0, y=0",
    ),
    "content-only region, all white": (
        _request([b""], content_only_mask=_mask()),
        "options.content_only_mask: white everywhere, so no pixel is left for the style",
    ),
    "content-only region, all black": (
        _request([b""], content_only_mask=_mask(value=0)),
        "options.content_only_mask: all black, so it selects nothing",
    ),
    "content-only region, undecodable": (
        _request([b""], content_only_mask=b"\x89PNG\r\n\x1a\n broken"),
        "options.content_only_mask: not",
    ),
    "content-only region without a content image": (
        _request([b""], content=False, content_only_mask=_mask()),
        "options.content_only_mask: keeps the content photo where no style applies; needs a content and a style",
    ),
    "content-only region without a style": (
        _request([], content_only_mask=_mask()),
        "options.content_only_mask: keeps the content photo where no style applies; needs a content and a style",
    ),
    # The fixture's server tiles above 64 + 2 x 160 = 384 px.
    "masks above the whole-image size": (
        _request([LEFT, RIGHT], max_side_px=400),
        "masks: only for images the server evaluates whole, up to 384 px on the longer side (--tile-size plus the "
        "model's halo on both sides); this job's output is 400x300",
    ),
    "source mask on a style above the whole-image size": (
        _request([b""], [_mask(48, 48)], max_side_px=256, scale=1.6),
        "style_images[0].source_mask: only for images the server evaluates whole, up to 384 px on the longer side "
        "(--tile-size plus the model's halo on both sides); this job's style_images[0] is 410x410",
    ),
    "tileable above the whole-image size": (
        _request([b""], max_side_px=400, tileable=True),
        "options.tileable: only for images the server evaluates whole, up to 384 px on the longer side (--tile-size "
        "plus the model's halo on both sides); this job's output is 400x300",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_masks_are_refused_naming_the_problem(stub: pb_grpc.StyleTransferServiceStub, case: str) -> None:
    request, message = REFUSALS[case]
    code, details = status_of(stub.Stylize(request, timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith(message), details


@pytest.mark.slow  # seconds: every kind of good mask, each job through the codec
def test_good_masks_pass(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """The refusals' good neighbours run: complementary halves, a source mask, a content-only strip, tileable."""
    request = _request([LEFT, RIGHT], [_mask(48, 48, white_before=24), b""], content_only_mask=b"", tileable=True)
    assert status_of(stub.Stylize(request, timeout=60)) == (grpc.StatusCode.OK, "")
    strip = _request([b""], content_only_mask=_mask(white_before=8))
    assert status_of(stub.Stylize(strip, timeout=60)) == (grpc.StatusCode.OK, "")

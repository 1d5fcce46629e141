"""A corpus of bad and odd inputs, generated here, against a real server: each gets its documented status and a
message naming the problem, or is handled correctly where it is valid; after every one a good job still runs.

tests/e2e/test_service.py covers the field-by-field validation table (truncated PNG and JPEG content, the bomb as
content, NaN/inf/negative loss weights, unknown optimizer/format/colour values, ...); this corpus adds the rest.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import ServerProcess, start_server
from PIL import Image

from tests.images import encoded, picture, png, png_claiming_size
from tests.reliability.support import report
from tests.requests import CHEAP, assert_serves, status_of

pytestmark = pytest.mark.reliability

MAX_EVALUATIONS = 20  # the server's --max-evaluations here
MESSAGE_BYTES = 1 << 20  # its --max-message-bytes: requests above 2 MiB (this plus 1 MiB for the fields) are refused
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
STYLIZE = "/nst.v1.StyleTransferService/Stylize"

Corpus = dict[str, bytes]


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[ServerProcess]:
    limits = ("--max-evaluations", str(MAX_EVALUATIONS), "--max-message-bytes", str(MESSAGE_BYTES))
    server = start_server([model_dir], *limits, "--drain", "0")
    yield server
    assert server.terminate() == 0


@pytest.fixture(name="channel", scope="module")
def _channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(name="stub", scope="module")
def _stub(channel: grpc.Channel) -> pb_grpc.StyleTransferServiceStub:
    return pb_grpc.StyleTransferServiceStub(channel)


@pytest.fixture(name="raw_stylize", scope="module")
def _raw_stylize(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    """Stylize taking the request as bytes: the corpus includes encodings no protobuf library would produce."""
    return channel.unary_stream(STYLIZE, response_deserializer=pb.StylizeResponse.FromString)


@dataclass
class Tally:
    """Each case's status, and how many good jobs ran after one."""

    statuses: dict[str, str] = field(default_factory=dict)
    good_jobs_after: int = 0

    def served(self, stub: pb_grpc.StyleTransferServiceStub) -> None:
        assert_serves(stub)
        self.good_jobs_after += 1


@pytest.fixture(name="tally", scope="module")
def _tally() -> Iterator[Tally]:
    """Reported once the module's cases have run."""
    seen = Tally()
    yield seen
    figures = {"cases": len(seen.statuses), "statuses": seen.statuses, "good_jobs_after": seen.good_jobs_after}
    report("bad_input", figures)


def _gray(width: int, height: int) -> np.ndarray:
    return np.asarray(picture(width, height, seed=11).convert("L"))


def _with_alpha(image: Image.Image) -> Image.Image:
    """``image`` with its left half fully transparent."""
    alpha = np.full((image.height, image.width), 255, np.uint8)
    alpha[:, : image.width // 2] = 0
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


def _exif_rotated(upright: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG stored on its side with EXIF orientation 6 ("rotate 90° clockwise to view"): upright when honoured."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return encoded(stored, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())  # near-lossless: pixels compare


def _animated(first: Image.Image, second: Image.Image) -> bytes:
    return encoded(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _corpus_files() -> dict[str, Callable[[], bytes]]:
    """Every file of the corpus, by name, and how it is made."""
    photo = picture(64, 48, seed=7)
    return {
        "zero.bin": lambda: b"",
        "random.bin": lambda: np.random.default_rng(0).bytes(4096),
        "signature-then-junk.png": lambda: b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(512),
        "truncated.png": lambda: png(64, 48)[:300],
        "truncated.jpg": lambda: encoded(photo, "JPEG")[:300],
        "bomb.png": lambda: png_claiming_size(50000, 50000),
        "strip-1x4000.png": lambda: png(1, 4000),
        "over-message-limit.bin": lambda: np.random.default_rng(2).bytes(3 << 20),
        "ghostscript.eps": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\nshowpage\n",
        "tiny-style.png": lambda: png(32, 32, seed=3),
        "gray16.png": lambda: encoded(Image.fromarray(_gray(64, 48).astype(np.uint16) * 257)),
        "gray.png": lambda: encoded(Image.fromarray(_gray(64, 48), "L")),
        "palette.png": lambda: encoded(photo.quantize(64)),
        "cmyk.jpg": lambda: encoded(photo.convert("CMYK"), "JPEG", quality=95),
        "rgba.png": lambda: encoded(_with_alpha(photo)),
        "exif-orientation-6.jpg": lambda: _exif_rotated(picture(48, 64, seed=8)),
        "animated.gif": lambda: _animated(photo.quantize(32), picture(64, 48, seed=9).quantize(32)),
    }


@pytest.fixture(name="corpus", scope="module")
def _corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The corpus written to a folder (to look at when a case fails) and read back."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, make in _corpus_files().items():
        (folder / name).write_bytes(make())
    assert Image.open(folder / "gray16.png").mode == "I;16"
    assert Image.open(folder / "animated.gif").n_frames == 2
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def _request(
    content: bytes | None = None, styles: list[pb.StyleImage] | None = None, **options: object
) -> pb.StylizeRequest:
    """The cheap good request with some of its fields replaced."""
    return pb.StylizeRequest(
        content_image=png(64, 48, seed=1) if content is None else content,
        style_images=[pb.StyleImage(image=png(64, 64, seed=2))] if styles is None else styles,
        options=pb.StylizeOptions(**{**CHEAP, **options}),
    )


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of ``value`` as a 64-bit two's complement (how int64 -1 goes on the wire)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _negative_evaluations(corpus: Corpus) -> bytes:
    """The good request with options.max_evaluations = -1 encoded as a hostile client would (uint32 has no -1)."""
    options = bytes([2 << 3 | 0]) + _varint(-1)  # field 2 (max_evaluations), varint
    return _request().SerializeToString() + bytes([3 << 3 | 2]) + _varint(len(options)) + options  # merged into 3


def _style(image: bytes, **fields: float) -> list[pb.StyleImage]:
    return [pb.StyleImage(image=image, **fields)]


# name: (the request, as a message or as raw bytes; the status; a part of the message that names the problem)
BAD: dict[str, tuple[Callable[[Corpus], pb.StylizeRequest | bytes], grpc.StatusCode, str]] = {
    "zero-byte-style": (lambda c: _request(styles=_style(c["zero.bin"])), INVALID, "style_images[0].image: empty"),
    "random-bytes": (
        lambda c: _request(c["random.bin"]),
        INVALID,
        "content_image: not an image in a format this server decodes (PNG, JPEG",
    ),
    "png-signature-then-junk": (
        lambda c: _request(c["signature-then-junk.png"]),
        INVALID,
        "content_image: not an image in a format this server decodes",
    ),
    "truncated-png-style": (
        lambda c: _request(styles=_style(c["truncated.png"])),
        INVALID,
        "style_images[0].image: not a decodable image",
    ),
    "truncated-jpeg-init-image": (
        lambda c: _request(init=pb.INIT_IMAGE, init_image=c["truncated.jpg"]),
        INVALID,
        "options.init_image: not a decodable image",
    ),
    "decompression-bomb-style": (
        lambda c: _request(styles=_style(c["bomb.png"])),
        INVALID,
        "style_images[0].image: refused before decoding",
    ),
    "strip-1x4000-content": (
        lambda c: _request(c["strip-1x4000.png"]),
        INVALID,
        "content_image: 1x4000 at max_side_px 64 is 1x64; both sides must be at least 32 px",
    ),
    "strip-1x4000-style": (
        lambda c: _request(styles=_style(c["strip-1x4000.png"])),
        INVALID,
        "style_images[0]: at the coarsest scale, after its scale is 1x64; both sides must be at least 32 px",
    ),
    "eps-would-run-ghostscript": (
        lambda c: _request(c["ghostscript.eps"]),
        INVALID,
        "content_image: not an image in a format this server decodes",
    ),
    "image-over-message-limit": (lambda c: _request(c["over-message-limit.bin"]), EXHAUSTED, "larger than max"),
    "nan-learning-rate": (
        lambda c: _request(learning_rate=float("nan")),
        INVALID,
        "options.learning_rate: nan is not allowed",
    ),
    "inf-blend-weight": (
        lambda c: _request(styles=_style(png(64, 64), blend_weight=float("inf"))),
        INVALID,
        "style_images[0].blend_weight: inf is not allowed",
    ),
    "negative-style-scale": (
        lambda c: _request(styles=_style(png(64, 64), scale=-1.0)),
        INVALID,
        "style_images[0].scale: -1.0 is not allowed",
    ),
    "nan-style-layer-weights": (
        lambda c: _request(style_layer_weights=[float("nan")] * 5),
        INVALID,
        "options.style_layer_weights: nan is not allowed",
    ),
    "enormous-iterations": (
        lambda c: _request(max_evaluations=2**32 - 1),
        INVALID,
        f"options.max_evaluations: 4294967295 is out of range; allowed 1 to {MAX_EVALUATIONS}",
    ),
    "enormous-coarse-iterations": (
        lambda c: _request(scales=2, coarse_evaluations=2**32 - 1),
        INVALID,
        "options.coarse_evaluations: 4294967295 is out of range",
    ),
    "negative-iterations-on-the-wire": (
        _negative_evaluations,
        INVALID,
        "options.max_evaluations: 4294967295 is out of range",
    ),
    "unknown-init": (lambda c: _request(init=42), INVALID, "options.init: unknown value 42; allowed: INIT_UNSPECIFIED"),
    "negative-enum-value": (lambda c: _request(optimizer=-1), INVALID, "options.optimizer: unknown value -1"),
    "hundreds-of-styles": (
        lambda c: _request(styles=_style(c["tiny-style.png"]) * 300),
        INVALID,
        "style_images: 300 given, at most 8 allowed",
    ),
    "enormous-texture": (
        lambda c: _request(b"", width_px=100000),
        INVALID,
        "options.width_px: 100000 is out of range",
    ),
    "layer-named-twice": (
        lambda c: _request(content_layers=["relu4_2", "relu4_2"]),
        INVALID,
        "options.content_layers: a layer named twice",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_gets_its_status_and_a_good_job_runs_after(
    case: str,
    corpus: Corpus,
    raw_stylize: grpc.UnaryStreamMultiCallable,
    stub: pb_grpc.StyleTransferServiceStub,
    tally: Tally,
) -> None:
    """The documented status, a message naming the field and the problem (no traceback), then a good job works."""
    make, code, message = BAD[case]
    request = make(corpus)
    data = request if isinstance(request, bytes) else request.SerializeToString()
    got, details = status_of(raw_stylize(data, timeout=60))
    tally.statuses[case] = got.name
    assert (got, message in details) == (code, True), details
    assert "Traceback" not in details
    tally.served(stub)


def _result_pixels(stub: pb_grpc.StyleTransferServiceStub, content: bytes) -> np.ndarray:
    """The photo as the server read it: one Adam step of 1e-4 from the content changes no 8-bit pixel value."""
    request = _request(content, init=pb.INIT_CONTENT, max_evaluations=1, learning_rate=1e-4)
    responses = list(stub.Stylize(request, timeout=60))
    result = responses[-1].result
    return np.asarray(Image.open(io.BytesIO(result.image)).convert("RGB"), dtype=np.float64)


def _expected_valid() -> dict[str, tuple[Image.Image, float]]:
    """Each valid odd file's expected picture, made independently of the server's decoder, and the mean
    difference allowed (in 8-bit levels; JPEG is lossy)."""
    photo = picture(64, 48, seed=7)
    gray = Image.fromarray(_gray(64, 48), "L").convert("RGB")
    white = Image.new("RGB", photo.size, (255, 255, 255))
    transparent_left = Image.fromarray(np.asarray(_with_alpha(photo))[:, :, 3], "L")
    return {
        "gray16.png": (gray, 0.5),  # 16 bits scaled into 8, not clipped to white
        "gray.png": (gray, 0.5),
        "palette.png": (photo.quantize(64).convert("RGB"), 0.5),
        "cmyk.jpg": (photo, 3.0),
        "rgba.png": (Image.composite(photo, white, transparent_left), 0.5),  # transparent -> white
        "exif-orientation-6.jpg": (picture(48, 64, seed=8), 1.5),  # upright: 48 wide, 64 tall
        "animated.gif": (photo.quantize(32).convert("RGB"), 0.5),  # the first frame
    }


VALID = _expected_valid()


@pytest.mark.parametrize("name", VALID, ids=list(VALID))
def test_odd_but_valid_image_is_read_correctly(
    name: str, corpus: Corpus, stub: pb_grpc.StyleTransferServiceStub, tally: Tally
) -> None:
    """16-bit, grey, palette, CMYK, RGBA, EXIF-rotated and animated images come out as the picture they show."""
    expected, tolerance = VALID[name]
    got = _result_pixels(stub, corpus[name])
    want = np.asarray(expected, dtype=np.float64)
    tally.statuses[f"valid:{name}"] = "OK"
    assert got.shape == want.shape
    assert np.abs(got - want).mean() <= tolerance
    if name.startswith("exif"):  # the right way round, not merely the right shape
        assert np.abs(got - want[::-1, ::-1]).mean() > 10 * tolerance
    tally.served(stub)


@pytest.mark.slow  # runs the server's default budget
def test_zero_iterations_is_the_default_within_the_servers_limit(
    stub: pb_grpc.StyleTransferServiceStub, tally: Tally
) -> None:
    """max_evaluations 0 (unset) is the default 300, capped by --max-evaluations; never a refusal or more work."""
    responses = list(stub.Stylize(_request(max_evaluations=0), timeout=120))
    started = next(r.started for r in responses if r.WhichOneof("event") == "started")
    result = responses[-1].result
    tally.statuses["valid:zero-iterations"] = "OK"
    assert started.max_evaluations == MAX_EVALUATIONS
    assert 0 < result.evaluations <= MAX_EVALUATIONS
    tally.served(stub)
